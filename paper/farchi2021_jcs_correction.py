"""Farchi et al. (2021, J. Comput. Sci.): resolvent vs tendency correction, learnt offline.

Reproduction of the offline part of Farchi, Bocquet, Laloyaux, Bonavita and Malartic
(2021), A comparison of combined data assimilation and machine learning methods for
offline and online model error correction, *J. Comput. Sci.* 55, 101468.

**Twin.** The truth is the two-scale Lorenz-96 model (`hybridda.dynamics.TwoScaleLorenz96`:
36 slow x 10 fast variables, F = 10, h = 1, b = c = 10), RK4 with ``dt = 0.005``, 10 steps
per cycle (``Δt = 0.05``). The physical model is the truncated one-scale Lorenz-96 on the
36 slow variables (F = 10, no coupling term), RK4 with one step of 0.05 per cycle. Only the
slow variables are ever observed, assimilated, learnt or scored.

**Data set (DA).** The 36 slow variables are observed every cycle with Gaussian errors of
std 1; an ETKF (N = 20, multiplicative inflation 1.5, tuned for the truncated model) with
the truncated model cycles over the training period. Its analyses (means and ensemble
variances) are the only training data: the truth is never seen by the learning.
``--training-data truth`` trains on the true slow trajectory instead: a control (not the
paper's setting) that tells the form of the correction from the noise of its data.

**Hybrid models (ML).** The same periodic CNN (`hybridda.nn.PeriodicCNN`, float32, input
standardised by the analyses' mean and std, output scaled by the size of the analysis
residuals) corrects the truncated model in two ways:

- resolvent correction ``x⁺ = M(x) + c(x)`` (`hybridda.ResolventCorrection`), tied to the
  cycle length it was trained for;
- tendency correction ``dx/dt = f(x) + c(x)`` (`hybridda.TendencyCorrection` inside the
  RK4 `hybridda.Resolvent`), trained through the one RK4 step of 0.05 per cycle; being a
  tendency it can also be integrated with another step: ``tendency_fine`` is the *same*
  network integrated with `fine_steps` = 5 RK4 steps of 0.01 per cycle (not retrained).

Both are trained identically (`hybridda.learn.Trainer`, Adam, inverse-variance weighted
one-cycle loss, early stopping on a held-out 20 % of the cycles in blocks).

**Evaluation** on an independent test period: (1) RMSE against lead time of forecasts
from the true slow state (every `forecast_every` cycles, up to `forecast_leads` = 40
cycles = 2 model time units); (2) cycled ETKF (N = 20) with each model on the test
period in two observation settings, ``full`` (the training setting: 36/36 variables, std
1) and ``sparse`` (18 of 36 variables drawn at random every cycle, std 1), where model
quality matters more. The inflation of each model in each setting is the best of a grid
(the same grid for all models), as an honest comparison has to tune it per model; the
difference between the two corrections is judged against the standard error of the
paired difference of block means (`significance_blocks` blocks); (3) the learnt against
the true one-cycle model error, ``X(M_true(x)) - M_trunc(X(x))``, on true test states.

Deviations from the paper (every setting is in ``config.json``): its exact settings were
not at hand (only the abstract), so the network, the observation networks, the ETKF
(paper: EnKF-type DA with its own settings) and the training schedule are our choices
and only the qualitative claims are compared; one DA -> ML pass; the tendency correction
is trained through the model's own RK4 step of 0.05 (one network evaluation per RK4
stage), not with a separate adjoint code. ``--quick`` (used by the tests) shortens every
period and the training, uses a smaller network, evaluates DA in the ``full`` setting at
one inflation only and leaves out ``tendency_fine`` (about 25 s of CPU, mostly compiling).

Checkpoints (``--checkpoint-dir``, default ``checkpoints/farchi2021_jcs[-quick]``): the
training state of each correction every `checkpoint_every` steps; ``--resume`` continues a
killed run with the same settings (the DA runs are recomputed, bit for bit).

Usage::

    python paper/farchi2021_jcs_correction.py            # full run
    python paper/farchi2021_jcs_correction.py --quick    # small, for the tests
    python paper/farchi2021_jcs_correction.py --resume   # continue a killed run
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import hybridda  # noqa: E402
from hybridda import metrics  # noqa: E402
from hybridda.checkpoint import has_checkpoint, prepare_run_directory  # noqa: E402
from hybridda.dynamics import Lorenz96, TwoScaleLorenz96  # noqa: E402
from hybridda.filters import ETKF, Multiplicative  # noqa: E402
from hybridda.hybrid import ResolventCorrection, TendencyCorrection  # noqa: E402
from hybridda.learn import (  # noqa: E402
    AnalysisDataset,
    Trainer,
    rollout_pairs,
    train_validation_split,
)
from hybridda.nn import PeriodicCNN  # noqa: E402
from hybridda.observe import (  # noqa: E402
    GaussianError,
    RandomSubsetObservation,
    full_observation,
)

# The paper's qualitative claims (its abstract), printed beside ours.
PUBLISHED = {
    "forecast": "long-range forecast accuracy somewhat similar for the two corrections",
    "analysis": "tendency correction significantly outperforms resolvent correction in DA",
}
CORRECTIONS = ("resolvent", "tendency")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting that determines the numbers (written to config.json)."""

    # Truth: two-scale Lorenz-96; model: truncated one-scale Lorenz-96.
    n_slow: int = 36
    n_fast: int = 10
    forcing: float = 10.0
    truth_dt: float = 0.005
    truth_steps_per_cycle: int = 10
    model_dt: float = 0.05
    fine_steps: int = 5
    spin_up_cycles: int = 2000
    # Data set: ETKF with the truncated model on full noisy observations.
    obs_std: float = 1.0
    ensemble_size: int = 20
    train_inflation: float = 1.5
    train_cycles: int = 20000
    burn_in_cycles: int = 200
    # "analyses" (the paper's setting: the truth is never seen) or "truth": the true slow
    # trajectory, a control that separates the correction's form from the data's noise.
    training_data: str = "analyses"
    # Correction network.
    widths: tuple[int, ...] = (32, 32)
    kernel_size: int = 5
    network_dtype: str = "float32"
    # Learning.
    rollout: int = 1
    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    validation_block_cycles: int = 500
    eval_every: int = 200
    patience: int = 5
    checkpoint_every: int = 1000
    # Evaluation on the test period.
    gap_cycles: int = 200
    test_cycles: int = 2000
    forecast_leads: int = 40
    forecast_every: int = 10
    sparse_obs_count: int = 18
    inflations: tuple[float, ...] = (1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 1.7)
    test_burn_in_cycles: int = 200
    significance_blocks: int = 10
    model_error_states: int = 500
    # What to evaluate (--quick drops the full-observation DA and the fine-step variant).
    da_settings: tuple[str, ...] = ("full", "sparse")
    evaluate_fine: bool = True
    seed: int = 0

    @property
    def cycle_length(self) -> float:
        return self.truth_dt * self.truth_steps_per_cycle

    @property
    def test_start(self) -> int:
        return self.train_cycles + self.gap_cycles

    @property
    def total_cycles(self) -> int:
        return self.test_start + self.test_cycles + self.forecast_leads + 1

    def check(self) -> None:
        if not math.isclose(self.model_dt, self.cycle_length):
            raise SystemExit("model_dt must equal the cycle length truth_dt * truth_steps.")
        if self.test_cycles <= self.test_burn_in_cycles + self.significance_blocks:
            raise SystemExit("--test-cycles must exceed the test burn-in plus the blocks.")
        if not set(self.da_settings) <= {"full", "sparse"}:
            raise SystemExit("da_settings must be among 'full' and 'sparse'.")
        if self.training_data not in ("analyses", "truth"):
            raise SystemExit("--training-data must be 'analyses' or 'truth'.")


