"""Speed-up of DA runs split over devices with `hybridda.sharding` (issue 5).

Two workloads, each run on meshes of 1, 2, 4, ... devices (`--devices`), checked
against the one-device result (max abs difference: round-off, since sums over members
are split into per-device partial sums):

- **ensemble filter** (EnKF family): a stochastic EnKF (N = `--members`, inflation
  1.02) on Lorenz-96 with n = `--n` variables, every other one observed (std 1),
  `--cycles` cycles of `--steps` RK4 steps (dt = 0.01), the members split over the
  devices ([`hybridda.sharding.shard_members`][]): each device forecasts N / devices
  members; the analysis's ensemble-space matrices come from an all-reduce.
- **batch of 4D-Var windows** (4D-Var family): `--windows` independent strong 4D-Var
  windows (Lorenz-96, n = `--n`, `--window` cycles, Gauss-Newton with
  `--gn-iterations` outer loops), a `jax.vmap` over the batch split over the devices
  ([`hybridda.sharding.shard_batch`][]).

On a CPU the devices are host devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (the script sets it to the largest
of `--devices` unless XLA_FLAGS already holds a count); they share the machine's cores,
so the speed-up is bounded by the number of cores (and one device may already use
several cores for large matrix products). On a multi-GPU machine the same code splits
the work over the GPUs.

Times are medians over `--repeats` runs of the compiled programs (compile excluded).
Writes ``sharding.json``, ``metrics.json`` (same record) and ``config.json`` to `--out`
and prints a table.

Usage::

    python experiments/benchmarks/sharding.py            # n = 1000, N = 64, 1/2/4 devices
    python experiments/benchmarks/sharding.py --quick    # small, for the tests
"""

import os
import re
import sys


def requested_device_counts(argv) -> list[int]:
    """The device counts after ``--devices`` in `argv` (up to the next option), or 1 2 4."""
    if "--devices" not in argv:
        return [1, 2, 4]
    counts = []
    for value in argv[argv.index("--devices") + 1 :]:
        if not value.isdigit():  # the next option: its numbers are not device counts
            break
        counts.append(int(value))
    return counts or [1, 2, 4]


def _force_host_devices(argv) -> None:
    """Ask XLA for as many host devices as the largest `--devices`, before JAX starts."""
    if "jax" in sys.modules or re.search(r"device_count=\d+", os.environ.get("XLA_FLAGS", "")):
        return
    flag = f"--xla_force_host_platform_device_count={max(requested_device_counts(argv))}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


if __name__ == "__main__":
    _force_host_devices(sys.argv[1:])

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hybridda  # noqa: E402
from hybridda._benchmark import machine, machine_line, write_results  # noqa: E402
from hybridda.dynamics import Lorenz96  # noqa: E402
from hybridda.filters import EnKF, Multiplicative  # noqa: E402
from hybridda.observe import GaussianError, every_kth  # noqa: E402
from hybridda.sharding import device_mesh, shard_batch, shard_members  # noqa: E402
from hybridda.variational import StrongFourDVar, gauss_newton  # noqa: E402

FULL = {
    "n": 1000,
    "members": 64,
    "cycles": 20,
    "steps": 5,
    "windows": 8,
    "window": 5,
    "gn_iterations": 3,
    "devices": [1, 2, 4],
    "repeats": 5,
}
QUICK = {
    "n": 40,
    "members": 8,
    "cycles": 5,
    "steps": 2,
    "windows": 4,
    "window": 2,
    "gn_iterations": 2,
    "devices": [1, 4],
    "repeats": 2,
}


def _median_seconds(function, *args, repeats: int) -> dict:
    start = time.perf_counter()
    result = jax.block_until_ready(function(*args))  # compile + first run
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return {"seconds": float(np.median(times)), "first_call_seconds": compile_seconds}, result


def _twin(settings, seed):
    keys = jax.random.split(jax.random.key(seed), 4)
    n = settings["n"]
    model = hybridda.Resolvent(
        Lorenz96(n=n, forcing=8.0), dt=0.01, steps_per_cycle=settings["steps"]
    )
    x_start = model.dynamics.default_initial_state() + 0.1 * jax.random.normal(keys[0], (n,))
    x0 = jax.jit(hybridda.spin_up, static_argnums=2)(model, x_start, 200)
    return model, x0, keys


