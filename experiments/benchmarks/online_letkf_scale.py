"""Cost of the online augmented LETKF against the state size n (issue 5, engineering 3).

The online learning of Bocquet, Farchi and Malartic (2021), section 4: a Lorenz-96
truth (F = 8, dt = 0.05) with n = `--sizes` variables, every other variable observed
(std 1); the surrogate is the local quadratic-monomial model (18 global coefficients,
`hybridda.dynamics.MonomialDynamics`, started at the true coefficients plus N(0, 0.05²)
noise); `hybridda.filters.ParameterAugmentation(LETKF)` analyses the state locally
(Gaspari-Cohn radius `--radius`) and the coefficients by the mean of their local
analyses, N = `--members`, inflation 1.02, every cycle one jitted `lax.scan` step.

For each n, two LETKFs:

- **local domains** (`Localisation.local_domains`, computed once per network): each
  local analysis gathers the k observations inside the taper's support,
  O(n k N²) per cycle;
- **dense**: every local analysis tapers all p = n/2 observations, O(n p N²) per cycle
  (the default for networks that change every cycle), timed over fewer cycles.

Reported per n: time per cycle (median of `--repeats` runs of a compiled chunk of
`--cycles` cycles, compile excluded), XLA's memory accounting of the compiled chunk
(temporary buffers; arguments and outputs), and, for the local-domain filter, the
analysis RMSE and the coefficient RMSE over the chunk (and the largest difference of
the dense filter's analysis means from it, which should be round-off); then the
log-log slope of time and memory against n (1: linear). Writes
``online_letkf_scale.json``, ``metrics.json`` and ``config.json`` to `--out` and prints
a table.

Usage::

    python experiments/benchmarks/online_letkf_scale.py            # n = 40, 400, 4000
    python experiments/benchmarks/online_letkf_scale.py --quick    # n = 40, 120
"""

import os

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
from hybridda.dynamics import Lorenz96, MonomialDynamics  # noqa: E402
from hybridda.filters import (  # noqa: E402
    LETKF,
    AugmentedModel,
    Localisation,
    Multiplicative,
    ParameterAugmentation,
)
from hybridda.observe import GaussianError, every_kth  # noqa: E402

FULL = {
    "sizes": [40, 400, 4000],
    "members": 20,
    "radius": 4.0,
    "cycles": 50,
    "dense_cycles": 5,
    "repeats": 3,
    "spin_up": 300,
}
QUICK = {
    "sizes": [40, 120],
    "members": 8,
    "radius": 2.0,
    "cycles": 6,
    "dense_cycles": 2,
    "repeats": 1,
    "spin_up": 100,
}
STENCIL = 2  # monomial stencil half-width: 18 coefficients


def _memory(compiled) -> dict:
    analysis = compiled.memory_analysis()
    if analysis is None:  # not reported by this backend
        return {}
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_output_bytes": int(
            analysis.argument_size_in_bytes + analysis.output_size_in_bytes
        ),
    }


def run_size(n: int, settings: dict, seed: int) -> dict:
    keys = jax.random.split(jax.random.key(seed), 5)
    truth_model = hybridda.Resolvent(Lorenz96(n=n, forcing=8.0), dt=0.05)
    observation = every_kth(n, 2, GaussianError(1.0))
    cycles = settings["cycles"]
    x_start = truth_model.dynamics.default_initial_state() + 0.1 * jax.random.normal(keys[0], (n,))
    x0 = jax.jit(hybridda.spin_up, static_argnums=2)(truth_model, x_start, settings["spin_up"])
    truth = jax.jit(hybridda.simulate, static_argnums=2)(truth_model, x0, cycles)[1:]
    y = hybridda.synthesise_observations(observation, truth, keys[1])
    true_coefficients = MonomialDynamics.lorenz96(n, 8.0, STENCIL).coefficients
    guess = true_coefficients + 0.05 * jax.random.normal(keys[2], true_coefficients.shape)
    model = AugmentedModel(
        hybridda.Resolvent(MonomialDynamics(n, guess, STENCIL), dt=0.05),
        where=lambda m: m.dynamics.coefficients,
    )
    states = hybridda.initial_ensemble(keys[3], x0, settings["members"], 1.0)
    Z0 = model.initial_ensemble(keys[4], states, 0.05)
    localisation = Localisation(settings["radius"])
    start = time.perf_counter()
    domains = localisation.local_domains(observation)
    domains_seconds = time.perf_counter() - start
    row = {"n": n, "observations": observation.obs_size, "local_observations": None}
    row["local_observations"] = int(domains.indices.shape[1])
    row["domains_seconds"] = domains_seconds
    for label, letkf_domains, k in (
        ("domains", domains, cycles),
        ("dense", None, settings["dense_cycles"]),
    ):
        method = ParameterAugmentation(LETKF(localisation, Multiplicative(1.02), letkf_domains))

        def chunk(Z, y_chunk, method=method):
            return hybridda.assimilate(model, observation, method, y_chunk, Z, keys[4])

        compile_start = time.perf_counter()
        compiled = jax.jit(chunk).lower(Z0, y[:k]).compile()
        compile_seconds = time.perf_counter() - compile_start
        trajectory = jax.block_until_ready(compiled(Z0, y[:k]))
        times = []
        for _ in range(settings["repeats"]):
            start = time.perf_counter()
            jax.block_until_ready(compiled(Z0, y[:k]))
            times.append(time.perf_counter() - start)
        result = {
            "cycles": k,
            "seconds_per_cycle": float(np.median(times)) / k,
            "compile_seconds": compile_seconds,
            **_memory(compiled),
        }
        if label == "dense":  # the same filter: the same analyses, to round-off
            first = row["domains"]["analysis_means"][:k]
            result["max_abs_difference_from_domains"] = float(
                np.max(np.abs(np.asarray(trajectory.analysis_mean) - first))
            )
            del row["domains"]["analysis_means"]
        if label == "domains":
            result["analysis_means"] = np.asarray(trajectory.analysis_mean)
            state_mean, coefficient_mean = model.split(trajectory.analysis_mean)
            result["analysis_rmse"] = float(jnp.sqrt(jnp.mean((state_mean - truth) ** 2)))
            result["coefficient_rmse_first_last"] = [
                float(jnp.sqrt(jnp.mean((coefficient_mean[i] - true_coefficients) ** 2)))
                for i in (0, -1)
            ]
        row[label] = result
    return row


