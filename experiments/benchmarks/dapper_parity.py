"""Parity benchmark: hybridda against DAPPER on the sakov2008 Lorenz-96 reference configs.

For every reference in `hybridda.configs.sakov2008.REFERENCES` both libraries filter
the *same* truth with the *same* observations, in one process:

- hybridda: `hybridda.twin.run_twin(config, seed)` (float64) makes the truth, the
  observations and runs the filter.
- DAPPER: `xp.assimilate(HMM, xx, yy)` with an HMM built as in
  ``dapper/mods/Lorenz96/sakov2008.py`` (RK4, Δt = 0.05, ``dko = 1``, R = I). For 3D-Var
  it gets the ``B`` that `run_twin` built (``result.method.background_covariance``,
  climatology of an independent long run times ``xB = 0.02``), bit for bit.

Time alignment. DAPPER's `Chronology(dt, dko=1, K=cycles)` has times ``k = 0..K``,
``xx`` of ``K+1`` rows and observations at ``k = 1..K`` (``ko = k - 1``, ``Ko = K-1``,
``yy`` of ``K`` rows); it never observes ``k = 0``. hybridda's ``truth[k]`` is the
state after ``k+1`` cycles from ``x0`` and ``observations[k]`` observes ``truth[k]``.
So ``xx = [x0, truth]`` and ``yy = observations``: ``yy[ko]`` observes ``xx[ko+1]``
= ``truth[ko]``, and analysis ``ko`` of DAPPER is analysis ``k = ko`` of hybridda.

``x0`` is ``result.initial_state``; the script checks that one cycle from it gives
``truth[0]`` (``x0_residual`` in the JSON). DAPPER's filters use ``xx[0]`` only for their
statistics at ``k = 0``; the averages below start after burn-in.

Initial ensembles. hybridda draws ``x0 + ξ``, ``ξ ~ N(0, I)`` (``initial_spread = 1``)
with its own key; DAPPER gets ``X0 = GaussRV(mu=x0, C=1)``, the same distribution but a
different draw (DAPPER's numpy RNG, seeded with ``seed + 1`` per config, since DAPPER
refuses seed 0). Burn-in removes the difference. 3D-Var starts from ``x0`` in both.

Metric: analysis RMSE per time (RMS over the 40 variables of the analysis mean minus
the truth), averaged over analyses ``burn_in .. cycles-1`` -- computed by this script
for both libraries from their stored means (DAPPER: ``xp.stats.mu.a``). DAPPER's own
``xp.avrgs.err.rms.a`` over the same analyses (``BurnIn = burn_in · Δt``) is recorded as
a cross-check.

Timing: hybridda's ``seconds_per_cycle`` is the compiled steady-state cost (compile time
reported separately); DAPPER's is the wall time of ``xp.assimilate`` divided by the
cycles, which includes DAPPER's own per-cycle statistics (CRPS, rank histogram, SVD of
the anomalies, ...).

Usage::

    python experiments/benchmarks/dapper_parity.py                 # 4000 cycles, 1000 burn-in
    python experiments/benchmarks/dapper_parity.py --quick         # 400 / 100, < 1 min
    python experiments/benchmarks/dapper_parity.py --only LETKF --no-dapper
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hybridda  # noqa: E402
from hybridda.configs.sakov2008 import REFERENCES, Reference  # noqa: E402
from hybridda.twin import (  # noqa: E402
    TwinConfig,
    build_dynamics,
    default_dt,
    run_twin,
)

QUICK_CYCLES, QUICK_BURN_IN = 400, 100
DEFAULT_CYCLES, DEFAULT_BURN_IN = 4000, 1000
# DAPPER's sakov2008 batches 2 grid points per local analysis; hybridda's LETKF has one
# local domain per grid point, so DAPPER gets batches of 1 here.
LETKF_BATCH = (1,)
OUR_METRICS = (
    "rmse_analysis",
    "rmse_forecast",
    "spread_analysis",
    "seconds_per_cycle",
    "compile_seconds",
    "finite",
)


def build_model(config: TwinConfig) -> hybridda.Resolvent:
    """The resolvent `run_twin` uses for `config`."""
    return hybridda.Resolvent(
        build_dynamics(config), dt=default_dt(config), steps_per_cycle=config.steps_per_cycle
    )


# ---------------------------------------------------------------------------------------
# DAPPER
# ---------------------------------------------------------------------------------------


def import_dapper():
    """Import DAPPER quietly (no live plotting, no progress bars); None if unavailable."""
    try:
        # DAPPER prints a live-plotting warning at import under the Agg backend.
        with contextlib.redirect_stdout(io.StringIO()):
            import dapper
            import dapper.da_methods
            import dapper.mods
            import dapper.mods.Lorenz96
            import dapper.tools.localization
            import dapper.tools.progressbar
    except ImportError as error:
        print(f"NOTICE: DAPPER is not importable ({error}); running hybridda only.")
        return None
    dapper.rc.liveplotting = False
    dapper.tools.progressbar.disable_progbar = True
    return dapper


def _check_dapper_compatible(config: TwinConfig):
    """DAPPER's HMM below is sakov2008's: Lorenz-96 with F = 8, one RK4 step, all observed."""
    forcing = 8.0 if config.forcing is None else config.forcing
    if not (
        config.model == "lorenz96"
        and forcing == 8.0
        and config.steps_per_cycle == 1
        and config.obs == "all"
    ):
        raise ValueError(
            "The DAPPER side reproduces sakov2008 only (Lorenz-96, F=8, steps_per_cycle=1, "
            f"obs='all'); got {config.to_dict()}."
        )


def dapper_hmm(dapper, config: TwinConfig, x0):
    """DAPPER's sakov2008 HMM, with hybridda's x0, cycle count and burn-in."""
    from dapper.mods import Lorenz96
    from dapper.tools.localization import nd_Id_localization

    _check_dapper_compatible(config)
    modelling = dapper.mods
    dt = default_dt(config)
    n = config.n
    # K = cycles model steps, an observation after every step: Ko = K - 1, yy has K rows.
    tseq = modelling.Chronology(dt, dko=1, K=config.cycles, BurnIn=config.burn_in * dt)
    dynamics = {"M": n, "model": Lorenz96.step, "linear": Lorenz96.dstep_dx, "noise": 0}
    observation = modelling.partial_Id_Obs(n, np.arange(n))
    observation["noise"] = config.obs_std**2
    observation["localizer"] = nd_Id_localization((n,), LETKF_BATCH)
    X0 = modelling.GaussRV(mu=np.asarray(x0), C=config.initial_spread**2)
    return modelling.HiddenMarkovModel(dynamics, observation, tseq, X0)


def dapper_method(dapper, config: TwinConfig, B=None):
    """The DAPPER xp equivalent to `config` (see each Reference's ``dapper`` string)."""
    methods = dapper.da_methods
    N, infl = config.ensemble_size, config.inflation
    if config.method == "etkf":
        return methods.EnKF("Sqrt", N=N, infl=infl)
    if config.method == "enkf":
        if config.localisation_radius is not None:
            raise ValueError("DAPPER's EnKF has no covariance localisation.")
        return methods.EnKF("PertObs", N=N, infl=infl)
    if config.method == "letkf":
        return methods.LETKF(N=N, infl=infl, loc_rad=config.localisation_radius)
    if config.method == "enkf-n":
        # hybridda's EnKFN: dual form, hyperprior boost xN, DAPPER's mode correction.
        return methods.EnKF_N(N=N, dual=True, infl=infl, xN=config.hyperprior_boost)
    if config.method == "3dvar":
        # `B` is hybridda's, already scaled by background_scale: xB = 1 keeps it bit-identical.
        return methods.Var3D(B=np.asarray(B), xB=1.0)
    raise ValueError(f"No DAPPER equivalent for method {config.method!r}.")


def run_dapper(dapper, config: TwinConfig, truth, observations, x0, seed: int, B=None) -> dict:
    """Run DAPPER on hybridda's truth and observations; RMSE computed as for hybridda."""
    HMM = dapper_hmm(dapper, config, x0)
    xp = dapper_method(dapper, config, B)
    truth = np.asarray(truth)
    xx = np.concatenate([np.asarray(x0)[None, :], truth])  # (K+1, n): time 0..K
    yy = np.asarray(observations)  # (K, p): yy[ko] observes xx[ko + 1] = truth[ko]
    if xx.shape[0] != HMM.tseq.K + 1 or yy.shape[0] != HMM.tseq.Ko + 1:
        raise RuntimeError(f"Shape mismatch: xx {xx.shape}, yy {yy.shape}, tseq {HMM.tseq}.")
    dapper_seed = seed + 1  # DAPPER refuses seed 0
    dapper.set_seed(dapper_seed)
    start = time.perf_counter()
    xp.assimilate(HMM, xx, yy, liveplots=False)
    seconds = time.perf_counter() - start

    analysis_mean = np.asarray(xp.stats.mu.a)  # (Ko+1, n), analysis ko ↔ truth[ko]
    forecast_mean = np.asarray(xp.stats.mu.f)
    rmse_a = np.sqrt(np.mean((analysis_mean - truth) ** 2, axis=1))
    rmse_f = np.sqrt(np.mean((forecast_mean - truth) ** 2, axis=1))
    xp.stats.average_in_time()
    return {
        "rmse_analysis": float(np.mean(rmse_a[config.burn_in :])),
        "rmse_forecast": float(np.mean(rmse_f[config.burn_in :])),
        "avrgs_rmse_a": float(xp.avrgs.err.rms.a.val),  # DAPPER's own average (cross-check)
        "seconds_per_cycle": seconds / config.cycles,
        "seconds": seconds,
        "seed": dapper_seed,
        "xp": repr(xp) if config.method != "3dvar" else "Var3D(B=<shared xB * B_clim>, xB=1)",
        "finite": bool(np.all(np.isfinite(analysis_mean))),
    }


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def settings(config: TwinConfig) -> str:
    """Short description of a reference's tuning."""
    if config.method == "3dvar":
        return f"xB={config.background_scale:g}, B=clim (shared)"
    parts = [f"N={config.ensemble_size}"]
    if config.method == "enkf-n":
        parts.append(f"dual, xN={config.hyperprior_boost:g}")
    if config.inflation != 1.0:
        parts.append(f"infl={config.inflation:g}")
    if config.localisation_radius is not None:
        parts.append(f"r={config.localisation_radius:g} GC, 1 pt/domain")
    return ", ".join(parts)


def select(only: list[str] | None) -> tuple[Reference, ...]:
    """The references whose name or method matches one of `only` (case-insensitive)."""
    if not only:
        return REFERENCES
    wanted = {name.lower() for name in only}
    chosen = tuple(
        ref for ref in REFERENCES if ref.name.lower() in wanted or ref.config.method in wanted
    )
    known = {ref.name.lower() for ref in REFERENCES} | {ref.config.method for ref in REFERENCES}
    unknown = sorted(wanted - known)
    if unknown:
        names = ", ".join(repr(ref.name) for ref in REFERENCES)
        raise SystemExit(f"--only: unknown {unknown}; choose from {names} (or a method key).")
    return chosen


def run_reference(reference: Reference, cycles: int, burn_in: int, seed: int, dapper) -> dict:
    """Both libraries on one reference config; the row of the table and JSON."""
    config = reference.config.replace(cycles=cycles, burn_in=burn_in)
    result = run_twin(config, seed)
    truth, observations = result.truth, result.observations
    x0 = result.initial_state
    # Alignment check: one cycle from x0 is truth[0] (DAPPER's xx[1]).
    x0_residual = float(jnp.max(jnp.abs(build_model(config)(x0, 0.0) - truth[0])))

    row = {
        "name": reference.name,
        "method": config.method,
        "settings": settings(config),
        "published_rmse": reference.published_rmse,
        "dapper_reference": reference.dapper,
        "note": reference.note,
        "config": config.to_dict(),
        "x0_residual": x0_residual,
    }
    ours = {key: result.metrics[key] for key in OUR_METRICS}
    ours["source"] = "hybridda.twin.run_twin"
    # 3D-Var: DAPPER gets run_twin's own B (already scaled by xB), bit for bit.
    B = result.method.background_covariance if config.method == "3dvar" else None
    row["ours"] = ours
    row["dapper"] = None
    if dapper is not None:
        theirs = run_dapper(dapper, config, truth, observations, x0, seed, B)
        row["dapper"] = theirs
        row["abs_diff"] = abs(ours["rmse_analysis"] - theirs["rmse_analysis"])
        row["speedup"] = theirs["seconds_per_cycle"] / ours["seconds_per_cycle"]
    return row


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(rows: list[dict]) -> str:
    """The printed summary table."""
    header = (
        "method",
        "settings",
        "RMSE ours",
        "RMSE DAPPER",
        "published",
        "|Δ|",
        "ms/cycle ours",
        "ms/cycle DAPPER",
        "speed-up",
    )
    lines = []
    for row in rows:
        theirs = row["dapper"] or {}
        lines.append(
            (
                row["name"],
                row["settings"],
                _fmt(row["ours"]["rmse_analysis"], ".4f"),
                _fmt(theirs.get("rmse_analysis"), ".4f"),
                _fmt(row["published_rmse"], ".2f"),
                _fmt(row.get("abs_diff"), ".4f"),
                _fmt(1e3 * row["ours"]["seconds_per_cycle"], ".3f"),
                _fmt(1e3 * theirs["seconds_per_cycle"] if theirs else None, ".3f"),
                _fmt(row.get("speedup"), ".0f") + ("x" if row.get("speedup") else ""),
            )
        )
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]

    def render(cells):
        return " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *map(render, lines)])


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions and machine, for the JSON record."""
    return {
        "versions": {
            name: _version(name)
            for name in ("hybridda", "jax", "jaxlib", "equinox", "diffrax", "numpy", "dapper")
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(device) for device in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }


NOTES = (
    "Same truth and observations for both libraries (hybridda.twin.run_twin); "
    "DAPPER xx = [x0, truth], yy = observations, Chronology(dt, dko=1, K=cycles).",
    "x0 = run_twin's initial_state (checked: one cycle from it is truth[0]).",
    "Initial ensembles: same distribution N(x0, I), different draws (hybridda key vs DAPPER "
    "numpy RNG seeded with seed + 1); burn-in removes the difference. 3D-Var starts from x0.",
    "LETKF: DAPPER nd_Id_localization((40,), (1,)), one local domain per grid point as in "
    "hybridda (DAPPER's sakov2008 uses batches of 2). GC taper: DAPPER scales the radius by "
    "1.82 and cuts coefficients < 1e-3; hybridda uses sqrt(10/3) = 1.8257 and no cut-off.",
    "EnKF-N: EnKF_N(N=24, dual=True, xN) with the same xN on both sides (1 and 2); DAPPER's "
    "sakov2008 file gives 0.21 for xN=1 and 0.18 for xN=2.",
    "3D-Var: DAPPER Var3D(B=<run_twin's 0.02 x climatology of an independent 20000-cycle run>, "
    "xB=1): the identical matrix; deterministic, so the two trajectories agree to round-off.",
    "RMSE: per-time RMS over variables of analysis mean - truth, averaged over analyses "
    "burn_in..cycles-1, computed identically for both (DAPPER from xp.stats.mu.a).",
    "Timing: hybridda = compiled steady-state seconds per cycle (compile time separate); "
    "DAPPER = wall time of xp.assimilate / cycles, including DAPPER's per-cycle statistics.",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="hybridda vs DAPPER on the sakov2008 Lorenz-96 reference configs: same "
        "truth, same observations, analysis RMSE and ms per cycle.",
    )
    parser.add_argument("--cycles", type=int, default=None, help=f"default {DEFAULT_CYCLES}")
    parser.add_argument("--burn-in", type=int, default=None, help=f"default {DEFAULT_BURN_IN}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CYCLES} cycles, {QUICK_BURN_IN} burn-in (< 1 min on 2 cores)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this reference (name, e.g. 'LETKF', or method key, e.g. '3dvar'); "
        "repeatable",
    )
    parser.add_argument("--no-dapper", action="store_true", help="hybridda only")
    args = parser.parse_args(argv)
    if args.cycles is None:
        args.cycles = QUICK_CYCLES if args.quick else DEFAULT_CYCLES
    if args.burn_in is None:
        args.burn_in = QUICK_BURN_IN if args.quick else DEFAULT_BURN_IN
    if not 0 <= args.burn_in < args.cycles:
        parser.error(f"need 0 <= --burn-in < --cycles, got {args.burn_in} and {args.cycles}")
    return args


def main(argv=None) -> dict:
    """Run the benchmark; returns what it writes to ``OUT/dapper_parity.json``."""
    args = parse_args(argv)
    references = select(args.only)
    dapper = None if args.no_dapper else import_dapper()
    args.out.mkdir(parents=True, exist_ok=True)
    run_config = {
        "cycles": args.cycles,
        "burn_in": args.burn_in,
        "seed": args.seed,
        "quick": args.quick,
        "only": args.only,
        "dapper": dapper is not None,
        "letkf_batch": list(LETKF_BATCH),
        "references": {ref.name: ref.config.to_dict() for ref in references},
    }
    (args.out / "config.json").write_text(json.dumps(run_config, indent=2))

    rows = []
    for index, reference in enumerate(references, 1):
        print(f"[{index}/{len(references)}] {reference.name} ...", file=sys.stderr, flush=True)
        rows.append(run_reference(reference, args.cycles, args.burn_in, args.seed, dapper))

    record = {
        **run_config,
        "averaged_cycles": args.cycles - args.burn_in,
        "notes": list(NOTES),
        "environment": environment(),
        "results": rows,
    }
    (args.out / "dapper_parity.json").write_text(json.dumps(record, indent=2))
    print(table(rows))
    print(
        f"{args.cycles} cycles, {args.burn_in} burn-in, seed {args.seed}; hybridda float64 on "
        f"{jax.default_backend()}; LETKF localisation: one domain per grid point in both; "
        "DAPPER timings include its per-cycle statistics."
    )
    compile_times = ", ".join(
        f"{row['name']} {row['ours']['compile_seconds']:.2f}s" for row in rows
    )
    print(f"hybridda compile: {compile_times}")
    if dapper is None:
        print("DAPPER not run (--no-dapper or not importable).")
    print(f"Wrote {args.out / 'dapper_parity.json'} and {args.out / 'config.json'}")
    return record


if __name__ == "__main__":
    main()