QUICK = {
    # Training and test periods of equal length, one DA setting and one inflation of the
    # same shape as the training ETKF's: the test ETKF with the truncated model reuses
    # the compiled training ETKF (the quick run is mostly compiling).
    "spin_up_cycles": 300,
    "train_cycles": 800,
    "burn_in_cycles": 100,
    "widths": (16, 16),
    "steps": 300,
    "batch_size": 32,
    "validation_block_cycles": 100,
    "eval_every": 100,
    "patience": 3,
    "checkpoint_every": 300,
    "gap_cycles": 50,
    "test_cycles": 800,
    "forecast_every": 20,
    "inflations": (1.3,),
    "test_burn_in_cycles": 100,
    "significance_blocks": 5,
    "model_error_states": 100,
    "da_settings": ("full",),
    "evaluate_fine": False,
}


# ------------------------------------------------------------------ twin


@dataclasses.dataclass
class Twin:
    truth_dynamics: TwoScaleLorenz96
    truth_model: hybridda.Resolvent
    full_truth: np.ndarray  # (K, n_slow * (1 + n_fast)): slow and fast variables
    slow: np.ndarray  # (K, n_slow)
    climatological_std: float


def make_twin(config: Config) -> Twin:
    dynamics = TwoScaleLorenz96(n_slow=config.n_slow, n_fast=config.n_fast, forcing=config.forcing)
    model = hybridda.Resolvent(
        dynamics, dt=config.truth_dt, steps_per_cycle=config.truth_steps_per_cycle
    )
    key_slow, key_fast = jax.random.split(jax.random.key(config.seed))
    x0 = jnp.concatenate(
        [
            config.forcing + 0.1 * jax.random.normal(key_slow, (config.n_slow,)),
            0.01 * jax.random.normal(key_fast, (config.n_slow * config.n_fast,)),
        ]
    )
    # One run (one compiled program) whose first `spin_up_cycles` states are dropped.
    cycles = config.spin_up_cycles + config.total_cycles - 1
    full = np.asarray(eqx.filter_jit(hybridda.simulate)(model, x0, cycles))
    full = full[config.spin_up_cycles :]
    slow = full[:, : config.n_slow]
    return Twin(dynamics, model, full, slow, float(metrics.climatological_std(slow)))


