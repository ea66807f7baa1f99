"""Yu et al. (2025): ensembles of wildfire spread from a conditional diffusion model.

Reproduces, on data generated here, the comparison of *A probabilistic approach to
wildfire spread prediction using a denoising diffusion surrogate model* (Yu, Ghosh,
Finn et al., 2025): a conditional diffusion model samples ensembles of the burnt area
some steps ahead, a deterministic network of the same size gives one prediction, and
both are scored against the stochastic fire model's own ensembles.

- Fire model: `hybridda.dynamics.FireSpread`, the stochastic cellular automaton of
  Alexandridis et al. (2008) (Moore neighbourhood; ignition probability from fuel,
  terrain slope and wind), on random landscapes (`random_landscape`: vegetation type
  and density, non-burnable patches, smooth terrain, uniform wind of random speed and
  direction) from one random ignition (`random_ignition`).
- Data: runs of the automaton; a pair is the state after ``age`` steps (``age``
  uniform in ``[min_age, max_age]``) and the burnt area (burning or burnt cells)
  ``lead`` steps later. The condition (7 channels): burning and burnt masks, fuel
  factor, the two components of the terrain gradient, the two wind components.
- Diffusion: `hybridda.generative.Diffusion` (cosine schedule, v-prediction) with a
  `hybridda.nn.UNet` (zero padding; the condition as extra input channels), the target
  ``2 · area − 1`` in {-1, 1}; trained by `fit_diffusion` (EMA weights, Orbax
  checkpoints, ``--resume``); ensembles by DDIM sampling, thresholded at 0.
- Deterministic surrogate: the same U-Net (same parameters) fed zeros for the noisy
  state and time: a map of the condition to ``2 p − 1``, trained by the mean squared
  error to the same targets (through `fit_diffusion` with x0-prediction, whose loss is
  then exactly that MSE). Read as a probability ``p`` (clipped to [0, 1]) and as a
  binary prediction ``p > 0.5``.
- Both surrogates' outputs are united with the current burnt area (burnt cells stay
  burnt, known to any user of the model).
- Evaluation on new landscapes: from each test state `ca_members` realisations of the
  automaton (the truth's distribution). Scores over all cells of all test cases: Brier
  score of the burnt probability, CRPS per cell (for binary members it equals the
  Brier score of the members' fraction), CRPS of the total burnt area, spread-skill
  ratio ``spread / RMSE(mean) · sqrt((N+1)/N)`` (1 for a reliable N-member
  ensemble), the reliability diagram and its reliability term (Murphy 1973). The
  reference: an independent CA ensemble of the same size as the diffusion ensemble
  (the best any N-member ensemble can do).

Outputs: ``metrics.json``, ``config.json``, ``yu2025_ca_example.png``,
``yu2025_samples.png``, ``yu2025_probability_maps.png``, ``yu2025_reliability.png``,
and a table of the scores.

Usage::

    python paper/yu2025_wildfire_diffusion.py --quick     # 16 x 16, tiny nets (< 1 min)
    python paper/yu2025_wildfire_diffusion.py             # 24 x 24
    python paper/yu2025_wildfire_diffusion.py --resume    # continue the training
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jaxtyping import Array, Float  # noqa: E402

from hybridda import metrics  # noqa: E402
from hybridda.checkpoint import has_checkpoint  # noqa: E402
from hybridda.dynamics import (  # noqa: E402
    FireSpread,
    burnt_area,
    random_ignition,
    random_landscape,
)
from hybridda.dynamics.wildfire import BURNING, BURNT  # noqa: E402
from hybridda.generative import (  # noqa: E402
    DDIM,
    CosineSchedule,
    Diffusion,
    VPrediction,
    X0Prediction,
    fit_diffusion,
    sample,
)
from hybridda.nn import UNet  # noqa: E402

CONDITION_CHANNELS = 7
METHODS = ("diffusion", "deterministic-probability", "deterministic-binary", "ca-reference")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (written to config.json)."""

    grid: int = 24
    correlation_length: float = 3.0  # of the landscape fields, in cells
    relief: float = 40.0  # elevation std (m), cells of 30 m
    max_wind_speed: float = 8.0  # m/s
    nonburnable_fraction: float = 0.1
    lead: int = 4  # automaton steps between condition and target
    min_age: int = 2  # automaton steps since ignition of the condition state
    max_age: int = 8
    train_runs: int = 2000
    pairs_per_run: int = 2
    test_cases: int = 48
    ca_members: int = 64  # realisations of the automaton per test case (the truth)
    ensemble_size: int = 16  # diffusion members per test case
    widths: tuple[int, ...] = (12, 24)
    time_features: int = 16
    # Each network. At 1500 steps the diffusion ensembles were calibrated but not sharp:
    # per-cell CRPS +1 % / -9 % against the deterministic map (seeds 0 / 1); at 4500 both
    # networks are sharper and the diffusion wins on both seeds (paper/README.md).
    training_steps: int = 4500
    batch_size: int = 16
    learning_rate: float = 2e-3
    ema_decay: float = 0.995
    checkpoint_every: int = 250
    sampler_steps: int = 16  # DDIM (η = 0)
    bins: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.grid < 8 or self.grid % 2 ** (len(self.widths) - 1):
            raise ValueError(
                f"`--grid` must be >= 8 and divisible by {2 ** (len(self.widths) - 1)}, "
                f"got {self.grid}."
            )
        if not 1 <= self.min_age <= self.max_age:
            raise ValueError("Need 1 <= min_age <= max_age.")
        if self.lead < 1:
            raise ValueError(f"`--lead` must be >= 1 automaton step, got {self.lead}.")
        if self.ensemble_size < 2 or self.ca_members < 2:
            raise ValueError("`--ensemble-size` and `--ca-members` must be >= 2.")


