"""Free run of the two-layer QG channel model (`hybridda.dynamics.QG`).

Starts from the model's default state (the sheared flow plus a small deterministic
perturbation) plus a small seeded perturbation of the PV, integrates with RK4 in
jitted chunks, and writes into ``--out``:

- ``fields.png``: total streamfunction and total PV of both layers at the end;
- ``timeseries.png``: perturbation energy and enstrophy against time (log scale);
- ``qg_run.nc``: the time series and the final fields (netCDF);
- ``metrics.json``: final energy / enstrophy, max Courant number, seconds per RK4 step;
- ``config.json``: the arguments and the model's parameters.

Usage::

    python experiments/qg_run.py                      # 40 x 20, dt 0.05, 2000 steps
    python experiments/qg_run.py --quick              # 400 steps (< 1 min)
    python experiments/qg_run.py --nx 128 --ny 64 --dt 0.015 --steps 4000
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

from hybridda.dynamics import QG  # noqa: E402
from hybridda.integrate import Resolvent  # noqa: E402

QUICK_STEPS, DEFAULT_STEPS = 400, 2000


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
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
    if args.steps < 1 or args.chunk < 1:
        parser.error("--steps and --chunk must be positive")
    if args.steps % args.chunk:
        parser.error(f"--steps ({args.steps}) must be a multiple of --chunk ({args.chunk})")
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
    records["energy"].append(float(model.energy(state)))
    records["enstrophy"].append(float(model.enstrophy(state)))
    records["courant"].append(float(model.courant_number(state, args.dt)))
    start = time.perf_counter()
    for chunk in tqdm(range(chunks), desc="QG run", unit="chunk"):
        t0 = chunk * resolvent.cycle_length
        # t0 as an array: a Python float would be static to filter_jit (one compile each).
        state, (energy, enstrophy, courant) = advance(resolvent, state, jnp.asarray(t0))
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
    print(f"Wrote {args.out}/metrics.json, config.json, fields.png, timeseries.png, qg_run.nc")
    if not finite:
        raise RuntimeError(
            f"The run blew up after {steps_done} steps (max Courant number "
            f"{metrics['max_courant']:.3g}); use a smaller --dt."
        )
    return metrics


if __name__ == "__main__":
    main()