def physical_dynamics(config: Config) -> Lorenz96:
    return Lorenz96(n=config.n_slow, forcing=config.forcing)


def truncated_model(config: Config) -> hybridda.Resolvent:
    return hybridda.Resolvent(physical_dynamics(config), dt=config.model_dt, steps_per_cycle=1)


# ------------------------------------------------------------------ DA


@eqx.filter_jit
def _etkf_runs(model, observation, y, init, key, factors):
    """Cycled ETKF with `model`, one run per inflation factor (vmapped)."""

    def run(factor):
        method = ETKF(inflation=Multiplicative(factor))
        # y holds cycles 1..K (cycle 0 is the initial time): the operator in force at
        # each must be that of the same cycle (random networks change every cycle).
        trajectory = hybridda.assimilate(model, observation, method, y, init, key, first_cycle=1)
        return trajectory.analysis_mean, trajectory.analysis_spread

    return jax.vmap(run)(factors)


def run_etkf(model, observation, truth, y, config: Config, factors, key):
    """Analysis means ``(F, K, n)``, spreads ``(F, K)`` and RMSE series ``(F, K)``."""
    key_init, key_run = jax.random.split(key)
    init = hybridda.initial_ensemble(
        key_init, jnp.asarray(truth[0]), config.ensemble_size, config.obs_std
    )
    means, spreads = _etkf_runs(
        model, observation, jnp.asarray(y[1:]), init, key_run, jnp.asarray(factors)
    )
    means, spreads = np.asarray(means), np.asarray(spreads)
    errors = np.sqrt(np.mean((means - truth[None, 1:]) ** 2, axis=-1))
    return means, spreads, errors


# ------------------------------------------------------------------ learning


class ScaledNetwork(eqx.Module):
    """``c(x) = output_scale * net((x - input_mean) / input_std)``, scales fixed (static)."""

    network: PeriodicCNN
    input_mean: float = eqx.field(static=True)
    input_std: float = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __call__(self, x):
        return self.output_scale * self.network((x - self.input_mean) / self.input_std)


def build_hybrids(config: Config, analyses: np.ndarray, network) -> dict:
    """The two hybrid models around one (initial) network, with data-derived scales.

    The output scale is the rms of the analysis residuals ``x_{k+1} - M(x_k)`` per cycle
    (resolvent correction) or per unit time (tendency correction): the size of the model
    error as the data see it, never the truth.
    """
    physical = truncated_model(config)
    residuals = analyses[1:] - np.asarray(_one_cycle(physical, jnp.asarray(analyses[:-1])))
    per_cycle = float(np.sqrt(np.mean(residuals**2)))
    mean, std = float(np.mean(analyses)), float(np.std(analyses))
    resolvent = ResolventCorrection(physical, ScaledNetwork(network, mean, std, per_cycle))
    tendency_net = ScaledNetwork(network, mean, std, per_cycle / config.model_dt)
    tendency = hybridda.Resolvent(
        TendencyCorrection(physical_dynamics(config), tendency_net),
        dt=config.model_dt,
        steps_per_cycle=1,
    )
    return {"resolvent": resolvent, "tendency": tendency}