QUICK = {
    "grid": 16,
    "correlation_length": 2.5,
    "lead": 3,
    "max_age": 6,
    "train_runs": 256,
    "pairs_per_run": 1,
    "test_cases": 8,
    "ca_members": 24,
    "ensemble_size": 6,
    "widths": (4, 8),
    "time_features": 8,
    "training_steps": 40,
    "batch_size": 16,
    "learning_rate": 5e-3,
    "ema_decay": 0.8,
    "checkpoint_every": 40,
    "sampler_steps": 4,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="landscapes, networks and noise")
    parser.add_argument("--out", type=Path, default=Path("runs/yu2025"))
    parser.add_argument("--quick", action="store_true", help="16 x 16, tiny networks (< 1 min)")
    parser.add_argument("--resume", action="store_true", help="continue the trainings")
    parser.add_argument("--grid", type=int, help="grid size (24; quick 16)")
    parser.add_argument("--lead", type=int, help="automaton steps ahead (4; quick 3)")
    parser.add_argument("--training-steps", type=int, help="optimiser steps per network")
    parser.add_argument("--train-runs", type=int, help="automaton runs for training")
    parser.add_argument("--test-cases", type=int, help="test states")
    parser.add_argument("--ensemble-size", type=int, help="diffusion members per test state")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------- data


def condition_fields(fire: FireSpread, state, config: Config) -> Float[Array, "channels ny nx"]:
    """The network's condition: burning, burnt, fuel / 2, terrain gradient (dE/dx,
    dE/dy, as tangents of the slope), wind components / max speed; float32."""
    gradient_y, gradient_x = jnp.gradient(fire.elevation, fire.cell_size)
    ones = jnp.ones_like(fire.fuel)
    wind_scale = fire.wind_speed / config.max_wind_speed
    fields = [
        (state == BURNING).astype(float),
        (state == BURNT).astype(float),
        fire.fuel / 2.0,
        gradient_x,
        gradient_y,
        wind_scale * jnp.cos(fire.wind_direction) * ones,
        wind_scale * jnp.sin(fire.wind_direction) * ones,
    ]
    return jnp.stack(fields).astype(jnp.float32)


