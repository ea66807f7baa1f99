"""The `hybridda` command line (also `python -m hybridda`).

Subcommands:

- ``twin``: a cycled twin experiment (truth run, synthetic observations, DA), printing
  time-averaged RMSE/spread and timings; ``--out DIR`` also writes the netCDF
  trajectory, figures, ``metrics.json`` and ``config.json``.

Benchmarks and paper reproductions live in ``experiments/`` and ``paper/``.
"""

import argparse
import json
import sys
from pathlib import Path

from .twin import METHODS, MODELS, OBSERVATIONS, TwinConfig


def _twin_parser(sub) -> None:
    p = sub.add_parser(
        "twin",
        help="cycled twin experiment",
        description="Run a twin experiment: truth run, synthetic observations, cycled DA.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TwinConfig()
    p.add_argument("--model", choices=MODELS, default=d.model)
    p.add_argument("--n", type=int, default=d.n, help="state size (slow variables for two-scale)")
    p.add_argument("--forcing", type=float, default=None, help="F (default: 8, two-scale 10)")
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--ensemble-size", type=int, default=d.ensemble_size)
    p.add_argument("--inflation", type=float, default=d.inflation, help="anomaly factor, 1 = none")
    p.add_argument(
        "--localisation-radius", type=float, default=None, help="grid units (LETKF, EnKF)"
    )
    p.add_argument(
        "--hyperprior-boost", type=float, default=d.hyperprior_boost, help="EnKF-N: xN (1 or 2)"
    )
    p.add_argument(
        "--background-scale",
        type=float,
        default=d.background_scale,
        help="3D-Var: B = scale × clim",
    )
    p.add_argument(
        "--dt", type=float, default=None, help="step (default 0.05 L96, 0.01 L63, 0.005 two-scale)"
    )
    p.add_argument("--steps-per-cycle", type=int, default=d.steps_per_cycle)
    p.add_argument("--obs", choices=OBSERVATIONS, default=d.obs)
    p.add_argument("--obs-count", type=int, default=None, help="random: observations per cycle")
    p.add_argument("--obs-every", type=int, default=d.obs_every, help="every-k: k")
    p.add_argument("--obs-std", type=float, default=d.obs_std)
    p.add_argument(
        "--window", type=int, default=d.window, help="4D-Var / IEnKS: cycles per window (lag)"
    )
    p.add_argument(
        "--shift",
        type=int,
        default=None,
        help="cycles between window starts (default: 1 for ienks, the window for 4D-Var)",
    )
    p.add_argument(
        "--mda", action="store_true", help="ienks: multiple data assimilation (default single)"
    )
    p.add_argument(
        "--rotate",
        action="store_true",
        help="ensemble filters: random mean-preserving rotation of the analysis anomalies "
        "each cycle (DAPPER's rot=True)",
    )
    p.add_argument(
        "--hybrid-weight",
        type=float,
        default=d.hybrid_weight,
        help="4D-Var: B = (1-β) B_clim + β P_ens, the ensemble cycled by an ETKF",
    )
    p.add_argument(
        "--outer-loops",
        type=int,
        default=d.outer_loops,
        help="4D-Var outer loops; ienks Gauss-Newton iterations",
    )
    p.add_argument(
        "--inner-loops", type=int, default=d.inner_loops, help="4D-Var CG iterations per loop"
    )
    p.add_argument(
        "--model-error-std", type=float, default=d.model_error_std, help="weak-4dvar: Q = std² I"
    )
    p.add_argument("--cycles", type=int, default=d.cycles)
    p.add_argument("--burn-in", type=int, default=d.burn_in)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write trajectory.nc, figures, JSON here")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.add_argument("--precision", choices=("float64", "float32"), default="float64")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _config_from_args(args) -> TwinConfig:
    return TwinConfig(
        model=args.model,
        n=args.n,
        forcing=args.forcing,
        dt=args.dt,
        steps_per_cycle=args.steps_per_cycle,
        obs=args.obs,
        obs_count=args.obs_count,
        obs_every=args.obs_every,
        obs_std=args.obs_std,
        method=args.method,
        ensemble_size=args.ensemble_size,
        inflation=args.inflation,
        hyperprior_boost=args.hyperprior_boost,
        localisation_radius=args.localisation_radius,
        background_scale=args.background_scale,
        window=args.window,
        shift=args.shift,
        multiple_da=args.mda,
        hybrid_weight=args.hybrid_weight,
        rotate=args.rotate,
        outer_loops=args.outer_loops,
        inner_loops=args.inner_loops,
        model_error_std=args.model_error_std,
        cycles=args.cycles,
        burn_in=args.burn_in,
    )


def run_twin_command(args) -> dict:
    import jax

    jax.config.update("jax_enable_x64", args.precision == "float64")
    from .twin import run_twin

    config = _config_from_args(args)
    result = run_twin(config, seed=args.seed, progress=None if not args.no_progress else False)
    m = result.metrics
    rows = [
        ("analysis RMSE", f"{m['rmse_analysis']:.4f}"),
        ("forecast RMSE", f"{m['rmse_forecast']:.4f}"),
        ("analysis spread", f"{m['spread_analysis']:.4f}"),
        ("time per cycle", f"{1e6 * m['seconds_per_cycle']:.1f} µs"),
        ("compilation", f"{m['compile_seconds']:.2f} s"),
    ]
    print(
        f"{config.model} n={result.truth.shape[1]}  {config.method}"
        f"{f' N={config.members}' if config.members > 1 else ''}"
        f"{f' window={config.window} shift={config.stride}' if config.window > 1 else ''}  "
        f"{config.cycles} cycles (averages after {config.burn_in})"
    )
    for name, value in rows:
        print(f"  {name:<16} {value:>12}")
    if m.get("unconverged_windows"):
        print(f"  {'unconverged':<16} {m['unconverged_windows']:>12} windows (of the minimiser)")
    if not m["finite"]:
        print("  WARNING: the analysis diverged (non-finite values).", file=sys.stderr)
    if args.out is not None:
        _write_outputs(args, result)
        print(f"  outputs in {args.out}/")
    if args.json:
        print(json.dumps({**m, "seed": args.seed, "config": config.to_dict()}))
    return m


def _write_outputs(args, result) -> None:
    from . import plot
    from .io import save_netcdf

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = result.config
    title = f"{config.model}, {config.method}, seed {args.seed}"
    attrs = {f"config_{k}": v for k, v in config.to_dict().items()} | {"seed": args.seed}
    dataset = result.trajectory.to_xarray(truth=result.truth, observations=result.observations)
    save_netcdf(dataset.assign_attrs(attrs), out / "trajectory.nc")
    plot.hovmoller(
        result.truth,
        result.trajectory.analysis_mean,
        result.trajectory.times,
        out / "hovmoller.png",
        title,
    )
    plot.rmse_and_spread(result.truth, result.trajectory, out / "rmse.png", config.burn_in, title)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "seed": args.seed}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hybridda", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _twin_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "twin":
            run_twin_command(args)
    except ValueError as error:  # bad settings: a clear message, no traceback
        parser.exit(2, f"hybridda {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