def time_filter(settings, seed) -> dict:
    model, x0, keys = _twin(settings, seed)
    n, N = settings["n"], settings["members"]
    truth = hybridda.simulate(model, x0, settings["cycles"])[1:]
    observation = every_kth(n, 2, GaussianError(1.0))
    y = hybridda.synthesise_observations(observation, truth, keys[1])
    E0 = hybridda.initial_ensemble(keys[2], x0, N, 1.0)
    method = EnKF(inflation=Multiplicative(1.02))
    run = jax.jit(lambda E: hybridda.assimilate(model, observation, method, y, E, keys[3]))
    rows, reference = [], None
    for devices in settings["devices"]:
        timing, trajectory = _median_seconds(
            run, shard_members(E0, device_mesh(devices)), repeats=settings["repeats"]
        )
        if reference is None:
            reference = trajectory
        rows.append(
            {
                "devices": devices,
                **timing,
                "seconds_per_cycle": timing["seconds"] / settings["cycles"],
                "max_abs_difference": _max_abs_difference(
                    trajectory.analysis_mean, reference.analysis_mean
                ),
                "analysis_rmse": _rmse(trajectory.analysis_mean, truth),
                "members_sharded": (
                    trajectory.final_ensemble.sharding.spec[0] == "members" if devices > 1 else None
                ),
            }
        )
    return _with_speedups(rows)


def time_window_batch(settings, seed) -> dict:
    model, x0, keys = _twin(settings, seed)
    n, B, L = settings["n"], settings["windows"], settings["window"]
    observation = every_kth(n, 2, GaussianError(1.0))
    starts = hybridda.simulate(model, x0, B * L)[::L][:B]
    truths = jax.vmap(lambda x: hybridda.simulate(model, x, L)[1:])(starts)
    ys = jax.vmap(lambda t, k: hybridda.synthesise_observations(observation, t, k))(
        truths, jax.random.split(keys[1], B)
    )
    backgrounds = starts + jax.random.normal(keys[2], starts.shape)

    @jax.jit
    def analyses(ys, backgrounds):
        def one(y, background):
            cost = StrongFourDVar(model, observation, y, background, jnp.eye(n))
            return gauss_newton(cost, background, max_iterations=settings["gn_iterations"]).control

        return jax.vmap(one)(ys, backgrounds)

    rows, reference = [], None
    for devices in settings["devices"]:
        if B % devices:
            continue
        batch = shard_batch((ys, backgrounds), device_mesh(devices, axis="batch"))
        timing, result = _median_seconds(analyses, *batch, repeats=settings["repeats"])
        if reference is None:
            reference = result
        rows.append(
            {
                "devices": devices,
                **timing,
                "max_abs_difference": _max_abs_difference(result, reference),
                "analysis_rmse": _rmse(result, starts),
                "background_rmse": _rmse(backgrounds, starts),
                "batch_axis_sharded": result.sharding.spec[0] == "batch" if devices > 1 else None,
            }
        )
    return _with_speedups(rows)


def _max_abs_difference(a, b) -> float:  # results on different meshes: compare on host
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def _with_speedups(rows) -> dict:
    base = rows[0]["seconds"]
    for row in rows:
        row["speedup"] = base / row["seconds"]
    return {"rows": rows}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_sharding"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small problem for the tests")
    parser.add_argument("--devices", type=int, nargs="+", help="mesh sizes (1 2 4)")
    for name in ("n", "members", "cycles", "steps", "windows", "window", "repeats"):
        parser.add_argument(f"--{name}", type=int)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for name in (*settings, "devices"):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    available = len(jax.devices())
    if max(settings["devices"]) > available:
        parser.error(
            f"--devices asks for {max(settings['devices'])} devices but {available} are "
            "available; on CPU run the script directly (it sets XLA_FLAGS) or set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=D before starting Python."
        )
    if settings["members"] % max(settings["devices"]):
        parser.error(
            f"--members ({settings['members']}) must be a multiple of every device count "
            f"({settings['devices']})."
        )
    return args, settings


def main(argv=None) -> dict:
    args, settings = parse_args(argv)
    record = {
        "settings": settings,
        "seed": args.seed,
        **machine(),
        "filter": time_filter(settings, args.seed),
        "window_batch": time_window_batch(settings, args.seed),
    }
    write_results(
        args.out, "sharding", record, {**settings, "seed": args.seed, "quick": args.quick}
    )
    print_table(record)
    return record


def print_table(record):
    s = record["settings"]
    print(machine_line(record))
    print(
        f"EnKF N={s['members']} on Lorenz-96 n={s['n']}, {s['cycles']} cycles x {s['steps']} "
        f"RK4 steps | batch of {s['windows']} strong 4D-Var windows ({s['window']} cycles, "
        f"{s['gn_iterations']} Gauss-Newton loops)"
    )
    print(f"{'workload':<14} {'devices':>7} {'time ms':>9} {'speed-up':>8} {'max |diff|':>10}")
    for name, key in (("EnKF cycles", "filter"), ("4D-Var batch", "window_batch")):
        for row in record[key]["rows"]:
            print(
                f"{name:<14} {row['devices']:>7} {row['seconds'] * 1e3:>9.1f} "
                f"{row['speedup']:>8.2f} {row['max_abs_difference']:>10.1e}"
            )


if __name__ == "__main__":
    main()