def _landscape(config: Config, key) -> FireSpread:
    return random_landscape(
        key,
        (config.grid, config.grid),
        correlation_length=config.correlation_length,
        relief=config.relief,
        nonburnable_fraction=config.nonburnable_fraction,
        max_wind_speed=config.max_wind_speed,
    )


def _runs(config: Config, key, runs: int):
    """`runs` landscapes, their ignition and their trajectories to max_age + lead."""
    keys = jax.random.split(key, 3 * runs).reshape(runs, 3)
    fires = jax.vmap(lambda k: _landscape(config, k))(keys[:, 0])
    states = jax.vmap(random_ignition)(keys[:, 1], fires)
    steps = config.max_age + config.lead
    trajectories = jax.vmap(lambda f, s, k: f.trajectory(s, k, steps))(fires, states, keys[:, 2])
    return fires, trajectories


def _pick(config: Config, fires, trajectories, key, pairs: int):
    """States of random age from each run, their conditions and the later burnt area."""
    runs = trajectories.shape[0]
    ages = jax.random.randint(key, (runs * pairs,), config.min_age, config.max_age + 1)
    ages = ages.reshape(runs, pairs)  # drawn flat: multi-dimensional draws compile slowly
    rows = jnp.arange(runs)[:, None]
    current = trajectories[rows, ages]  # (runs, pairs, ny, nx)
    later = burnt_area(trajectories[rows, ages + config.lead])
    conditions = jax.vmap(
        lambda f, states: jax.vmap(lambda s: condition_fields(f, s, config))(states)
    )(fires, current)
    return current, conditions, later


@functools.partial(jax.jit, static_argnums=(0,))
def make_data(config: Config, key):
    """Training pairs and test cases from `train_runs + test_cases` automaton runs.

    Training: conditions (M, 7, ny, nx) and targets ``2 · area − 1`` (M, ny, nx),
    float32. Test: the landscapes, the test states, their conditions, and the
    automaton's own ensembles from those states: `ca_members` realisations (the truth)
    and an independent one of `ensemble_size` (the reference forecast)."""
    run_key, pick_key, ca_key = jax.random.split(key, 3)
    runs = config.train_runs + config.test_cases
    fires, trajectories = _runs(config, run_key, runs)
    current, conditions, later = _pick(config, fires, trajectories, pick_key, config.pairs_per_run)
    train, test = slice(0, config.train_runs), slice(config.train_runs, runs)
    shape = (config.grid, config.grid)
    train_conditions = conditions[train].reshape(-1, CONDITION_CHANNELS, *shape)
    targets = (2.0 * later[train].reshape(-1, *shape) - 1.0).astype(jnp.float32)
    test_fires = jax.tree.map(lambda a: a[test], fires)
    test_current, test_conditions = current[test, 0], conditions[test, 0]
    members = config.ca_members + config.ensemble_size
    keys = jax.random.split(ca_key, config.test_cases)
    realisations = jax.vmap(lambda f, s, k: f.ensemble(s, k, members, config.lead))(
        test_fires, test_current, keys
    )
    areas = burnt_area(realisations)
    truths, reference = areas[:, : config.ca_members], areas[:, config.ca_members :]
    test = (test_fires, test_current, test_conditions, truths, reference, trajectories[test][0])
    return train_conditions, targets, test


# ----------------------------------------------------------------------- networks


class ConditionOnly(eqx.Module):
    """A U-Net that sees only the condition: ``network(x_t, t, c) = unet(0, 0, c)``.

    Inside a [`Diffusion`][] with x0-prediction the denoising loss is then the mean
    squared error of ``unet(0, 0, c)`` to the target: a deterministic regression with
    the same network (and parameter count) as the diffusion model."""

    unet: UNet

    def __call__(self, x_t, t, condition):
        return self.unet(jnp.zeros_like(x_t), jnp.zeros_like(t), condition)