def fine_tendency(config: Config, tendency: hybridda.Resolvent) -> hybridda.Resolvent:
    """The trained tendency correction integrated with `fine_steps` RK4 steps per cycle."""
    return hybridda.Resolvent(
        tendency.dynamics,
        dt=config.model_dt / config.fine_steps,
        steps_per_cycle=config.fine_steps,
    )


def train(name, model, dataset, config: Config, directory: Path, resume: bool, progress):
    key_split, key_train = jax.random.split(jax.random.key(config.seed + 1))
    train_set, validation_set = train_validation_split(
        dataset,
        config.validation_fraction,
        key=key_split,
        block_length=config.validation_block_cycles,
        gap=config.rollout,
    )
    pairs = rollout_pairs(train_set, config.rollout)
    validation = rollout_pairs(validation_set, config.rollout)
    trainer = Trainer(
        model,
        pairs,
        validation,
        key=key_train,
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        eval_every=config.eval_every,
        patience=config.patience,
        checkpoint_dir=directory,
        checkpoint_every=config.checkpoint_every,
        max_to_keep=1,
        resume=resume and has_checkpoint(directory),
        config={"experiment": "farchi2021_jcs", "correction": name},
        progress=progress,
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = trainer.fit()
    history = result.history.as_dict()
    history["train_examples"], history["validation_examples"] = len(pairs), len(validation)
    history["steps_taken"] = trainer.step
    history["stopped_early"] = bool(trainer.stopped_early)
    history["seconds_this_process"] = time.perf_counter() - start
    history["cpu_seconds_this_process"] = time.process_time() - cpu
    finite = [v for v in history["validation_loss"] if v is not None and np.isfinite(v)]
    history["best_validation_loss"] = float(min(finite)) if finite else None
    return result.model, history


# ------------------------------------------------------------------ evaluation


@eqx.filter_jit
def _one_cycle(model, states):
    return jax.vmap(model)(states)


@eqx.filter_jit
def _evaluate(model_set, truth_model, truth, starts, full_states, leads: int):
    """Forecast RMSE per start of every model and their one-cycle maps of true states,
    in one compiled program (fewer compilations: the quick test is mostly compiling)."""
    n_slow = truth.shape[1]
    slow_states = full_states[:, :n_slow]
    forecasts = {
        name: metrics.forecast_skill(model, truth, starts, leads).rmse_per_start
        for name, model in model_set.items()
    }
    one_cycle = {name: jax.vmap(model)(slow_states) for name, model in model_set.items()}
    true_one_cycle = jax.vmap(truth_model)(full_states)[:, :n_slow]
    return forecasts, one_cycle, true_one_cycle


def evaluate(model_set: dict, twin: Twin, config: Config):
    """Forecasts from the true test states (mean RMSE against lead, in cycles) and the
    learnt vs true one-cycle model error on true test states."""
    truth = jnp.asarray(twin.slow[config.test_start :])
    starts = jnp.arange(0, config.test_cycles, config.forecast_every)
    cycles = config.test_start + np.linspace(
        0, config.test_cycles - 1, config.model_error_states, dtype=int
    )
    forecasts, one_cycle, true_one_cycle = _evaluate(
        model_set,
        twin.truth_model,
        truth,
        starts,
        jnp.asarray(twin.full_truth[cycles]),
        config.forecast_leads,
    )
    # (jit returns dicts sorted by key: keep the order of `model_set`)
    curves = {name: np.asarray(forecasts[name]).mean(axis=0) for name in model_set}
    truncated = np.asarray(one_cycle["truncated"])
    true_error = np.asarray(true_one_cycle) - truncated
    model_error, fields = {}, {"true": true_error[0]}
    for name in [n for n in model_set if n != "truncated"]:
        learnt = np.asarray(one_cycle[name]) - truncated
        residual = np.sum((true_error - learnt) ** 2)
        model_error[name] = {
            "explained_fraction": float(1.0 - residual / np.sum(true_error**2)),
            "correlation": float(np.corrcoef(true_error.ravel(), learnt.ravel())[0, 1]),
            "learnt_rms": float(np.sqrt(np.mean(learnt**2))),
        }
        fields[name] = learnt[0]
    model_error["true_rms"] = float(np.sqrt(np.mean(true_error**2)))
    model_error["states"] = len(cycles)
    return curves, int(starts.shape[0]), model_error, fields


def paired_significance(a: np.ndarray, b: np.ndarray, blocks: int) -> dict:
    """Mean of ``a - b`` and its standard error from `blocks` contiguous block means."""
    difference = (a - b)[: len(a) // blocks * blocks].reshape(blocks, -1).mean(axis=1)
    mean = float(difference.mean())
    stderr = float(difference.std(ddof=1) / np.sqrt(blocks))
    return {
        "mean_difference": mean,
        "standard_error": stderr,
        "t": mean / stderr if stderr > 0 else float("inf"),
    }


def evaluate_da(model_set: dict, twin: Twin, config: Config, progress: bool):
    """Cycled ETKF on the test period with each model, both observation settings."""
    truth = twin.slow[config.test_start : config.test_start + config.test_cycles]
    error = GaussianError(config.obs_std)
    settings = {
        "full": full_observation(config.n_slow, error),
        "sparse": RandomSubsetObservation(
            config.sparse_obs_count,
            config.n_slow,
            error,
            jax.random.key(config.seed + 11),
        ),
    }
    settings = {name: settings[name] for name in config.da_settings}
    burn = config.test_burn_in_cycles
    factors = np.asarray(config.inflations, dtype=float)
    results, best_series = {}, {}
    bar = tqdm(
        total=len(settings) * len(model_set), desc="test DA", unit="run", disable=not progress
    )
    for setting, observation in settings.items():
        index = ("full", "sparse").index(setting)
        key_obs, key_da = jax.random.split(jax.random.key(config.seed + 20 + index))
        y = np.asarray(
            eqx.filter_jit(hybridda.synthesise_observations)(
                observation, jnp.asarray(truth), key_obs
            )
        )
        entry = {"obs_count": observation.obs_size, "models": {}}
        series = {}
        for name, model in model_set.items():
            _, spreads, errors = run_etkf(model, observation, truth, y, config, factors, key_da)
            mean_rmse = np.mean(errors[:, burn:], axis=1)
            mean_rmse = np.where(np.isfinite(mean_rmse), mean_rmse, np.inf)
            best = int(np.argmin(mean_rmse))
            entry["models"][name] = {
                "rmse_by_inflation": dict(
                    zip([str(f) for f in config.inflations], mean_rmse.tolist(), strict=True)
                ),
                "best_inflation": float(factors[best]),
                "rmse": float(mean_rmse[best]),
                "spread": float(np.mean(spreads[best, burn:])),
            }
            series[name] = errors[best]
            bar.update()
        entry["tendency_minus_resolvent"] = paired_significance(
            series["tendency"][burn:], series["resolvent"][burn:], config.significance_blocks
        )
        if "tendency_fine" in series:
            entry["tendency_fine_minus_resolvent"] = paired_significance(
                series["tendency_fine"][burn:],
                series["resolvent"][burn:],
                config.significance_blocks,
            )
        results[setting], best_series[setting] = entry, series
    bar.close()
    return results, best_series


# ------------------------------------------------------------------ outputs

STYLES = {
    "truncated": ("C3", "truncated model"),
    "resolvent": ("C0", "resolvent correction"),
    "tendency": ("C2", "tendency correction"),
    "tendency_fine": ("C2", "tendency correction, 5 RK4 steps"),
}


def figures(out: Path, result: dict, fields: dict, series: dict, config: Config) -> None:
    import matplotlib.pyplot as plt

    forecast = result["forecast"]
    times = np.asarray(forecast["lead_cycles"]) * config.cycle_length
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name in forecast["rmse"]:
        colour, label = STYLES[name]
        axis.plot(
            times,
            forecast["rmse"][name],
            color=colour,
            ls="--" if name == "tendency_fine" else "-",
            label=label,
        )
    axis.axhline(result["climatological_std"], color="grey", lw=0.8, ls=":", label="clim. std")
    axis.set(
        xlabel="lead time (model time units)",
        ylabel="RMSE (slow variables)",
        title="Forecasts from the true test states",
    )
    axis.legend()
    axis.grid(alpha=0.3)
    figure.savefig(out / "rmse_vs_lead.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    variables = np.arange(config.n_slow)
    axes[0].plot(variables, fields["true"], "k", lw=2, label="true model error")
    for name in ("resolvent", "tendency"):
        colour, label = STYLES[name]
        axes[0].plot(variables, fields[name], color=colour, label=label)
    axes[0].set(
        xlabel="slow variable", ylabel="one-cycle error", title="One test state (one cycle)"
    )
    axes[0].legend()
    error = result["model_error"]
    names = [n for n in STYLES if n in error]
    labels = [f"{n}: {100 * error[n]['explained_fraction']:.0f} % explained" for n in names]
    axes[1].bar(labels, [error[n]["correlation"] for n in names])
    axes[1].set(ylim=(0, 1), ylabel="correlation with the true model error")
    axes[1].tick_params(axis="x", labelsize=8)
    figure.savefig(out / "model_error.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(
        1, len(series), figsize=(6 * len(series), 4.2), constrained_layout=True, squeeze=False
    )
    axes = axes[0]
    for axis, (setting, lines) in zip(axes, series.items(), strict=True):
        for name in lines:
            colour, label = STYLES[name]
            window = max(1, len(lines[name]) // 60)
            smooth = np.convolve(lines[name], np.ones(window) / window, mode="valid")
            axis.plot(
                smooth, color=colour, ls="--" if name == "tendency_fine" else "-", label=label
            )
        axis.set(
            xlabel="test cycle",
            ylabel="analysis RMSE (running mean)",
            title=f"ETKF, {setting} observations (best inflation each)",
        )
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.savefig(out / "analysis_rmse.png", dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, network and training seed")
    parser.add_argument("--out", type=Path, help="results (default runs/farchi2021_jcs[-quick])")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="training checkpoints (default checkpoints/farchi2021_jcs[-quick])",
    )
    parser.add_argument("--quick", action="store_true", help="short periods, small network")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument("--train-cycles", type=int, help="training-period cycles (20000)")
    parser.add_argument("--steps", type=int, help="training steps per correction (4000)")
    parser.add_argument(
        "--training-data",
        choices=("analyses", "truth"),
        help="train on the ETKF analyses (default, as the paper) or on the true trajectory",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or Path(f"runs/farchi2021_jcs{suffix}")
    args.checkpoint_dir = args.checkpoint_dir or Path(f"checkpoints/farchi2021_jcs{suffix}")
    args.progress = not args.no_progress
    return args


def make_config(args) -> Config:
    changes = dict(QUICK) if args.quick else {}
    if args.train_cycles is not None:
        changes["train_cycles"] = args.train_cycles
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.training_data is not None:
        changes["training_data"] = args.training_data
    config = Config(seed=args.seed, **changes)
    config.check()
    return config


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = make_config(args)
    prepare_run_directory(args.checkpoint_dir, dataclasses.asdict(config), resume=args.resume)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    seconds = {}

    # 1. Truth (two-scale) and the data set: ETKF with the truncated model, full obs.
    start = time.perf_counter()
    twin = make_twin(config)
    train_truth = twin.slow[: config.train_cycles]
    observation = full_observation(config.n_slow, GaussianError(config.obs_std))
    key_obs, key_da = jax.random.split(jax.random.key(config.seed + 3))
    y = np.asarray(
        eqx.filter_jit(hybridda.synthesise_observations)(
            observation, jnp.asarray(train_truth), key_obs
        )
    )
    factors = np.asarray([config.train_inflation])
    means, spreads, errors = run_etkf(
        truncated_model(config), observation, train_truth, y, config, factors, key_da
    )
    seconds["truth_and_training_da"] = time.perf_counter() - start
    burn = config.burn_in_cycles
    # The ETKF's analysis variances are not stored per variable by `assimilate`; the
    # ensemble spread (per cycle) stands for them, the same for every variable.
    analyses = means[0, burn:]
    variance = np.repeat(spreads[0, burn:, None] ** 2, config.n_slow, axis=1)
    if config.training_data == "truth":  # the control: perfect data, uniform weights
        analyses = np.asarray(train_truth[burn:])
        variance = np.ones_like(analyses)
    dataset = AnalysisDataset(analyses, variance)
    training_da = {
        "rmse": float(np.mean(errors[0, burn:])),
        "spread": float(np.mean(spreads[0, burn:])),
        "inflation": config.train_inflation,
    }

    # 2. Offline learning: the same initial network in both corrections.
    dtype = jnp.float32 if config.network_dtype == "float32" else jnp.float64
    network = PeriodicCNN(
        widths=config.widths,
        kernel_sizes=config.kernel_size,
        key=jax.random.key(config.seed + 2),
        dtype=dtype,
    )
    hybrids = build_hybrids(config, analyses, network)
    trained, histories = {}, {}
    for name in CORRECTIONS:
        trained[name], histories[name] = train(
            name,
            hybrids[name],
            dataset,
            config,
            args.checkpoint_dir / f"train_{name}",
            args.resume,
            args.progress,
        )
        seconds[f"training_{name}"] = histories[name]["seconds_this_process"]
    model_set = {
        "truncated": truncated_model(config),
        "resolvent": trained["resolvent"],
        "tendency": trained["tendency"],
    }
    if config.evaluate_fine:
        model_set["tendency_fine"] = fine_tendency(config, trained["tendency"])

    # 3. Test period: forecasts, model error, DA in two observation settings.
    start = time.perf_counter()
    curves, forecast_count, model_error, fields = evaluate(model_set, twin, config)
    seconds["forecasts_and_model_error"] = time.perf_counter() - start
    start = time.perf_counter()
    da, series = evaluate_da(model_set, twin, config, args.progress)
    seconds["test_da"] = time.perf_counter() - start

    leads = [lead for lead in (1, 5, 10, 20, 40) if lead <= config.forecast_leads]
    at = {name: {str(k): float(curve[k]) for k in leads} for name, curve in curves.items()}
    last = config.forecast_leads
    ratio = curves["tendency"][last] / curves["resolvent"][last]
    result = {
        "forecast": {
            "lead_cycles": list(range(config.forecast_leads + 1)),
            "rmse": {name: curve.tolist() for name, curve in curves.items()},
            "rmse_at": at,
            "starts": forecast_count,
            "initial_states": "true slow state of the test period",
            "tendency_over_resolvent_at_last_lead": float(ratio),
            "reduction_at_last_lead": {
                name: float(1 - curves[name][last] / curves["truncated"][last])
                for name in model_set
                if name != "truncated"
            },
        },
        "analysis": da,
        "training_da": training_da,
        "model_error": model_error,
        "training": histories,
        "climatological_std": twin.climatological_std,
        "published": PUBLISHED,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figures(args.out, result, fields, series, config)
    seconds["total_wall_this_process"] = time.perf_counter() - wall_start
    seconds["total_cpu_this_process"] = time.process_time() - cpu_start
    seconds["load_average_1min_at_end"] = os.getloadavg()[0]
    result["seconds"] = seconds
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    (args.out / "metrics.json").write_text(json.dumps(_finite_or_none(result), indent=2))
    print_table(result, config)
    return result


def _finite_or_none(value):
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_table(result: dict, config: Config) -> None:
    forecast = result["forecast"]
    print("Farchi et al. (2021, JCS): two-scale Lorenz-96 truth, truncated L96 + CNN correction")
    leads = list(next(iter(forecast["rmse_at"].values())))
    print(f"{'forecast RMSE at lead (cycles)':<34}" + "".join(f"{k:>8}" for k in leads))
    models = list(forecast["rmse_at"])
    for name in models:
        print(f"  {name:<32}" + "".join(f"{v:>8.3f}" for v in forecast["rmse_at"][name].values()))
    print(f"{'ETKF analysis RMSE (best infl.)':<34}" + "".join(f"{m:>15}" for m in models))
    for setting, entry in result["analysis"].items():
        cells = "".join(
            f"{entry['models'][m]['rmse']:>9.3f} ({entry['models'][m]['best_inflation']:.2f})"
            for m in models
        )
        print(f"  {setting + ' (' + str(entry['obs_count']) + ' obs)':<32}{cells}")
        test = entry["tendency_minus_resolvent"]
        print(
            f"    tendency - resolvent: {test['mean_difference']:+.4f} "
            f"± {test['standard_error']:.4f} (t = {test['t']:.1f})"
        )
    error = result["model_error"]
    print(
        "one-cycle model error explained: "
        + ", ".join(
            f"{n} {100 * error[n]['explained_fraction']:.0f} % "
            f"(corr. {error[n]['correlation']:.2f})"
            for n in models
            if n != "truncated"
        )
    )
    print("published:", PUBLISHED["forecast"], "|", PUBLISHED["analysis"])
    s = result["seconds"]
    print(
        f"wall {s['total_wall_this_process']:.0f} s (CPU {s['total_cpu_this_process']:.0f} s, "
        f"load {s['load_average_1min_at_end']:.1f})"
    )


if __name__ == "__main__":
    main()
