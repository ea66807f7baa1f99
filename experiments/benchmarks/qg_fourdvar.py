"""Cost of one strong-constraint 4D-Var window on the 40 x 20 QG channel (issue 6, target 3).

The setting of OOPS's QG toy system: the "truth" ``QG()`` generates the observations, the
imperfect model ``QG().perturbed(depths=(5500, 4500))`` is the 4D-Var model. One window
of `--window` cycles of `--steps-per-cycle` RK4 steps (``dt = 0.05``, 1.4 h) starts
from a turbulent state (400 steps of spin-up); every cycle observes the streamfunction
at `--obs-count` random points (both layers, error std `--obs-std`). The control is the
initial PV; ``B`` is Gaussian-correlated (std `--background-std`, length 1000 km, layer
correlation 0.5) and the background is drawn from it.

Measured (compiled with `eqx.filter_jit`; times are medians over `--repeats` runs,
forward and derivative timed in alternation):

- **the window**: `hybridda.variational.incremental` with `--outer-loops` outer
  (Gauss-Newton) loops of at most `--inner-loops` conjugate-gradient iterations, its
  compile time, run time, costs and the streamfunction RMSE of background and analysis;
- **J(x0) and its gradient**: the whole cost ``J = J_b + J_o`` of
  `hybridda.variational.StrongFourDVar` (as the minimisers see it) and, in full runs,
  the observation term ``J_o`` alone (the model over the window and the observation
  operators, i.e. the tangent-linear/adjoint cost of the dynamics), forward against
  ``jax.grad``; the ratio gradient / forward is the usual "adjoint cost" figure (2-4
  is typical of a good hand-written adjoint);
- the directional derivative ``J_o'(x0) dx`` (`jax.jvp`, tangent-linear) in full runs;
- one Cholesky factorisation of the dense ``B`` (n = 1600): the minimisers compute it
  once per window (`StrongFourDVar.control_factors`), a direct evaluation of ``J``
  (as timed above) once per call.

Writes ``qg_fourdvar.json``, ``metrics.json`` (the same record) and ``config.json`` to
`--out` and prints a table.

Usage::

    python experiments/benchmarks/qg_fourdvar.py            # the numbers of the issue
    python experiments/benchmarks/qg_fourdvar.py --quick    # fewer loops and repeats
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hybridda as hda  # noqa: E402
from hybridda._benchmark import machine, machine_line, write_results  # noqa: E402
from hybridda.dynamics import QG  # noqa: E402
from hybridda.observe import GaussianError, RandomQGPointObservation  # noqa: E402
from hybridda.variational import (  # noqa: E402
    StrongFourDVar,
    channel_gaussian_covariance,
    incremental,
)

FULL = {
    "window": 4,
    "steps_per_cycle": 2,
    "outer_loops": 3,
    "inner_loops": 20,
    "repeats": 10,
    "tangent_linear": True,
    "observation_term": True,
}
QUICK = {
    "window": 4,
    "steps_per_cycle": 2,
    "outer_loops": 2,
    "inner_loops": 10,
    "repeats": 2,
    "tangent_linear": False,
    "observation_term": False,
}
DT, SPIN_UP_STEPS = 0.05, 400


@eqx.filter_jit
def _truth_run(resolvent, observation, spin_up_cycles: int, window: int, key):
    states = hda.simulate(
        resolvent, resolvent.dynamics.default_initial_state(), spin_up_cycles + window
    )
    start, truth = states[spin_up_cycles], states[spin_up_cycles + 1 :]
    return start, truth, hda.synthesise_observations(observation, truth, key)


def make_window(settings, seed: int):
    """The 4D-Var cost of one window, the true initial state and the true window."""
    truth_model = QG()
    model = truth_model.perturbed(depths=(5500.0, 4500.0))
    steps = settings["steps_per_cycle"]
    key_network, key_noise = jax.random.split(jax.random.key(seed))
    error = GaussianError(settings["obs_std"])
    count = settings["obs_count"]
    # The same points for both models; each diagnoses the streamfunction from its own PV.
    truth_network = RandomQGPointObservation(truth_model, count, error, key_network)
    network = RandomQGPointObservation(model, count, error, key_network)
    start, truth, y = _truth_run(
        hda.Resolvent(truth_model, dt=DT, steps_per_cycle=steps),
        truth_network,
        SPIN_UP_STEPS // steps,
        settings["window"],
        key_noise,
    )
    B = channel_gaussian_covariance(model, settings["background_std"], 1.0, 0.5)
    rng = np.random.default_rng(seed)
    background = start + jnp.asarray(np.linalg.cholesky(B) @ rng.standard_normal(B.shape[0]))
    resolvent = hda.Resolvent(model, dt=DT, steps_per_cycle=steps)
    cost = StrongFourDVar(resolvent, network, y, background, jnp.asarray(B))
    return {
        "truth_model": truth_model,
        "model": model,
        "start": start,
        "truth": truth,
        "cost": cost,
    }


def _median_times(functions: dict, args, repeats: int) -> dict:
    """Median (and minimum) seconds per call of compiled functions, timed in alternation."""
    for function in functions.values():
        jax.block_until_ready(function(*args))  # compile + warm up
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(function(*args))
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_seconds": float(np.median(t)), "min_seconds": float(np.min(t))}
        for name, t in times.items()
    }


def time_gradients(cost, settings) -> dict:
    """Forward against gradient of J and of J_o (and the tangent-linear of J_o)."""
    x0 = cost.background
    direction = jax.random.normal(jax.random.key(1), x0.shape)
    result = {}
    objectives = {"J": lambda c, x: c(x)}
    if settings["observation_term"]:
        objectives["J_o"] = lambda c, x: c.observation_term(x)
    for label, objective in objectives.items():
        functions = {
            "forward": eqx.filter_jit(objective),
            "gradient": eqx.filter_jit(jax.grad(objective, argnums=1)),
        }
        if settings["tangent_linear"] and label == "J_o":
            functions["tangent_linear"] = eqx.filter_jit(
                lambda c, x, f=objective: jax.jvp(lambda z: f(c, z), (x,), (direction,))
            )
        times = _median_times(functions, (cost, x0), settings["repeats"])
        forward = times["forward"]["median_seconds"]
        row = {name: t for name, t in times.items()}
        row["gradient_over_forward"] = times["gradient"]["median_seconds"] / forward
        row["gradient_over_forward_minima"] = (
            times["gradient"]["min_seconds"] / times["forward"]["min_seconds"]
        )
        if "tangent_linear" in times:
            row["tangent_linear_over_forward"] = times["tangent_linear"]["median_seconds"] / forward
        result[label] = row
    cholesky = jax.jit(jnp.linalg.cholesky)
    result["cholesky_B"] = _median_times(
        {"cholesky": cholesky}, (cost.background_covariance,), settings["repeats"]
    )["cholesky"]
    return result


def time_window(problem, settings) -> dict:
    """Compile and run one incremental 4D-Var window; its costs and errors."""
    cost = problem["cost"]

    @eqx.filter_jit
    def analyse(cost, background):
        result = incremental(
            cost,
            background,
            outer_loops=settings["outer_loops"],
            inner_loops=settings["inner_loops"],
        )
        # Background and analysis trajectories in one vmap (one compiled model copy).
        states = jax.vmap(cost.trajectory)(jnp.stack([background, result.control]))
        return result, states

    start = time.perf_counter()
    result, states = jax.block_until_ready(analyse(cost, cost.background))
    first_call = time.perf_counter() - start
    runs = []
    for _ in range(settings["repeats"]):
        start = time.perf_counter()
        jax.block_until_ready(analyse(cost, cost.background))
        runs.append(time.perf_counter() - start)
    run = float(np.median(runs))

    truth_psi = jax.vmap(problem["truth_model"].perturbation_streamfunction)
    model_psi = jax.vmap(problem["model"].perturbation_streamfunction)

    def psi_rmse(estimate, reference):
        return float(jnp.sqrt(jnp.mean((model_psi(estimate) - truth_psi(reference)) ** 2)))

    start_state = problem["start"][None]
    end_state = problem["truth"][-1:]
    return {
        "compile_seconds": first_call - run,
        "run_seconds": run,
        "run_min_seconds": float(np.min(runs)),
        "costs": np.asarray(result.costs).tolist(),
        "iterations": int(result.iterations),
        "converged": bool(result.converged),
        "background_psi_rmse_start": psi_rmse(cost.background[None], start_state),
        "analysis_psi_rmse_start": psi_rmse(result.control[None], start_state),
        "background_psi_rmse_end": psi_rmse(states[0, -1:], end_state),
        "analysis_psi_rmse_end": psi_rmse(states[1, -1:], end_state),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_qg_fourdvar"))
    parser.add_argument("--seed", type=int, default=0, help="observations and background")
    parser.add_argument(
        "--quick", action="store_true", help="fewer loops and repeats; J only (no J_o, no TL)"
    )
    parser.add_argument("--window", type=int, help="cycles per window (4)")
    parser.add_argument("--steps-per-cycle", type=int, help="RK4 steps per cycle (2)")
    parser.add_argument("--outer-loops", type=int, help="Gauss-Newton outer loops (3)")
    parser.add_argument("--inner-loops", type=int, help="CG iterations per outer loop (20)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (10)")
    parser.add_argument("--obs-count", type=int, default=100, help="points per cycle")
    parser.add_argument("--obs-std", type=float, default=0.05, help="streamfunction error")
    parser.add_argument("--background-std", type=float, default=0.3, help="PV, std of B")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for name in ("window", "steps_per_cycle", "outer_loops", "inner_loops", "repeats"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for name in ("window", "steps_per_cycle", "outer_loops", "inner_loops", "repeats"):
        if settings[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.obs_count < 1 or not args.obs_std > 0 or not args.background_std > 0:
        parser.error("--obs-count must be >= 1, --obs-std and --background-std > 0")
    settings.update(
        obs_count=args.obs_count, obs_std=args.obs_std, background_std=args.background_std
    )
    return args, settings


def main(argv=None) -> dict:
    args, settings = parse_args(argv)
    from tqdm.auto import tqdm

    with tqdm(total=3, desc="QG 4D-Var benchmark", disable=not sys.stderr.isatty()) as bar:
        problem = make_window(settings, args.seed)
        bar.update()
        window = time_window(problem, settings)
        bar.update()
        gradients = time_gradients(problem["cost"], settings)
        bar.update()
    n = problem["start"].shape[0]
    record = {
        "settings": settings,
        "seed": args.seed,
        "state_size": n,
        "observations_per_window": settings["window"] * settings["obs_count"],
        "window_model_steps": settings["window"] * settings["steps_per_cycle"],
        **machine(),
        "window": window,
        "gradients": gradients,
    }
    write_results(
        args.out, "qg_fourdvar", record, {**settings, "seed": args.seed, "quick": args.quick}
    )
    print_table(record)
    return record


def print_table(record):
    settings, window, gradients = record["settings"], record["window"], record["gradients"]
    print(machine_line(record))
    print(
        f"QG 40x20 (n={record['state_size']}), strong 4D-Var window of {settings['window']} "
        f"cycles x {settings['steps_per_cycle']} RK4 steps, "
        f"{record['observations_per_window']} observations"
    )
    print(
        f"  window (incremental, {settings['outer_loops']} outer x <= "
        f"{settings['inner_loops']} inner): compile {window['compile_seconds']:.1f} s, run "
        f"{window['run_seconds'] * 1e3:.0f} ms (min {window['run_min_seconds'] * 1e3:.0f} ms)"
    )
    costs = window["costs"]
    print(
        f"  J: {costs[0]:.4g} -> {costs[-1]:.4g}; streamfunction RMSE background -> analysis: "
        f"start {window['background_psi_rmse_start']:.3g} -> "
        f"{window['analysis_psi_rmse_start']:.3g}, end {window['background_psi_rmse_end']:.3g}"
        f" -> {window['analysis_psi_rmse_end']:.3g}"
    )
    print(f"  {'function':<6} {'forward ms':>10} {'gradient ms':>11} {'ratio':>6} {'TL ratio':>8}")
    for label in ("J", "J_o"):
        if label not in gradients:
            continue
        row = gradients[label]
        tangent = row.get("tangent_linear_over_forward")
        print(
            f"  {label:<6} {row['forward']['median_seconds'] * 1e3:10.2f} "
            f"{row['gradient']['median_seconds'] * 1e3:11.2f} "
            f"{row['gradient_over_forward']:6.2f} "
            f"{'-' if tangent is None else f'{tangent:.2f}':>8}"
        )
    print(
        f"  one Cholesky of the dense B ({record['state_size']}^2): "
        f"{gradients['cholesky_B']['median_seconds'] * 1e3:.1f} ms (once per 4D-Var window; "
        "inside every direct J evaluation)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