@eqx.filter_jit  # one compiled initialisation instead of one per random draw
def build_unet(config: Config, key) -> UNet:
    return UNet(
        2,
        1,
        1,
        condition_channels=CONDITION_CHANNELS,
        widths=config.widths,
        time_features=config.time_features,
        padding="zero",
        key=key,
        dtype=jnp.float32,
    )


def parameter_count(module) -> int:
    return int(sum(a.size for a in jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))))


@functools.lru_cache
def _schedule(learning_rate: float, steps: int):
    # One object per setting, so both trainings and a resumed run share it.
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(1, steps // 20), steps, learning_rate * 0.02
    )


def train(name: str, diffusion: Diffusion, targets, conditions, key, config: Config, args):
    directory = args.out / "checkpoints" / name
    tic = time.perf_counter()
    fit = fit_diffusion(
        diffusion,
        targets,
        conditions,
        key=key,
        steps=config.training_steps,
        batch_size=config.batch_size,
        learning_rate=_schedule(config.learning_rate, config.training_steps),
        ema_decay=config.ema_decay,
        checkpoint_dir=directory,
        checkpoint_every=min(config.checkpoint_every, config.training_steps),
        resume=args.resume and has_checkpoint(directory),
        config={"name": name, "learning_rate": config.learning_rate},
        progress=not args.no_progress,
    )
    losses = fit.losses
    tail = max(1, config.training_steps // 20)
    summary = {
        "steps": config.training_steps,
        "loss_first": float(losses[:tail].mean()),
        "loss_last": float(losses[-tail:].mean()),
        "seconds": time.perf_counter() - tic,
    }
    return fit.ema, summary


@eqx.filter_jit
def diffusion_ensembles(diffusion, conditions, current_area, key, members, steps):
    """``members`` DDIM samples per test case, thresholded at 0, united with the
    current burnt area: (cases, members, ny, nx) booleans (`lax.map` over cases)."""
    sampler = DDIM(steps=steps)
    keys = jax.random.split(key, (conditions.shape[0], members))

    def one_case(inputs):
        condition, area, case_keys = inputs

        def one(k):
            x = sample(diffusion, sampler, k, shape=area.shape, condition=condition,
                       dtype=jnp.float32)  # fmt: skip
            return (x > 0) | area

        return jax.vmap(one)(case_keys)

    return jax.lax.map(one_case, (conditions, current_area, keys))


@eqx.filter_jit
def deterministic_probability(network: ConditionOnly, conditions, current_area):
    """The deterministic surrogate's ``p = (output + 1) / 2`` in [0, 1]; 1 where burnt."""
    zero = jnp.zeros(current_area.shape[1:], jnp.float32)
    output = jax.vmap(lambda c: network(zero, jnp.float32(0.0), c))(conditions)
    return jnp.where(current_area, 1.0, jnp.clip((output + 1.0) / 2.0, 0.0, 1.0))


# ----------------------------------------------------------------------- scores


def scores(members, truths, bins: int) -> dict:
    """Scores of an ensemble (cases, N, ny, nx) in [0, 1] against the automaton's
    realisations (cases, M, ny, nx) booleans: all cells of all cases pooled."""
    arrays = _score_arrays(jnp.asarray(members, float), jnp.asarray(truths, float), bins)
    diagram = arrays.pop("diagram")
    out = {name: float(value) for name, value in arrays.items()}
    out["diagram"] = {
        "bin_edges": np.asarray(diagram.bin_edges).tolist(),
        "forecast_probability": _nan_to_none(diagram.forecast_probability),
        "observed_frequency": _nan_to_none(diagram.observed_frequency),
        "counts": np.asarray(diagram.counts).tolist(),
    }
    return out


@functools.partial(jax.jit, static_argnums=(2,))
def _score_arrays(members, truths, bins: int) -> dict:
    cases, size = members.shape[:2]
    flat = members.reshape(cases, size, -1)
    truth_flat = truths.reshape(cases, truths.shape[1], -1)
    probability = flat.mean(axis=1)  # (cases, cells)
    frequency = truth_flat.mean(axis=1)
    out = {}
    broadcast = jnp.broadcast_to(probability[:, None], truth_flat.shape)
    out["brier"] = metrics.brier_score(broadcast, truth_flat)
    # CRPS per cell: the ensemble's empirical CRPS against each realisation, averaged.
    crps = jax.lax.map(lambda truth: metrics.crps(flat, truth), jnp.moveaxis(truth_flat, 1, 0))
    out["crps"] = jnp.mean(crps)
    # Total burnt area (cells): CRPS against each realisation's area.
    area = flat.sum(axis=-1)  # (cases, N)
    truth_area = truth_flat.sum(axis=-1)  # (cases, M)
    area_crps = jax.vmap(lambda truth: metrics.crps(area[:, :, None], truth[:, None]), 1)(
        truth_area
    )
    out["crps_area"] = jnp.mean(area_crps)
    # Spread-skill: sqrt((N+1)/N) spread / RMSE of the ensemble mean against each truth
    # (1 for a reliable ensemble); a single member has no spread.
    inflate = math.sqrt((size + 1) / size)
    zero = jnp.zeros(())
    spread = jnp.sqrt(jnp.mean(metrics.spread(flat) ** 2)) if size > 1 else zero
    skill = jnp.sqrt(jnp.mean((probability[:, None] - truth_flat) ** 2))
    out["spread"], out["rmse_mean"] = spread, skill
    out["spread_skill"] = inflate * spread / skill if size > 1 else zero
    area_spread = jnp.sqrt(jnp.mean(jnp.var(area, axis=1, ddof=1))) if size > 1 else zero
    area_rmse = jnp.sqrt(jnp.mean((area.mean(axis=1)[:, None] - truth_area) ** 2))
    out["area_spread"], out["area_rmse_mean"] = area_spread, area_rmse
    out["area_spread_skill"] = inflate * area_spread / area_rmse if size > 1 else zero
    diagram = metrics.reliability_diagram(probability, frequency, bins)
    out["reliability"] = diagram.reliability()
    out["diagram"] = diagram
    return out


def _nan_to_none(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values)]