def slopes(rows, label: str) -> dict:
    """Least-squares slope of log(cost) against log(n): 1 is linear growth."""
    sizes = np.log([row["n"] for row in rows])
    out = {}
    for name in ("seconds_per_cycle", "temp_bytes"):
        values = [row[label].get(name) for row in rows]
        if all(value and value > 0 for value in values):
            out[name] = float(np.polyfit(sizes, np.log(values), 1)[0])
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_online_letkf_scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="n = 40, 120 (for the tests)")
    parser.add_argument("--sizes", type=int, nargs="+", help="state sizes n (40 400 4000)")
    parser.add_argument("--members", type=int, help="ensemble size N (20)")
    parser.add_argument("--radius", type=float, help="localisation radius (4)")
    parser.add_argument("--cycles", type=int, help="cycles per timed chunk (50)")
    parser.add_argument("--dense-cycles", type=int, help="cycles of the dense LETKF (5)")
    parser.add_argument("--repeats", type=int, help="timed runs per size (3)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for name in ("sizes", "members", "radius", "cycles", "dense_cycles", "repeats"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if any(n <= 2 * STENCIL + 1 or n % 2 for n in settings["sizes"]):
        parser.error(f"--sizes must be even and > {2 * STENCIL + 1}, got {settings['sizes']}.")
    if settings["members"] < 2:
        parser.error(f"--members must be >= 2, got {settings['members']}.")
    if settings["radius"] <= 0:
        parser.error(f"--radius must be > 0, got {settings['radius']}.")
    return args, settings


def main(argv=None) -> dict:
    args, settings = parse_args(argv)
    from tqdm.auto import tqdm

    rows = [
        run_size(n, settings, args.seed)
        for n in tqdm(settings["sizes"], desc="state sizes", disable=None)
    ]
    record = {
        "settings": settings,
        "seed": args.seed,
        **machine(),
        "rows": rows,
        "slopes": {label: slopes(rows, label) for label in ("domains", "dense")},
    }
    write_results(
        args.out, "online_letkf_scale", record, {**settings, "seed": args.seed, "quick": args.quick}
    )
    print_table(record)
    return record


def print_table(record):
    s = record["settings"]
    print(machine_line(record))
    print(
        f"online augmented LETKF, Lorenz-96, every 2nd variable observed, N={s['members']}, "
        f"radius {s['radius']}, 18 monomial coefficients learnt"
    )
    print(
        f"{'n':>6} {'k':>4} {'ms/cycle':>9} {'temp MB':>8} {'dense ms':>9} {'dense MB':>9} "
        f"{'RMSE':>6} {'coef RMSE first->last':>22}"
    )
    for row in record["rows"]:
        local, dense = row["domains"], row["dense"]
        first, last = local["coefficient_rmse_first_last"]
        print(
            f"{row['n']:>6} {row['local_observations']:>4} "
            f"{local['seconds_per_cycle'] * 1e3:>9.2f} {local.get('temp_bytes', 0) / 1e6:>8.2f} "
            f"{dense['seconds_per_cycle'] * 1e3:>9.2f} {dense.get('temp_bytes', 0) / 1e6:>9.2f} "
            f"{local['analysis_rmse']:>6.3f} {first:>10.4f} -> {last:.4f}"
        )
    worst = max(row["dense"]["max_abs_difference_from_domains"] for row in record["rows"])
    print(f"dense vs local-domain analyses: max |difference| {worst:.1e}")
    for label, fitted in record["slopes"].items():
        text = ", ".join(f"{name} {value:.2f}" for name, value in fitted.items())
        print(f"log-log slope vs n ({label}): {text}")


if __name__ == "__main__":
    main()
