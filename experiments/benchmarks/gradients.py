"""Cost of differentiating through DA: gradient vs forward time, and peak memory.

Measures, on Lorenz-96 (n = 40, F = 8, Δt = 0.05, every variable observed with R = I):

- **(a) a 4D-Var window**: the strong-constraint cost ``J(x0)``
  (`hybridda.variational.StrongFourDVar`) over a window of `--window` cycles, against
  ``jax.grad(J)(x0)``.
- **(b) a cycled ETKF loss** (N = 24, inflation 1.02, `--cycles` = 100 cycles):
  ``hybridda.cycled_loss`` (kinds ``negative_log_likelihood`` and ``analysis_rmse``)
  against its gradient with respect to every floating-point leaf of the model and the
  method (`eqx.filter_grad` over ``(model, method)``: forcing and inflation). Both are
  compiled first; times are medians (and minima) of `--repeats` runs of the compiled
  functions, forward and gradient timed in alternation.
- **Peak memory** of the gradient for K = `--memory-cycles` (100 and 1000), with
  ``checkpoint=None`` and ``checkpoint=B`` (`--block`), two ways:

  1. XLA's own accounting of the compiled gradient
     (``jax.jit(grad).lower(...).compile().memory_analysis()``): the temporary buffers
     (everything the backward pass keeps alive, the rematerialisation's block included)
     plus arguments and outputs. Exact for the buffers the program allocates;
     independent of allocator and compiler noise.
  2. The resident set of a fresh process (``python gradients.py --child ...``): after
     compiling and one warm-up run, the kernel's peak-RSS counter is reset
     (``/proc/self/clear_refs``), one gradient runs, and ``VmHWM`` - ``VmRSS`` before the
     run is the peak growth during that run. The lifetime peak (``ru_maxrss``, which
     includes JAX itself and XLA's compiler) is recorded too.

Writes ``gradients.json``, ``metrics.json`` (the same record) and ``config.json`` to
`--out` and prints a table.

Usage::

    python experiments/benchmarks/gradients.py                # the numbers of the issue
    python experiments/benchmarks/gradients.py --quick        # small, < 1 min, no RSS
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hybridda  # noqa: E402
from hybridda.dynamics import Lorenz96  # noqa: E402
from hybridda.filters import ETKF, Multiplicative  # noqa: E402
from hybridda.filters._util import inverse_sqrt_spd  # noqa: E402
from hybridda.observe import GaussianError, full_observation  # noqa: E402

FULL = {
    "n": 40,
    "ensemble_size": 24,
    "cycles": 100,
    "memory_cycles": [100, 1000],
    "block": 10,
    "window": 10,
    "repeats": 50,
    "kinds": ["negative_log_likelihood", "analysis_rmse"],
    "memory_plain": True,
}
QUICK = {
    "n": 10,
    "ensemble_size": 8,
    "cycles": 20,
    "memory_cycles": [20, 200],
    "block": 5,
    "window": 5,
    "repeats": 5,
    "kinds": ["negative_log_likelihood"],
    "memory_plain": False,
}


# ------------------------------------------------------------------------ problem

_spin_up = eqx.filter_jit(hybridda.spin_up)
_simulate = eqx.filter_jit(hybridda.simulate)
_synthesise = eqx.filter_jit(hybridda.synthesise_observations)


def make_problem(n: int, ensemble_size: int, cycles: int, seed: int = 0):
    """Truth, observations, first-guess ensemble and the ETKF for a K-cycle twin."""
    keys = jax.random.split(jax.random.key(seed), 4)
    model = hybridda.Resolvent(Lorenz96(n=n, forcing=8.0), dt=0.05)
    x_start = model.dynamics.default_initial_state() + 0.1 * jax.random.normal(keys[0], (n,))
    x0 = _spin_up(model, x_start, 1000)
    truth = _simulate(model, x0, cycles)[1:]
    observation = full_observation(n, GaussianError(1.0))
    y = _synthesise(observation, truth, keys[1])
    E0 = hybridda.initial_ensemble(keys[2], x0, ensemble_size, 1.0)
    method = ETKF(inflation=Multiplicative(1.02))
    return {
        "model": model,
        "method": method,
        "observation": observation,
        "truth": truth,
        "y": y,
        "E0": E0,
        "key": keys[3],
        "x0": x0,
    }


def loss_function(problem, kind: str, checkpoint: int | None):
    """``loss((model, method), data)``: `cycled_loss` with the observations, truth and
    first guess in `data` (arguments, not constants baked into the compiled program)."""

    def loss(parts, data):
        model, method = parts
        return hybridda.cycled_loss(
            model,
            problem["observation"],
            method,
            data["y"],
            data["E0"],
            problem["key"],
            kind=kind,
            truth=data["truth"],
            checkpoint=checkpoint,
        )

    return loss


def data_of(problem) -> dict:
    return {name: problem[name] for name in ("y", "truth", "E0")}


def time_forward_and_gradient(forward, gradient, *args, repeats: int) -> dict:
    """Seconds per call of two compiled functions, timed in alternation (so that slow
    phases of a shared machine hit both): medians and minima over `repeats` rounds."""
    jax.block_until_ready(forward(*args))  # compile + warm up
    jax.block_until_ready(gradient(*args))
    times = {"forward": [], "gradient": []}
    for _ in range(repeats):
        for name, function in (("forward", forward), ("gradient", gradient)):
            start = time.perf_counter()
            jax.block_until_ready(function(*args))
            times[name].append(time.perf_counter() - start)
    forward_s, gradient_s = (float(np.median(times[name])) for name in ("forward", "gradient"))
    return {
        "forward_seconds": forward_s,
        "gradient_seconds": gradient_s,
        "ratio": gradient_s / forward_s,
        "forward_min_seconds": float(np.min(times["forward"])),
        "gradient_min_seconds": float(np.min(times["gradient"])),
        "ratio_of_minima": float(np.min(times["gradient"]) / np.min(times["forward"])),
    }


# ------------------------------------------------------- (a) a 4D-Var window


def time_fourdvar_window(settings, repeats: int) -> dict | None:
    """Forward ``J(x0)`` vs ``jax.grad(J)(x0)`` for strong 4D-Var over one window.

    ---- HOOK (a): 4D-Var window. Uses `hybridda.variational.StrongFourDVar` when it
    exists (``cost = StrongFourDVar(model, observation, y (L, p), background (n,),
    background_covariance (n, n)); cost(x0) -> scalar``); returns None otherwise. Owners
    of the variational package may refine the setting (window length, B) here. ----
    """
    cost_class = getattr(hybridda.variational, "StrongFourDVar", None)
    if cost_class is None:
        return None
    window = settings["window"]
    problem = make_problem(settings["n"], 2, window)
    n = settings["n"]
    climate = _simulate(problem["model"], problem["x0"], 2000)
    B = 0.05 * hybridda.variational.climatological_covariance(climate)
    background = problem["x0"] + 0.3 * jax.random.normal(jax.random.key(11), (n,))
    cost = cost_class(
        model=problem["model"],
        observation=problem["observation"],
        y=problem["y"],
        background=background,
        background_covariance=B,
    )
    forward = eqx.filter_jit(lambda cost, x: cost(x))
    gradient = eqx.filter_jit(lambda cost, x: jax.grad(cost)(x))
    timing = time_forward_and_gradient(forward, gradient, cost, background, repeats=repeats)
    return {"window_cycles": window, **timing}


# ----------------------------------------------------- (b) a cycled ETKF loss


def time_cycled_loss(settings, repeats: int) -> dict:
    problem = make_problem(settings["n"], settings["ensemble_size"], settings["cycles"])
    parts, data = (problem["model"], problem["method"]), data_of(problem)
    results = {}
    for kind in settings["kinds"]:
        row = {}
        for label, checkpoint in (("plain", None), ("checkpoint", settings["block"])):
            loss = loss_function(problem, kind, checkpoint)
            forward = eqx.filter_jit(loss)
            gradient = eqx.filter_jit(eqx.filter_grad(loss))
            timing = time_forward_and_gradient(forward, gradient, parts, data, repeats=repeats)
            grads = gradient(parts, data)
            row[label] = {
                **timing,
                "value": float(forward(parts, data)),
                "gradient_forcing": float(grads[0].dynamics.forcing),
                "gradient_inflation": float(grads[1].inflation.factor),
            }
        plain, blocked = row["plain"], row["checkpoint"]
        row["checkpoint_value_bitwise_equal"] = plain["value"] == blocked["value"]
        row["checkpoint_gradient_max_rel_diff"] = max(
            abs(blocked[name] / plain[name] - 1)
            for name in ("gradient_forcing", "gradient_inflation")
        )
        results[kind] = row
    return results


def time_square_root_derivative(settings, repeats: int) -> dict:
    """What the ETKF's gradient adds per cycle: the derivative of ``C^{-1/2}``.

    The forward pass computes ``C^{-1/2}`` (N × N) by Newton-Schulz products; its
    derivative (`hybridda.filters._util`) solves a Lyapunov equation, again by products.
    Timed here for `cycles` matrices: the forward alone, and the forward with one
    directional derivative (`jax.jvp`), to compare with the forward pass.
    """
    N, cycles = settings["ensemble_size"], settings["cycles"]
    S = jax.random.normal(jax.random.key(3), (cycles, N, settings["n"]))
    C = S @ jnp.swapaxes(S, 1, 2) + (N - 1) * jnp.eye(N)[None, :, :]
    dC = jax.random.normal(jax.random.key(4), C.shape)
    dC = dC + jnp.swapaxes(dC, 1, 2)

    def root(c):
        return inverse_sqrt_spd(c, N - 1.0)

    newton_schulz = jax.jit(lambda C, dC: jax.lax.map(root, C))
    with_derivative = jax.jit(
        lambda C, dC: jax.lax.map(lambda a: jax.jvp(root, a[:1], a[1:]), (C, dC))
    )
    timing = time_forward_and_gradient(newton_schulz, with_derivative, C, dC, repeats=repeats)
    return {
        "matrices": cycles,
        "size": N,
        "newton_schulz_seconds": timing["forward_seconds"],
        "with_derivative_seconds": timing["gradient_seconds"],
    }


# ------------------------------------------------------------- peak memory


def compiled_memory(problem, checkpoint: int | None) -> dict:
    """XLA's buffer accounting for the compiled gradient of the ETKF loss."""
    loss = loss_function(problem, "negative_log_likelihood", checkpoint)
    parts = (problem["model"], problem["method"])
    dynamic, static = eqx.partition(parts, eqx.is_array)

    def gradient(dynamic, data):
        return eqx.filter_grad(loss)(eqx.combine(dynamic, static), data)

    compiled = jax.jit(gradient).lower(dynamic, data_of(problem)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:  # not reported by this backend
        return {}
    temp = int(analysis.temp_size_in_bytes)
    arguments = int(analysis.argument_size_in_bytes)
    outputs = int(analysis.output_size_in_bytes)
    return {
        "temp_bytes": temp,
        "argument_bytes": arguments,
        "output_bytes": outputs,
        "total_bytes": temp + arguments + outputs,
    }


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def child(settings_json: str, cycles: int, block: int | None) -> dict:
    """Run in a fresh process: peak RSS of one gradient of the K-cycle ETKF loss."""
    settings = json.loads(settings_json)
    problem = make_problem(settings["n"], settings["ensemble_size"], cycles)
    loss = loss_function(problem, "negative_log_likelihood", block)
    parts, data = (problem["model"], problem["method"]), data_of(problem)
    gradient = eqx.filter_jit(eqx.filter_grad(loss))
    jax.block_until_ready(gradient(parts, data))  # compile + warm up
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    jax.block_until_ready(gradient(parts, data))
    peak = _status_kib("VmHWM")
    return {
        "rss_before_kib": before,
        "rss_peak_during_run_kib": peak if reset else None,
        "rss_growth_during_run_kib": (peak - before) if reset and peak and before else None,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def subprocess_memory(settings, cycles: int, block: int | None) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(settings),
        str(cycles),
        "none" if block is None else str(block),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(settings, rss: bool) -> list[dict]:
    rows = []
    for cycles in settings["memory_cycles"]:
        problem = make_problem(settings["n"], settings["ensemble_size"], cycles)
        for block in ([None] if settings["memory_plain"] else []) + [settings["block"]]:
            row = {"cycles": cycles, "checkpoint": block, **compiled_memory(problem, block)}
            if rss:
                row.update(subprocess_memory(settings, cycles, block))
            rows.append(row)
    return rows


# -------------------------------------------------------------------- driver


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_gradients"))
    parser.add_argument("--seed", type=int, default=0, help="(problems use fixed keys)")
    parser.add_argument("--quick", action="store_true", help="small problem, no RSS (< 1 min)")
    parser.add_argument("--cycles", type=int, help="cycles of the timed ETKF loss (100)")
    parser.add_argument("--block", type=int, help="checkpoint block size B (10)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (50)")
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess RSS runs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        settings_json, cycles, block = args.child
        record = child(settings_json, int(cycles), None if block == "none" else int(block))
        print(json.dumps(record))
        return record
    settings = dict(QUICK if args.quick else FULL)
    for name in ("cycles", "block", "repeats"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    rss = not (args.quick or args.no_rss)

    from tqdm.auto import tqdm

    with tqdm(total=4, desc="gradient benchmark", disable=not sys.stderr.isatty()) as bar:
        fourdvar = time_fourdvar_window(settings, settings["repeats"])
        bar.update()
        cycled = time_cycled_loss(settings, settings["repeats"])
        bar.update()
        square_root = time_square_root_derivative(settings, settings["repeats"])
        bar.update()
        memory = measure_memory(settings, rss)
        bar.update()

    small, large = settings["memory_cycles"]

    def ratio(field, block):
        rows = {r["cycles"]: r for r in memory if r["checkpoint"] == block}
        if not rows:
            return None
        a, b = rows[small].get(field), rows[large].get(field)
        return None if not a or b is None else b / a

    record = {
        "settings": settings,
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "fourdvar_window": fourdvar,
        "cycled_etkf_loss": cycled,
        "square_root_derivative": square_root,
        "memory": memory,
        "memory_ratio_large_over_small": {
            "checkpoint_total_bytes": ratio("total_bytes", settings["block"]),
            "checkpoint_temp_bytes": ratio("temp_bytes", settings["block"]),
            "plain_total_bytes": ratio("total_bytes", None),
            "checkpoint_rss_growth": ratio("rss_growth_during_run_kib", settings["block"]),
            "checkpoint_ru_maxrss": ratio("ru_maxrss_kib", settings["block"]),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    (args.out / "gradients.json").write_text(text)
    (args.out / "metrics.json").write_text(text)
    (args.out / "config.json").write_text(json.dumps({**settings, "quick": args.quick}, indent=2))
    print_table(record)
    return record


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:8.2f}"


def print_table(record):
    settings = record["settings"]
    print(f"device: {record['device']} ({record['cpu_count']} CPUs), jax {record['jax']}")
    fourdvar = record["fourdvar_window"]
    if fourdvar is None:
        print("(a) 4D-Var window: StrongFourDVar not available")
    else:
        print(
            f"(a) strong 4D-Var, window of {fourdvar['window_cycles']} cycles: J "
            f"{fourdvar['forward_seconds'] * 1e3:.3f} ms, grad J "
            f"{fourdvar['gradient_seconds'] * 1e3:.3f} ms, ratio {fourdvar['ratio']:.2f}"
        )
    print(
        f"(b) cycled ETKF loss, K={settings['cycles']}, n={settings['n']}, "
        f"N={settings['ensemble_size']} (B={settings['block']} when checkpointed)"
    )
    print(
        f"    {'kind':<25} {'mode':<11} {'forward ms':>10} {'grad ms':>9} {'ratio':>6} "
        f"{'ratio of minima':>15}"
    )
    for kind, row in record["cycled_etkf_loss"].items():
        for mode in ("plain", "checkpoint"):
            r = row[mode]
            print(
                f"    {kind:<25} {mode:<11} {r['forward_seconds'] * 1e3:10.2f} "
                f"{r['gradient_seconds'] * 1e3:9.2f} {r['ratio']:6.2f} {r['ratio_of_minima']:15.2f}"
            )
        print(
            f"    checkpointed value bitwise equal: {row['checkpoint_value_bitwise_equal']}; "
            f"gradient max rel. diff {row['checkpoint_gradient_max_rel_diff']:.1e}"
        )
    root = record["square_root_derivative"]
    print(
        f"    per {root['matrices']} cycles, {root['size']}×{root['size']}: C^(-1/2) by "
        f"Newton-Schulz {root['newton_schulz_seconds'] * 1e3:.2f} ms (forward), "
        f"{root['with_derivative_seconds'] * 1e3:.2f} ms with its derivative (Lyapunov solve)"
    )
    print("peak memory of the gradient (negative log-likelihood), MiB")
    print(
        f"    {'K':>5} {'checkpoint':>10} {'XLA temp':>9} {'XLA total':>9} "
        f"{'RSS growth':>10} {'ru_maxrss':>9}"
    )
    for row in record["memory"]:
        growth = row.get("rss_growth_during_run_kib")
        maxrss = row.get("ru_maxrss_kib")
        print(
            f"    {row['cycles']:>5} {str(row['checkpoint']):>10} {_mib(row.get('temp_bytes'))} "
            f"{_mib(row.get('total_bytes'))}   {_mib(None if growth is None else growth * 1024)}"
            f" {_mib(None if maxrss is None else maxrss * 1024)}"
        )
    ratios = record["memory_ratio_large_over_small"]
    shown = ", ".join(f"{name} {value:.2f}" for name, value in ratios.items() if value is not None)
    print(f"    K={settings['memory_cycles'][1]} / K={settings['memory_cycles'][0]}: {shown}")
    if not all(math.isfinite(v) for v in ratios.values() if v is not None):
        print("    (non-finite ratio)")


if __name__ == "__main__":
    main(sys.argv[1:])