def point_scores(probability, truths, bins: int) -> dict:
    """Scores of a deterministic map (cases, ny, nx) in [0, 1] as a point forecast
    (CRPS = mean absolute error; no spread) and, for Brier/reliability, a probability."""
    return scores(probability[:, None], truths, bins)


# ----------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    changes = dict(QUICK) if args.quick else {}
    for name in ("grid", "lead", "training_steps", "train_runs", "test_cases", "ensemble_size"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    try:
        config = Config(seed=args.seed, **changes)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    started = time.perf_counter()
    timings = {}
    root = jax.random.key(config.seed)
    k_data, k_nets, k_fit, k_sample = jax.random.split(root, 4)

    tic = time.perf_counter()
    conditions, targets, test = make_data(config, k_data)
    conditions, targets = np.asarray(conditions), np.asarray(targets)
    fires, current, test_conditions, truths, reference, example_trajectory = test
    current_area = burnt_area(current)
    timings["data"] = time.perf_counter() - tic

    k_unet, k_unet_det = jax.random.split(k_nets)
    diffusion = Diffusion(build_unet(config, k_unet), CosineSchedule(), VPrediction())
    deterministic = Diffusion(ConditionOnly(build_unet(config, k_unet_det)),
                              CosineSchedule(), X0Prediction())  # fmt: skip
    k_fit_diffusion, k_fit_det = jax.random.split(k_fit)
    try:
        diffusion, diffusion_training = train(
            "diffusion", diffusion, targets, conditions, k_fit_diffusion, config, args
        )
        deterministic, deterministic_training = train(
            "deterministic", deterministic, targets, conditions, k_fit_det, config, args
        )
    except FileExistsError as error:  # checkpoints of an earlier run in --out
        raise SystemExit(str(error)) from error

    from tqdm.auto import tqdm

    tic = time.perf_counter()
    chunks = max(1, math.ceil(config.test_cases / 16))
    bar = tqdm(total=config.test_cases, desc="diffusion ensembles", disable=args.no_progress)
    samples = []
    for index, rows in enumerate(np.array_split(np.arange(config.test_cases), chunks)):
        samples.append(diffusion_ensembles(
            diffusion, test_conditions[rows], current_area[rows],
            jax.random.fold_in(k_sample, index), config.ensemble_size, config.sampler_steps,
        ))  # fmt: skip
        bar.update(len(rows))
    bar.close()
    samples = jnp.concatenate(samples)
    timings["diffusion_sampling"] = time.perf_counter() - tic
    probability = deterministic_probability(deterministic.network, test_conditions, current_area)
    binary = (probability > 0.5).astype(float)

    tic = time.perf_counter()
    results = {
        "diffusion": scores(samples, truths, config.bins),
        "deterministic-probability": point_scores(probability, truths, config.bins),
        "deterministic-binary": point_scores(binary, truths, config.bins),
        "ca-reference": scores(reference, truths, config.bins),
    }
    timings["scores"] = time.perf_counter() - tic
    samples_np = np.asarray(samples)
    sample_values = {
        "binary": bool(np.all((samples_np == 0) | (samples_np == 1))),
        "contain_current_area": bool(np.all(samples_np >= np.asarray(current_area)[:, None])),
        "mean_burnt_cells": float(samples_np.sum(axis=(-2, -1)).mean()),
        "ca_mean_burnt_cells": float(np.asarray(truths).sum(axis=(-2, -1)).mean()),
        "current_burnt_cells": float(np.asarray(current_area).sum(axis=(-2, -1)).mean()),
    }
    out = {
        "scores": results,
        "samples": sample_values,
        "parameters": {
            "diffusion": parameter_count(diffusion.network),
            "deterministic": parameter_count(deterministic.network),
        },
        "training": {"diffusion": diffusion_training, "deterministic": deterministic_training},
        "training_pairs": int(targets.shape[0]),
        "timings": timings,
    }
    out["claims"] = claims(results)
    out["seconds_total"] = time.perf_counter() - started
    (args.out / "metrics.json").write_text(json.dumps(out, indent=2))
    plot(config, args.out, fires, np.asarray(example_trajectory), current, samples_np,
         np.asarray(truths), np.asarray(probability), results)  # fmt: skip
    print_table(out)
    return out


def claims(results: dict) -> dict:
    """The paper's claim in numbers: diffusion ensembles better calibrated than the
    deterministic surrogate (CRPS of cells and of the burnt area, reliability)."""
    diffusion = results["diffusion"]
    binary = results["deterministic-binary"]
    prob = results["deterministic-probability"]
    return {
        "crps_diffusion_below_deterministic": diffusion["crps"] < binary["crps"],
        "crps_area_diffusion_below_deterministic": diffusion["crps_area"]
        < min(binary["crps_area"], prob["crps_area"]),
        "reliability_diffusion_below_deterministic_binary": diffusion["reliability"]
        < binary["reliability"],
        "reliability_diffusion_below_deterministic_probability": diffusion["reliability"]
        < prob["reliability"],
        "brier_diffusion_below_deterministic_probability": diffusion["brier"] < prob["brier"],
    }


def print_table(out: dict) -> None:
    columns = ("brier", "crps", "crps_area", "spread_skill", "area_spread_skill", "reliability")
    print(f"\n{'method':28s} " + " ".join(f"{c:>17s}" for c in columns))
    for method, values in out["scores"].items():
        print(f"{method:28s} " + " ".join(f"{values[c]:17.4f}" for c in columns))
    print("\nclaims (Yu et al. 2025: diffusion ensembles better calibrated):")
    for claim, holds in out["claims"].items():
        print(f"  {claim:56s} {'holds' if holds else 'does not hold'}")
    print(f"total {out['seconds_total']:.1f} s")


# ----------------------------------------------------------------------- figures


def plot(config, out: Path, fires, trajectory, current, samples, truths, probability, results):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    states = ListedColormap(["#d9f0d3", "#d7301f", "#404040"])
    # The automaton on the first test landscape, from its ignition.
    fire = jax.tree.map(lambda a: a[0], fires)
    steps = config.max_age + config.lead
    times = np.linspace(0, steps, 4).round().astype(int)
    fig, axes = plt.subplots(1, 6, figsize=(16, 3))
    axes[0].imshow(np.asarray(fire.fuel), origin="lower", cmap="YlGn")
    axes[0].set_title("fuel factor")
    axes[1].imshow(np.asarray(fire.elevation), origin="lower", cmap="terrain")
    centre = config.grid / 2
    speed, direction = float(fire.wind_speed), float(fire.wind_direction)
    length = config.grid / 3 * speed / config.max_wind_speed
    axes[1].arrow(centre, centre, length * math.cos(direction), length * math.sin(direction),
                  width=0.4, color="k")  # fmt: skip
    axes[1].set_title(f"elevation, wind {speed:.1f} m/s")
    for ax, t in zip(axes[2:], times, strict=True):
        ax.imshow(trajectory[t], origin="lower", cmap=states, vmin=0, vmax=2)
        ax.set_title(f"step {t}")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "yu2025_ca_example.png", dpi=100)
    plt.close(fig)

    cases = min(3, samples.shape[0])
    shown = min(4, samples.shape[1])
    fig, axes = plt.subplots(cases, 2 * shown + 1, figsize=(2 * (2 * shown + 1), 2 * cases),
                             squeeze=False)  # fmt: skip
    for row in range(cases):
        axes[row, 0].imshow(np.asarray(current[row]), origin="lower", cmap=states, vmin=0, vmax=2)
        axes[row, 0].set_title("now" if row == 0 else "")
        for j in range(shown):
            axes[row, 1 + j].imshow(samples[row, j], origin="lower", cmap="Reds", vmin=0, vmax=1)
            axes[row, 1 + shown + j].imshow(truths[row, j], origin="lower", cmap="Greys",
                                            vmin=0, vmax=1)  # fmt: skip
            if row == 0:
                axes[row, 1 + j].set_title(f"diffusion {j + 1}")
                axes[row, 1 + shown + j].set_title(f"automaton {j + 1}")
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"burnt area {config.lead} steps ahead: diffusion samples vs the automaton")
    fig.tight_layout()
    fig.savefig(out / "yu2025_samples.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(cases, 3, figsize=(8, 2.6 * cases), squeeze=False)
    for row in range(cases):
        maps = (truths[row].mean(0), samples[row].mean(0), probability[row])
        titles = ("automaton probability", "diffusion ensemble", "deterministic")
        for ax, field, title in zip(axes[row], maps, titles, strict=True):
            image = ax.imshow(field, origin="lower", cmap="magma", vmin=0, vmax=1)
            ax.set_title(title if row == 0 else "")
            ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="burnt probability")
    fig.savefig(out / "yu2025_probability_maps.png", dpi=100)
    plt.close(fig)

    fig, (ax, ax_counts) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    for method, style in zip(METHODS, ("o-", "s--", "^:", "x-"), strict=True):
        diagram = results[method]["diagram"]
        pairs = [(p, o) for p, o in zip(diagram["forecast_probability"],
                                        diagram["observed_frequency"], strict=True)
                 if p is not None]  # fmt: skip
        if pairs:
            p, o = zip(*pairs, strict=True)
            ax.plot(p, o, style, label=f"{method} (REL {results[method]['reliability']:.4f})")
        edges = np.asarray(diagram["bin_edges"])
        ax_counts.step(edges[:-1], np.maximum(diagram["counts"], 1), where="post", label=method)
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed frequency (automaton)")
    ax.legend(fontsize=8)
    ax_counts.set_yscale("log")
    ax_counts.set_xlabel("forecast probability (bin start)")
    ax_counts.set_ylabel("cells (empty bins drawn at 1)")
    ax_counts.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "yu2025_reliability.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
