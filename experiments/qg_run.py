"""Free run of the two-layer QG channel model (`hybridda.dynamics.QG`).

Starts from the model's default state (the sheared flow plus a small deterministic
perturbation) plus a small seeded perturbation of the PV, integrates with RK4 in
jitted chunks, and writes into ``--out``:

- ``fields.png``: total streamfunction and total PV of both layers at the end;
- ``timeseries.png``: perturbation energy and enstrophy against time (log scale);
- ``qg_run.nc``: the time series and the final fields (netCDF);
- ``metrics.json``: final energy / enstrophy, max Courant number, seconds per RK4 step;
- ``config.json``: the arguments and the model's parameters.

With ``--twin letkf`` (or ``enkf``) an identical-twin experiment follows from the final
state: the truth runs on, a QG observation network (``--network points``: random
in-situ points redrawn every cycle; ``swath``: a moving satellite-like swath) observes
it, and the filter with 2-D Gaspari-Cohn localisation (periodic in x) assimilates the
observations, starting from an ensemble of the free run's last recorded states. It adds
``twin.png`` (streamfunction RMSE against time, with the un-assimilated forecast of the
initial mean for comparison) and a ``twin`` entry in ``metrics.json``.

Usage::

    python experiments/qg_run.py                      # 40 x 20, dt 0.05, 2000 steps
    python experiments/qg_run.py --quick              # 400 steps (< 1 min)
    python experiments/qg_run.py --nx 128 --ny 64 --dt 0.015 --steps 4000
    python experiments/qg_run.py --quick --twin letkf --network swath
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hybridda.cycle import assimilate, simulate, synthesise_observations  # noqa: E402
from hybridda.dynamics import QG  # noqa: E402
from hybridda.filters import LETKF, EnKF, Localisation, multiplicative  # noqa: E402
from hybridda.integrate import Resolvent  # noqa: E402
from hybridda.observe import (  # noqa: E402
    GaussianError,
    QGSwathObservation,
    RandomQGPointObservation,
)

QUICK_STEPS, DEFAULT_STEPS = 400, 2000
QUICK_CYCLES, DEFAULT_CYCLES = 20, 200


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Free run of the two-layer QG channel model: spin-up from a small "
        "perturbation of the sheared flow, energy / enstrophy time series, final fields.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial perturbation")
    parser.add_argument("--out", type=Path, default=Path("runs/qg"))
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps (< 1 min)")
    parser.add_argument("--nx", type=int, default=40, help="grid points in x (default 40)")
    parser.add_argument("--ny", type=int, default=20, help="interior rows in y (default 20)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"RK4 steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--dt", type=float, default=0.05, help="time step (1 = 27.8 h)")
    parser.add_argument(
        "--chunk", type=int, default=20, help="steps per jitted chunk (one record each)"
    )
    parser.add_argument(
        "--perturbation", type=float, default=1e-3, help="std of the seeded PV perturbation"
    )
    twin = parser.add_argument_group("twin experiment (after the free run)")
    twin.add_argument("--twin", choices=("none", "letkf", "enkf"), default="none")
    twin.add_argument("--network", choices=("points", "swath"), default="points")
    twin.add_argument(
        "--cycles",
        type=int,
        default=None,
        help=f"assimilation cycles (default {DEFAULT_CYCLES}, quick {QUICK_CYCLES})",
    )
    twin.add_argument("--steps-per-cycle", type=int, default=5, help="RK4 steps per cycle")
    twin.add_argument("--members", type=int, default=12, help="ensemble size")
    twin.add_argument("--obs-count", type=int, default=100, help="points per cycle (points)")
    twin.add_argument("--swath-width", type=int, default=8, help="grid columns (swath)")
    twin.add_argument("--swath-shift", type=int, default=5, help="columns moved per cycle")
    twin.add_argument(
        "--obs-fields",
        default="streamfunction",
        help="comma-separated observed fields: streamfunction,u,v",
    )
    twin.add_argument("--obs-std", type=float, default=0.2, help="observation-error std")
    twin.add_argument(
        "--localisation-radius", type=float, default=1.0, help="in length units (1000 km)"
    )
    twin.add_argument("--inflation", type=float, default=1.05, help="multiplicative factor")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
    if args.cycles is None:
        args.cycles = QUICK_CYCLES if args.quick else DEFAULT_CYCLES
    if args.steps < 1 or args.chunk < 1:
        parser.error("--steps and --chunk must be positive")
    if args.steps % args.chunk:
        parser.error(f"--steps ({args.steps}) must be a multiple of --chunk ({args.chunk})")
    if args.twin != "none":
        if min(args.cycles, args.steps_per_cycle) < 1 or args.members < 2:
            parser.error("--cycles and --steps-per-cycle must be >= 1 and --members >= 2")
        if args.steps // args.chunk < args.members:
            parser.error(
                f"the initial ensemble takes the free run's last --members ({args.members}) "
                f"recorded states, but it records only --steps / --chunk = "
                f"{args.steps // args.chunk}; run longer or use fewer members"
            )
    return args


def model_parameters(model: QG) -> dict:
    f1, f2 = model.coupling()
    return {
        "nx": model.nx,
        "ny": model.ny,
        "lengths": list(model.lengths),
        "grid_spacing": list(model.grid_spacing),
        "depths": np.asarray(model.depths).tolist(),
        "rossby_radius": float(model.rossby_radius),
        "rossby_number": float(model.rossby_number),
        "beta": float(model.beta),
        "zonal_wind": np.asarray(model.zonal_wind).tolist(),
        "friction": float(model.friction),
        "thermal_damping": float(model.thermal_damping),
        "hyperviscosity": float(model.hyperviscosity),
        "viscosity": float(model.viscosity()),
        "coupling_F1_F2": [float(f1), float(f2)],
        "orography_max_m": float(jnp.max(model.orography)),
    }


def plot_fields(model: QG, state, path: Path) -> None:
    x, y = model.grid()
    psi = np.asarray(model.streamfunction(state))
    pv = np.asarray(model.potential_vorticity(state))
    figure, axes = plt.subplots(2, 2, figsize=(12, 6), constrained_layout=True)
    for layer, name in enumerate(("upper", "lower")):
        for row, (field, label) in enumerate(((psi, "streamfunction"), (pv, "PV"))):
            axis = axes[row, layer]
            image = axis.contourf(x, y, field[layer], levels=30, cmap="RdBu_r")
            axis.set_title(f"{name} layer {label}")
            axis.set_aspect("equal")
            axis.set_xlabel("x (1000 km)")
            axis.set_ylabel("y (1000 km)")
            figure.colorbar(image, ax=axis, shrink=0.8)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_timeseries(times, energy, enstrophy, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 4), constrained_layout=True)
    axis.semilogy(times, energy, label="energy")
    axis.semilogy(times, enstrophy, label="potential enstrophy")
    axis.set_xlabel("time (units of 27.8 h)")
    axis.set_ylabel("perturbation, per unit area")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def build_network(args, model: QG, key):
    """The observation network named by ``--network``."""
    error = GaussianError(args.obs_std)
    fields = tuple(name.strip() for name in args.obs_fields.split(","))
    if args.network == "points":
        return RandomQGPointObservation(model, args.obs_count, error, key, fields)
    return QGSwathObservation(
        model, args.swath_width, args.swath_shift, error, fields=fields, observed_layers=(0, 1)
    )


def build_filter(args, model: QG):
    """LETKF or stochastic EnKF with 2-D localisation (periodic in x, walls in y)."""
    localisation = Localisation(
        args.localisation_radius,
        coordinates=model.grid_coordinates(),
        domain_length=(model.lengths[0], math.inf),
    )
    inflation = multiplicative(args.inflation)
    if args.twin == "letkf":
        return LETKF(localisation, inflation=inflation)
    return EnKF(inflation=inflation, localisation=localisation)


def plot_twin(times, rmse: dict, obs_std, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 4), constrained_layout=True)
    for label, values in rmse.items():
        axis.plot(times, values, label=label)
    if obs_std is not None:
        axis.axhline(obs_std, color="grey", linestyle=":", label="observation-error std")
    axis.set_yscale("log")
    axis.set_xlabel("time (units of 27.8 h)")
    axis.set_ylabel("streamfunction RMSE")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_twin(args, model: QG, truth_start, climatology, key) -> dict:
    """Identical twin from `truth_start`, ensemble `climatology`; returns its metrics."""
    resolvent = Resolvent(model, dt=args.dt, steps_per_cycle=args.steps_per_cycle)
    network_key, obs_key, filter_key = jax.random.split(jax.random.fold_in(key, 1), 3)
    network = build_network(args, model, network_key)
    method = build_filter(args, model)

    @eqx.filter_jit
    def experiment(resolvent, network, method, truth_start, climatology):
        truth = simulate(resolvent, truth_start, args.cycles)[1:]  # times 1..K
        y = synthesise_observations(network, truth, obs_key)
        trajectory = assimilate(resolvent, network, method, y, climatology, filter_key)
        free = simulate(resolvent, climatology.mean(axis=0), args.cycles)[1:]
        psi = jax.vmap(model.perturbation_streamfunction)

        def rmse(states):
            return jnp.sqrt(jnp.mean((psi(states) - psi(truth)) ** 2, axis=(1, 2, 3)))

        pv_rmse = jnp.sqrt(jnp.mean((trajectory.analysis_mean - truth) ** 2, axis=1))
        return (
            trajectory,
            pv_rmse,
            {
                "analysis": rmse(trajectory.analysis_mean),
                "forecast": rmse(trajectory.forecast_mean),
                "free run": rmse(free),
            },
        )

    start = time.perf_counter()
    trajectory, pv_rmse, rmse = experiment(resolvent, network, method, truth_start, climatology)
    rmse = {label: np.asarray(values) for label, values in rmse.items()}
    seconds = time.perf_counter() - start
    times = np.asarray(trajectory.times)
    observes_psi = "streamfunction" in args.obs_fields
    plot_twin(times, rmse, args.obs_std if observes_psi else None, args.out / "twin.png")
    second_half = slice(args.cycles // 2, None)
    return {
        "method": args.twin,
        "network": args.network,
        "obs_per_cycle": network.obs_size,
        "cycles": args.cycles,
        "analysis_rmse": float(rmse["analysis"][second_half].mean()),
        "forecast_rmse": float(rmse["forecast"][second_half].mean()),
        "free_rmse": float(rmse["free run"][second_half].mean()),
        # The filter's own statistics are in PV (the state): RMSE against spread.
        "analysis_rmse_pv": float(np.asarray(pv_rmse)[second_half].mean()),
        "analysis_spread_pv": float(np.asarray(trajectory.analysis_spread)[second_half].mean()),
        "finite": bool(np.all(np.isfinite(rmse["analysis"]))),
        "seconds_with_compile": seconds,
    }


def main(argv=None) -> dict:
    """Run the model; returns what it writes to ``OUT/metrics.json``."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = QG(nx=args.nx, ny=args.ny)
    resolvent = Resolvent(model, dt=args.dt, steps_per_cycle=args.chunk)
    config = {
        **{
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "model": model_parameters(model),
        "backend": jax.default_backend(),
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2))

    key = jax.random.key(args.seed)
    state = model.default_initial_state()
    state = state + args.perturbation * jax.random.normal(key, state.shape)
    model.check_cfl(state, args.dt)

    @eqx.filter_jit
    def advance(resolvent, state, t0):
        state = resolvent(state, t0)
        diagnostics = (
            model.energy(state),
            model.enstrophy(state),
            model.courant_number(state, args.dt),
        )
        return state, diagnostics

    start = time.perf_counter()
    jax.block_until_ready(advance(resolvent, state, jnp.asarray(0.0)))
    compile_seconds = time.perf_counter() - start

    chunks = args.steps // args.chunk
    records = {"time": [0.0], "energy": [], "enstrophy": [], "courant": []}
    recorded_states = []  # one per chunk: the twin's initial ensemble
    records["energy"].append(float(model.energy(state)))
    records["enstrophy"].append(float(model.enstrophy(state)))
    records["courant"].append(float(model.courant_number(state, args.dt)))
    start = time.perf_counter()
    for chunk in tqdm(range(chunks), desc="QG run", unit="chunk"):
        t0 = chunk * resolvent.cycle_length
        # t0 as an array: a Python float would be static to filter_jit (one compile each).
        state, (energy, enstrophy, courant) = advance(resolvent, state, jnp.asarray(t0))
        recorded_states.append(state)
        records["time"].append(t0 + resolvent.cycle_length)
        records["energy"].append(float(energy))
        records["enstrophy"].append(float(enstrophy))
        records["courant"].append(float(courant))
        if not math.isfinite(float(energy)):
            break
    wall = time.perf_counter() - start
    steps_done = (len(records["time"]) - 1) * args.chunk
    finite = bool(np.all(np.isfinite(np.asarray(state))))

    times = np.asarray(records["time"])
    plot_timeseries(times, records["energy"], records["enstrophy"], args.out / "timeseries.png")
    if finite:
        plot_fields(model, state, args.out / "fields.png")
        x, y = model.grid()
        dataset = xr.Dataset(
            {
                "energy": ("time", np.asarray(records["energy"])),
                "enstrophy": ("time", np.asarray(records["enstrophy"])),
                "courant": ("time", np.asarray(records["courant"])),
                "streamfunction": (("layer", "y", "x"), np.asarray(model.streamfunction(state))),
                "pv": (("layer", "y", "x"), np.asarray(model.potential_vorticity(state))),
                "state": ("variable", np.asarray(state)),
            },
            coords={"time": times, "layer": [1, 2], "y": y, "x": x},
            attrs={"model": "hybridda.dynamics.QG", "dt": args.dt, "seed": args.seed},
        )
        dataset.to_netcdf(args.out / "qg_run.nc")

    metrics = {
        "finite": finite,
        "steps": steps_done,
        "model_time": steps_done * args.dt,
        "initial_energy": records["energy"][0],
        "final_energy": records["energy"][-1],
        "final_enstrophy": records["enstrophy"][-1],
        "max_energy": float(np.nanmax(records["energy"])),
        "max_courant": float(np.nanmax(records["courant"])),
        "seconds_per_step": wall / max(steps_done, 1),
        "compile_seconds": compile_seconds,
        "state_size": model.state_size,
    }
    if finite and args.twin != "none":
        # The last recorded state is the truth's start; the members before it, one chunk
        # apart, are the initial ensemble.
        climatology = jnp.stack(recorded_states[-args.members - 1 : -1])
        metrics["twin"] = run_twin(args, model, state, climatology, key)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{'quantity':<22}{'value':>14}")
    for name in (
        "model_time",
        "initial_energy",
        "final_energy",
        "final_enstrophy",
        "max_courant",
        "seconds_per_step",
    ):
        print(f"{name:<22}{metrics[name]:>14.4g}")
    if "twin" in metrics:
        for name in ("analysis_rmse", "forecast_rmse", "free_rmse", "analysis_spread_pv"):
            print(f"{'twin ' + name:<22}{metrics['twin'][name]:>14.4g}")
    print(f"Wrote {args.out}/metrics.json, config.json, fields.png, timeseries.png, qg_run.nc")
    if not finite:
        raise RuntimeError(
            f"The run blew up after {steps_done} steps (max Courant number "
            f"{metrics['max_courant']:.3g}); use a smaller --dt."
        )
    return metrics


if __name__ == "__main__":
    main()
