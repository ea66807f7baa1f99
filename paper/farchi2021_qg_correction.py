"""Farchi et al. (2021): learn the model error of the QG model from 4D-Var analyses.

Reproduction of Farchi, Laloyaux, Bonavita and Bocquet (2021), Using machine learning to
correct model error in data assimilation and forecast applications, *QJRMS* 147,
3067-3084, with the two-layer quasi-geostrophic channel model of ECMWF's OOPS
(`hybridda.dynamics.QG`, 40 x 20 grid, n = 1600).

**Twin.** The truth is ``QG()`` (layer depths 6000 / 4000 m); the physical model is
OOPS's imperfect model, ``QG().perturbed(depths=(5500, 4500))``. Both integrate with RK4,
``dt = 0.05`` (1.4 h); one cycle is `steps_per_cycle` = 2 steps. As in OOPS, whose
control variable is the streamfunction, the state of the DA and of the learning is the
perturbation streamfunction of both layers (each model converts it to its own PV, steps
and inverts back), so the observation operator does not depend on the model. Every cycle
`obs_count` = 100 points drawn uniformly over the channel (a random layer each, redrawn
every cycle) observe the streamfunction with Gaussian errors of std `obs_std` = 0.05
(clim. std 1.25).

**DA.** Cycled strong-constraint 4D-Var (`hybridda.variational.FourDVar`, Gauss-Newton
with `outer_loops` x `inner_loops` CG iterations, `hybridda.assimilate_windows`) over
windows of `window` = 4 cycles (8 steps, 11 h), with a static Gaussian-correlated ``B``
(std `background_std`, length 1000 km, layer correlation 0.5). The analysis at the end of
each window is the next background and one entry of the data set.

**ML.** A CNN on the channel (`hybridda.nn.ChannelCNN`: periodic in x, zero ghost rows at
the walls, 3 x 32 channels, 3 x 3 kernels, ReLU, float32) corrects the resolvent
every cycle, ``x⁺ = M(x) + c(x)`` (`hybridda.ResolventCorrection`). Its inputs are the
streamfunction and the PV (from the imperfect model's inversion) of both layers, the
orography and the latitude, standardised; its output is scaled by the size of the
analysis residuals; its readout starts at zero (the hybrid starts as the physical
model). It is trained offline (`hybridda.learn.Trainer`, Adam, early stopping on a held
out 20 % of the windows) to carry each window-end analysis to the next one: the loss
rolls the hybrid out over the `window` cycles between them, through the physical model
(no analysis increments or finite-difference model error needed).

**Evaluation** on an independent test period (after a gap of `gap_windows` windows):
(a) RMSE against lead time of forecasts from the test period's analyses (those of 4D-Var
with the physical model) with the true, physical and hybrid models, up to
`forecast_steps` = 48 RK4 steps; (b) cycled 4D-Var on the test period with each of the
three models; plus the learnt against the true one-cycle model error
``M_true(x) - M_imperfect(x)`` on true states. RMSEs are of the perturbation
streamfunction over both layers, non-dimensional (unit 10^7 m^2/s).

Deviations from the paper (every setting is in ``config.json``). The observation
network, window length, ``B`` and CNN here are our choices, not the paper's exact
settings (which we did not have at hand), so only its qualitative claims are compared.
Also: a short training period (300 windows, 139 days) and a small CNN, to fit ~1.4 h on
2 CPU cores; the streamfunction as the control and learning variable; our QG
discretisation (Arakawa Jacobian, spectral inversion, explicit dissipation and weaker
shear, see `hybridda.dynamics.qg`) rather than OOPS's semi-Lagrangian scheme; a
resolvent correction only (no tendency correction); one DA -> ML pass; the imperfect and
true models run in the same compiled code as the hybrid with an exactly zero correction
(``W = 0, b = 0`` readout), which changes no number. ``--quick`` runs on a 20 x 10 grid
with short periods and 2 x 6 Gauss-Newton iterations (used by the tests; about 55 s on
2 idle cores, most of it compiling and running the 4D-Var windows).

Checkpoints (``--checkpoint-dir``, default ``checkpoints/farchi2021_qg``): the DA runs
are saved chunk by chunk (``da/``) and the training state every `eval_every` steps
(``train/``); ``--resume`` continues a killed run with the same settings.

Usage::

    python paper/farchi2021_qg_correction.py            # full run (83 min on 2 shared cores)
    python paper/farchi2021_qg_correction.py --quick    # small, for the tests
    python paper/farchi2021_qg_correction.py --resume   # continue a killed run
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

import hybridda  # noqa: E402
from hybridda import metrics  # noqa: E402
from hybridda.checkpoint import has_checkpoint, prepare_run_directory  # noqa: E402
from hybridda.dynamics import QG  # noqa: E402
from hybridda.hybrid import ResolventCorrection  # noqa: E402
from hybridda.learn import (  # noqa: E402
    AnalysisDataset,
    Trainer,
    rollout_pairs,
    train_validation_split,
)
from hybridda.nn import ChannelCNN  # noqa: E402
from hybridda.observe import (  # noqa: E402
    AbstractObservation,
    GaussianError,
    RandomQGPointObservation,
)
from hybridda.variational import FourDVar, channel_gaussian_covariance  # noqa: E402

# The paper's qualitative claims (its abstract), printed beside ours.
PUBLISHED = {
    "model_error_learnt": "a substantial part of the model error is learnt",
    "forecast": "hybrid: better short- to mid-range forecasts than the physical model",
    "analysis": "4D-Var with the hybrid: significantly better analysis",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting that determines the numbers (written to config.json)."""

    # Models: OOPS's truth and imperfect model.
    nx: int = 40
    ny: int = 20
    dt: float = 0.05
    steps_per_cycle: int = 2
    imperfect_depths: tuple[float, float] = (5500.0, 4500.0)
    spin_up_steps: int = 1000
    # Observations: streamfunction at random points, both layers, every cycle.
    obs_count: int = 100
    obs_std: float = 0.05
    # Strong-constraint 4D-Var.
    window: int = 4
    outer_loops: int = 2
    inner_loops: int = 10
    background_std: float = 0.05
    background_length: float = 1.0
    layer_correlation: float = 0.5
    train_windows: int = 300
    gap_windows: int = 25
    test_windows: int = 60
    burn_in_windows: int = 5
    da_chunk_windows: int = 20
    # Correction network.
    widths: tuple[int, ...] = (32, 32, 32)
    kernel_size: int = 3
    network_dtype: str = "float32"
    # Learning.
    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    validation_block_windows: int = 20
    eval_every: int = 50
    patience: int = 10
    # Evaluation.
    forecast_steps: int = 48
    target_lead_steps: int = 24
    model_error_states: int = 50
    seed: int = 0

    @property
    def forecast_cycles(self) -> int:
        return self.forecast_steps // self.steps_per_cycle

    @property
    def test_start_cycle(self) -> int:
        return (self.train_windows + self.gap_windows) * self.window

    @property
    def total_cycles(self) -> int:
        return self.test_start_cycle + self.test_windows * self.window + self.forecast_cycles

    def check(self) -> None:
        """Consistency of the settings, with the fix in the message."""
        if self.forecast_steps % self.steps_per_cycle or self.target_lead_steps % (
            self.steps_per_cycle
        ):
            raise SystemExit(
                "--forecast-steps and the target lead must be multiples of steps_per_cycle."
            )
        if self.target_lead_steps > self.forecast_steps:
            raise SystemExit("The target lead must not exceed --forecast-steps.")
        for name in ("train_windows", "test_windows"):
            if getattr(self, name) % self.da_chunk_windows:
                raise SystemExit(
                    f"{name} ({getattr(self, name)}) must be a multiple of da_chunk_windows "
                    f"({self.da_chunk_windows}): every DA chunk has the same (compiled) size."
                )
        if self.test_windows <= self.burn_in_windows:
            raise SystemExit("--test-windows must exceed the burn-in.")


QUICK = {
    "nx": 20,
    "ny": 10,
    "spin_up_steps": 600,
    "obs_count": 40,
    "inner_loops": 6,
    "train_windows": 24,
    "gap_windows": 10,
    "test_windows": 6,
    "burn_in_windows": 1,
    "da_chunk_windows": 6,
    "widths": (16, 16),
    "steps": 80,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "validation_block_windows": 6,
    "eval_every": 20,
    "patience": 4,
    "forecast_steps": 24,
    "model_error_states": 10,
}


# ------------------------------------------------------------------ state and model


class StreamfunctionResolvent(eqx.Module):
    """One cycle of a QG model on the streamfunction state: psi -> PV -> RK4 -> psi.

    The state is the perturbation streamfunction of both layers, flattened from
    ``(2, ny, nx)``; each model converts it to PV with its own layer depths (OOPS's
    control variable is the streamfunction too).
    """

    resolvent: hybridda.Resolvent

    @property
    def cycle_length(self) -> float:
        return self.resolvent.cycle_length

    def __call__(self, x, t0=0.0):
        model = self.resolvent.dynamics
        q = model.from_streamfunction(model.to_fields(x))
        return model.perturbation_streamfunction(self.resolvent(q, t0)).reshape(-1)

    def ensemble(self, E, t0=0.0):
        return jax.vmap(lambda x: self(x, t0))(E)


class StreamfunctionObservation(AbstractObservation):
    """A QG point network acting on the streamfunction state (see above).

    ``network.model`` only converts the state to PV for the network's own inversion, so
    the operator is the same whatever model's depths it holds (interpolation of psi).
    """

    network: AbstractObservation

    @property
    def error(self):
        return self.network.error

    @property
    def state_size(self) -> int:
        return self.network.state_size

    @property
    def obs_size(self) -> int:
        return self.network.obs_size

    def at_cycle(self, cycle):
        return StreamfunctionObservation(self.network.at_cycle(cycle))

    def __call__(self, x):
        model = self.network.model
        return self.network(model.from_streamfunction(model.to_fields(x)))

    def locations(self, state_coordinates):
        return self.network.locations(state_coordinates)


class QGCorrection(eqx.Module):
    """``c(psi) = output_scale * CNN(features)``: the learnt model error over one cycle.

    Features (6 channels on the grid): the streamfunction and the PV (by the imperfect
    model's inversion) of both layers, divided by `psi_scale` / `pv_scale`, and two fixed
    maps, the orography over its maximum and ``2 (y - y_c) / L_y``. The scales are
    arrays so that every model with this correction has the same compiled structure.
    """

    network: ChannelCNN
    physics: QG
    fixed_channels: jax.Array
    psi_scale: jax.Array
    pv_scale: jax.Array
    output_scale: jax.Array

    def __call__(self, x):
        psi = self.physics.to_fields(x)
        q = self.physics.pv_from_streamfunction(psi)
        features = jnp.concatenate(
            [psi / self.psi_scale, q / self.pv_scale, self.fixed_channels], axis=0
        )
        out = self.network(features).astype(x.dtype)
        return (self.output_scale * out).reshape(-1)


def build_network(config: Config, key) -> ChannelCNN:
    """The correction's CNN with its random initial weights (readout not zeroed)."""
    # Built under jit: eager initialisation compiles one random draw per layer shape.
    return eqx.filter_jit(
        lambda key: ChannelCNN(
            6,
            2,
            widths=config.widths,
            kernel_sizes=config.kernel_size,
            key=key,
            wall_padding="zero",
            dtype=jnp.dtype(config.network_dtype),
        )
    )(key)


def build_correction(physics: QG, config: Config, key, network=None) -> QGCorrection:
    """The correction with a zero readout around `network` (default: a new one from `key`)."""
    network = build_network(config, key) if network is None else network
    _, y = physics.grid()
    latitude = 2.0 * (y - 0.5 * physics.lengths[1]) / physics.lengths[1]
    orography = np.asarray(physics.orography)
    orography = orography / max(float(np.abs(orography).max()), 1e-12)
    fixed = np.stack([orography, np.broadcast_to(latitude[:, None], orography.shape)])
    one = jnp.asarray(1.0)
    correction = QGCorrection(network, physics, jnp.asarray(fixed), one, one, one)
    return with_zero_readout(correction)


def with_zero_readout(correction: QGCorrection) -> QGCorrection:
    """The same network with readout ``W = 0, b = 0``: ``c(x) = 0`` exactly."""
    readout = correction.network.layers[-1].conv
    return eqx.tree_at(
        lambda c: (c.network.layers[-1].conv.weight, c.network.layers[-1].conv.bias),
        correction,
        (jnp.zeros_like(readout.weight), jnp.zeros_like(readout.bias)),
    )


class Repeated(eqx.Module):
    """`times` cycles of `model`: the map between consecutive window-end analyses."""

    model: ResolventCorrection
    times: int = eqx.field(static=True)

    def __call__(self, x, t0=0.0):
        return jax.lax.scan(lambda x, _: (self.model(x), None), x, length=self.times)[0]


def network_only(model: Repeated):
    """Filter spec: train the CNN's arrays only (not the physics, maps or scales)."""
    spec = jax.tree.map(lambda _: False, model)
    network = model.model.correction.network
    return eqx.tree_at(
        lambda m: m.model.correction.network, spec, jax.tree.map(eqx.is_inexact_array, network)
    )


# ------------------------------------------------------------------ twin


@dataclasses.dataclass
class Twin:
    truth_model: QG
    physics: QG
    truth: np.ndarray  # (total_cycles + 1, n): psi at every cycle from the training start
    observations: np.ndarray  # (total_cycles, p): y[k] observes truth[k + 1]
    observation: StreamfunctionObservation
    background_covariance: np.ndarray
    background_factor: np.ndarray
    climatological_std: float


@eqx.filter_jit
def _truth_run(resolvent, start, spin_up_cycles: int, cycles: int):
    start = hybridda.spin_up(resolvent, start, spin_up_cycles)
    states = hybridda.simulate(resolvent, start, cycles)
    return jax.vmap(resolvent.dynamics.perturbation_streamfunction)(states)


@eqx.filter_jit
def _observe(observation, truth, key):
    cycles = jnp.arange(truth.shape[0] - 1)
    keys = jax.random.split(key, cycles.shape[0])
    return jax.vmap(lambda k, x, kk: observation.at_cycle(k).sample(x, kk))(cycles, truth[1:], keys)


def make_twin(config: Config) -> Twin:
    truth_model = QG(nx=config.nx, ny=config.ny)
    physics = truth_model.perturbed(depths=config.imperfect_depths)
    key_network, key_noise = jax.random.split(jax.random.key(config.seed))
    resolvent = hybridda.Resolvent(
        truth_model, dt=config.dt, steps_per_cycle=config.steps_per_cycle
    )
    start = truth_model.default_initial_state()
    rng = np.random.default_rng(config.seed)
    start = start + 1e-3 * jnp.asarray(rng.standard_normal(start.shape))
    truth = _truth_run(
        resolvent,
        start,
        config.spin_up_steps // config.steps_per_cycle,
        config.total_cycles,
    )
    truth = truth.reshape(truth.shape[0], -1)
    network = RandomQGPointObservation(
        physics, config.obs_count, GaussianError(config.obs_std), key_network
    )
    observation = StreamfunctionObservation(network)
    y = _observe(observation, truth, key_noise)
    B = channel_gaussian_covariance(
        physics, config.background_std, config.background_length, config.layer_correlation
    )
    truth = np.asarray(truth)
    if not np.all(np.isfinite(truth)):
        raise RuntimeError("The truth run blew up: use a smaller --dt.")
    return Twin(
        truth_model,
        physics,
        truth,
        np.asarray(y),
        observation,
        B,
        np.linalg.cholesky(B),
        float(metrics.climatological_std(truth)),
    )


def models(twin: Twin, config: Config, correction: QGCorrection) -> dict:
    """True, physical and hybrid models with one structure (zero correction for the first two)."""

    def resolvent(dynamics):
        inner = hybridda.Resolvent(dynamics, dt=config.dt, steps_per_cycle=config.steps_per_cycle)
        return StreamfunctionResolvent(inner)

    zero = with_zero_readout(correction)
    return {
        "true": ResolventCorrection(resolvent(twin.truth_model), zero),
        "imperfect": ResolventCorrection(resolvent(twin.physics), zero),
        "hybrid": ResolventCorrection(resolvent(twin.physics), correction),
    }


# ------------------------------------------------------------------ 4D-Var


@eqx.filter_jit
def _assimilate_chunk(model, observation, method, y, init, first_cycle, t0):
    trajectory = hybridda.assimilate_windows(
        model, observation, method, y, init, jax.random.key(0), t0=t0, first_cycle=first_cycle
    )
    return {
        "analysis": trajectory.analysis_mean,
        "forecast": trajectory.forecast_mean,
        "final_cost": trajectory.costs[:, -1],
        "first_cost": trajectory.costs[:, 0],
        "converged": trajectory.converged,
        "final": trajectory.final_ensemble,
    }


def _save_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def run_4dvar(
    model, twin: Twin, config: Config, first_window: int, windows: int, path: Path, progress: bool
) -> dict:
    """Cycled 4D-Var over `windows` windows from window `first_window`, in chunks.

    The background of the first window is the truth plus a draw from ``B``. Chunks are
    saved to `path` as they finish; an existing file (``--resume``) is continued.
    Returns numpy arrays (one row per window) and the wall time spent here.
    """
    from tqdm.auto import tqdm

    method = FourDVar(
        jnp.asarray(twin.background_covariance),
        window=config.window,
        outer_loops=config.outer_loops,
        inner_loops=config.inner_loops,
    )
    L, chunk = config.window, config.da_chunk_windows
    first_cycle = first_window * L
    parts = {}
    if path.is_file():
        with np.load(path) as saved:
            parts = {name: saved[name] for name in saved.files}
        state = parts.pop("state")
    else:
        rng = np.random.default_rng(config.seed + first_window)
        noise = twin.background_factor @ rng.standard_normal(twin.truth.shape[1])
        state = (twin.truth[first_cycle] + noise)[None]
    done = 0 if not parts else parts["analysis"].shape[0]
    seconds = float(parts.pop("seconds", 0.0))
    bar = tqdm(total=windows, initial=done, desc=path.stem, unit="window", disable=not progress)
    while done < windows:
        start = time.perf_counter()
        cycle = first_cycle + done * L
        out = _assimilate_chunk(
            model,
            twin.observation,
            method,
            jnp.asarray(twin.observations[cycle : cycle + chunk * L]),
            jnp.asarray(state),
            jnp.asarray(cycle),
            jnp.asarray(cycle * model.cycle_length),
        )
        out = jax.tree.map(np.asarray, out)
        state = out.pop("final")
        parts = {
            name: np.concatenate([parts[name], value]) if name in parts else value
            for name, value in out.items()
        }
        done += chunk
        seconds += time.perf_counter() - start
        _save_npz(path, {**parts, "state": state, "seconds": np.asarray(seconds)})
        bar.update(chunk)
    bar.close()
    truth = twin.truth[first_cycle + L : first_cycle + (windows + 1) * L : L]
    parts["rmse"] = np.asarray(metrics.rmse(truth, parts["analysis"]))
    parts["forecast_rmse"] = np.asarray(metrics.rmse(truth, parts["forecast"]))
    parts["seconds"] = seconds
    return parts


# ------------------------------------------------------------------ learning


@eqx.filter_jit
def _forecast_all(model, states):
    return jax.vmap(model)(states)


def scales(twin: Twin, analyses: np.ndarray, config: Config) -> tuple[float, float, float]:
    """Input scales (std of psi and PV of the analyses) and output scale (rms of the
    analysis residuals ``x_{j+1} - M^L(x_j)`` per cycle): from the data, not the truth."""
    physics = twin.physics
    pv = jax.vmap(lambda x: physics.pv_from_streamfunction(physics.to_fields(x)))(
        jnp.asarray(analyses)
    )
    model = Repeated(
        ResolventCorrection(
            StreamfunctionResolvent(
                hybridda.Resolvent(physics, dt=config.dt, steps_per_cycle=config.steps_per_cycle)
            ),
            lambda x: jnp.zeros_like(x),
        ),
        config.window,
    )
    forecasts = _forecast_all(model, jnp.asarray(analyses[:-1]))
    residuals = analyses[1:] - np.asarray(forecasts)
    return (
        float(np.std(analyses)),
        float(jnp.std(pv)),
        float(np.sqrt(np.mean(residuals**2))) / config.window,
    )


def train(hybrid, analyses: np.ndarray, config: Config, directory: Path, resume, progress):
    """Fit the correction to carry each window-end analysis to the next (Trainer)."""
    key_split, key_train = jax.random.split(jax.random.key(config.seed + 1))
    dataset = AnalysisDataset(analyses)
    train_set, validation_set = train_validation_split(
        dataset,
        config.validation_fraction,
        key=key_split,
        block_length=config.validation_block_windows,
        gap=1,
    )
    pairs, validation = rollout_pairs(train_set, 1), rollout_pairs(validation_set, 1)
    model = Repeated(hybrid, config.window)
    trainer = Trainer(
        model,
        pairs,
        validation,
        key=key_train,
        steps=config.steps,
        batch_size=min(config.batch_size, len(pairs)),
        learning_rate=config.learning_rate,
        trainable=network_only(model),
        eval_every=config.eval_every,
        patience=config.patience,
        checkpoint_dir=directory,
        max_to_keep=1,
        resume=resume and has_checkpoint(directory),
        config={"experiment": "farchi2021_qg"},
        progress=progress,
    )
    start = time.perf_counter()
    result = trainer.fit()
    history = result.history.as_dict()
    history["train_examples"], history["validation_examples"] = len(pairs), len(validation)
    history["seconds_this_process"] = time.perf_counter() - start
    return result.model.model, history


# ------------------------------------------------------------------ evaluation


@eqx.filter_jit
def _forecast_errors(model, truth, starts, initial_states, leads: int):
    skill = metrics.forecast_skill(model, truth, starts, leads, initial_states)
    return skill.rmse_per_start


@eqx.filter_jit
def _model_error(true_model, imperfect_model, hybrid, states):
    true_error = jax.vmap(true_model)(states) - jax.vmap(imperfect_model)(states)
    learnt = jax.vmap(hybrid.correction)(states)
    return true_error, learnt


def evaluate_forecasts(model_set: dict, twin: Twin, config: Config, analyses: np.ndarray):
    """RMSE against lead (in cycles) from the test analyses after the burn-in."""
    L = config.window
    windows = np.arange(config.burn_in_windows, config.test_windows)
    starts = config.test_start_cycle + (windows + 1) * L
    initial = jnp.asarray(analyses[windows])
    truth = jnp.asarray(twin.truth)
    curves = {}
    for name, model in model_set.items():
        per_start = _forecast_errors(
            model, truth, jnp.asarray(starts), initial, config.forecast_cycles
        )
        curves[name] = np.asarray(per_start).mean(axis=0)
    return curves, len(starts)


def evaluate_model_error(model_set: dict, twin: Twin, config: Config):
    """Learnt vs true one-cycle model error on true test states."""
    count = config.model_error_states
    cycles = config.test_start_cycle + np.linspace(
        0, config.test_windows * config.window, count, dtype=int
    )
    states = jnp.asarray(twin.truth[cycles])
    true_error, learnt = _model_error(
        model_set["true"], model_set["imperfect"], model_set["hybrid"], states
    )
    true_error, learnt = np.asarray(true_error), np.asarray(learnt)
    residual = np.sum((true_error - learnt) ** 2)
    return {
        "states": count,
        "true_rms": float(np.sqrt(np.mean(true_error**2))),
        "learnt_rms": float(np.sqrt(np.mean(learnt**2))),
        "explained_fraction": float(1.0 - residual / np.sum(true_error**2)),
        "correlation": float(np.corrcoef(true_error.ravel(), learnt.ravel())[0, 1]),
    }, (true_error[0], learnt[0])


# ------------------------------------------------------------------ outputs


def _plt():
    import matplotlib.pyplot as plt

    return plt


# Line colour and label of each model in the figures.
STYLES = {
    "imperfect": ("C3", "physical model"),
    "hybrid": ("C0", "hybrid (learnt)"),
    "true": ("k", "true model"),
}


def _curves_figure(path: Path, x, curves: dict, marker: float, labels: tuple) -> None:
    """One line per model against `x`, a dotted line at `marker`; labels: x, y, title."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name, (colour, label) in STYLES.items():
        axis.plot(x, curves[name], color=colour, label=label)
    axis.axvline(marker, color="grey", lw=0.8, ls=":")
    xlabel, ylabel, title = labels
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def figures(out: Path, result: dict, fields, config: Config, twin: Twin) -> None:
    _curves_figure(
        out / "rmse_vs_lead.png",
        result["forecast"]["lead_steps"],
        result["forecast"]["rmse"],
        config.target_lead_steps,
        (
            f"lead time (RK4 steps of {config.dt} = {config.dt * 27.8:.2f} h)",
            "streamfunction RMSE",
            "Forecasts from the test-period 4D-Var analyses",
        ),
    )
    series = result["analysis"]["series"]
    _curves_figure(
        out / "analysis_rmse.png",
        np.arange(len(series["true"])),
        series,
        config.burn_in_windows,
        (
            "test-period window",
            "analysis RMSE (window end)",
            "Cycled strong-constraint 4D-Var with each model",
        ),
    )

    plt = _plt()
    true_error, learnt = fields
    true_error = twin.physics.to_fields(jnp.asarray(true_error))
    learnt = twin.physics.to_fields(jnp.asarray(learnt))
    x, y = twin.physics.grid()
    limit = float(np.abs(np.asarray(true_error)).max())
    figure, axes = plt.subplots(2, 2, figsize=(12, 5.5), constrained_layout=True)
    for layer, layer_name in enumerate(("upper", "lower")):
        for column, (field, name) in enumerate(
            ((true_error, "true model error"), (learnt, "learnt correction"))
        ):
            axis = axes[layer, column]
            image = axis.pcolormesh(
                x, y, np.asarray(field[layer]), cmap="RdBu_r", vmin=-limit, vmax=limit
            )
            axis.set_title(f"{name}, {layer_name} layer (one cycle)")
            axis.set_aspect("equal")
            figure.colorbar(image, ax=axis, shrink=0.8)
    figure.savefig(out / "model_error.png", dpi=110)
    plt.close(figure)


def write_netcdf(out: Path, twin: Twin, config: Config, analyses: dict) -> None:
    import xarray as xr

    L = config.window
    cycles = config.test_start_cycle + L * (1 + np.arange(config.test_windows))
    x, y = twin.physics.grid()
    shape = (config.test_windows, 2, config.ny, config.nx)
    variables = {"truth": (("window", "layer", "y", "x"), twin.truth[cycles].reshape(shape))}
    for name, values in analyses.items():
        variables[f"analysis_{name}"] = (("window", "layer", "y", "x"), values.reshape(shape))
    dataset = xr.Dataset(
        variables,
        coords={
            "window": np.arange(config.test_windows),
            "time": ("window", cycles * config.dt * config.steps_per_cycle),
            "layer": [1, 2],
            "y": y,
            "x": x,
        },
        attrs={
            "description": "perturbation streamfunction at the end of each test-period "
            "4D-Var window: truth and the analyses with the true, physical and hybrid models",
            "source": "paper/farchi2021_qg_correction.py",
        },
    )
    dataset.to_netcdf(out / "test_analyses.nc")


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, network and training seed")
    parser.add_argument("--out", type=Path, help="results (default runs/farchi2021_qg[-quick])")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="DA chunks and training checkpoints (default checkpoints/farchi2021_qg[-quick])",
    )
    parser.add_argument("--quick", action="store_true", help="20 x 10 grid, short periods")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument("--train-windows", type=int, help="training-period windows (300)")
    parser.add_argument("--steps", type=int, help="training steps (1500)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or Path(f"runs/farchi2021_qg{suffix}")
    args.checkpoint_dir = args.checkpoint_dir or Path(f"checkpoints/farchi2021_qg{suffix}")
    args.progress = not args.no_progress
    return args


def make_config(args) -> Config:
    changes = dict(QUICK) if args.quick else {}
    if args.train_windows is not None:
        changes["train_windows"] = args.train_windows
    if args.steps is not None:
        changes["steps"] = args.steps
    config = Config(seed=args.seed, **changes)
    config.check()
    return config


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = make_config(args)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    prepare_run_directory(args.checkpoint_dir, dataclasses.asdict(config), resume=args.resume)
    # Wall time of each stage (DA: summed over resumed runs) and CPU time of this process:
    # the CPU time does not depend on other jobs sharing the machine.
    seconds, cpu_seconds = {}, {}
    clock = time.process_time()

    def lap(name):
        nonlocal clock
        cpu_seconds[name] = time.process_time() - clock
        clock = time.process_time()

    start = time.perf_counter()
    twin = make_twin(config)
    seconds["truth_and_observations"] = time.perf_counter() - start
    lap("truth_and_observations")
    key_network = jax.random.key(config.seed + 2)
    correction = build_correction(twin.physics, config, key_network)

    # 1. Cycled 4D-Var with the physical model over the training period: the data set.
    da_dir = args.checkpoint_dir / "da"
    physical = models(twin, config, correction)["imperfect"]
    training_da = run_4dvar(
        physical,
        twin,
        config,
        0,
        config.train_windows,
        da_dir / "train_imperfect.npz",
        args.progress,
    )
    seconds["da_training_period"] = training_da["seconds"]
    lap("da_training_period")
    analyses = training_da["analysis"]

    # 2. Offline learning of the correction from the analyses alone.
    psi_scale, pv_scale, output_scale = scales(twin, analyses, config)
    correction = eqx.tree_at(
        lambda c: (c.psi_scale, c.pv_scale, c.output_scale),
        correction,
        tuple(jnp.asarray(v) for v in (psi_scale, pv_scale, output_scale)),
    )
    hybrid = models(twin, config, correction)["hybrid"]
    hybrid, history = train(
        hybrid, analyses, config, args.checkpoint_dir / "train", args.resume, args.progress
    )
    seconds["training"] = history["seconds_this_process"]
    lap("training")
    model_set = models(twin, config, hybrid.correction)

    # 3. The independent test period: 4D-Var with each model, then forecasts.
    first_test_window = config.train_windows + config.gap_windows
    test_da = {}
    for name in ("imperfect", "hybrid", "true"):
        test_da[name] = run_4dvar(
            model_set[name],
            twin,
            config,
            first_test_window,
            config.test_windows,
            da_dir / f"test_{name}.npz",
            args.progress,
        )
        seconds[f"da_test_{name}"] = test_da[name]["seconds"]
        lap(f"da_test_{name}")
    start = time.perf_counter()
    curves, forecast_count = evaluate_forecasts(
        model_set, twin, config, test_da["imperfect"]["analysis"]
    )
    model_error, fields = evaluate_model_error(model_set, twin, config)
    seconds["evaluation"] = time.perf_counter() - start
    lap("evaluation")

    lead_index = config.target_lead_steps // config.steps_per_cycle
    burn = config.burn_in_windows
    analysis_rmse = {name: float(np.mean(da["rmse"][burn:])) for name, da in test_da.items()}
    at_lead = {name: float(curve[lead_index]) for name, curve in curves.items()}
    reduction = 1.0 - at_lead["hybrid"] / at_lead["imperfect"]
    result = {
        "forecast": {
            "lead_steps": (np.arange(config.forecast_cycles + 1) * config.steps_per_cycle).tolist(),
            "rmse": {name: curve.tolist() for name, curve in curves.items()},
            "starts": forecast_count,
            "initial_states": "test-period 4D-Var analyses with the physical model",
            "target_lead_steps": config.target_lead_steps,
            "rmse_at_target_lead": at_lead,
            "hybrid_reduction_at_target_lead": reduction,
            "target_met_30_percent": bool(reduction >= 0.3),
        },
        "analysis": {
            "rmse": analysis_rmse,
            "hybrid_below_imperfect": bool(analysis_rmse["hybrid"] < analysis_rmse["imperfect"]),
            "hybrid_reduction": 1.0 - analysis_rmse["hybrid"] / analysis_rmse["imperfect"],
            "background_rmse": {
                name: float(np.mean(da["forecast_rmse"][burn:])) for name, da in test_da.items()
            },
            "converged_fraction": {
                name: float(np.mean(da["converged"])) for name, da in test_da.items()
            },
            "series": {name: da["rmse"].tolist() for name, da in test_da.items()},
            "training_period_rmse": float(np.mean(training_da["rmse"][burn:])),
        },
        "model_error": model_error,
        "training": history,
        "scales": {"psi": psi_scale, "pv": pv_scale, "output_per_cycle": output_scale},
        "climatological_std": twin.climatological_std,
        "state_size": twin.truth.shape[1],
        "published": PUBLISHED,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figures(args.out, result, fields, config, twin)
    write_netcdf(args.out, twin, config, {n: d["analysis"] for n, d in test_da.items()})
    seconds["total_wall_this_process"] = time.perf_counter() - wall_start
    seconds["total_cpu_this_process"] = time.process_time() - cpu_start
    seconds["load_average_1min_at_end"] = os.getloadavg()[0]
    result["seconds"] = seconds
    result["cpu_seconds"] = cpu_seconds
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
    forecast, analysis = result["forecast"], result["analysis"]
    lead = config.target_lead_steps
    print(
        f"Farchi et al. (2021), QG {config.nx}x{config.ny}: physical model depths "
        f"{config.imperfect_depths} m vs truth (6000, 4000) m"
    )
    print(f"{'quantity':<44}{'true':>9}{'physical':>10}{'hybrid':>9}")
    rmse = forecast["rmse_at_target_lead"]
    print(
        f"{f'forecast RMSE at {lead} steps':<44}{rmse['true']:>9.4f}{rmse['imperfect']:>10.4f}"
        f"{rmse['hybrid']:>9.4f}"
    )
    if config.forecast_steps != lead:
        final = {name: curve[-1] for name, curve in forecast["rmse"].items()}
        print(
            f"{f'forecast RMSE at {config.forecast_steps} steps':<44}{final['true']:>9.4f}"
            f"{final['imperfect']:>10.4f}{final['hybrid']:>9.4f}"
        )
    a = analysis["rmse"]
    print(
        f"{'4D-Var analysis RMSE (test period)':<44}{a['true']:>9.4f}{a['imperfect']:>10.4f}"
        f"{a['hybrid']:>9.4f}"
    )
    error = result["model_error"]
    print(
        f"model error learnt: {100 * error['explained_fraction']:.0f} % of its variance "
        f"(correlation {error['correlation']:.2f})"
    )
    print("ours vs published (qualitative claims of the paper):")
    print(
        f"  forecasts: hybrid {100 * forecast['hybrid_reduction_at_target_lead']:.0f} % below "
        f"the physical model at {lead} steps (target >= 30 %) | {PUBLISHED['forecast']}"
    )
    print(
        f"  analyses:  hybrid {100 * analysis['hybrid_reduction']:.0f} % below the physical "
        f"model | {PUBLISHED['analysis']}"
    )
    print(
        f"  model error: {100 * error['explained_fraction']:.0f} % explained | "
        f"{PUBLISHED['model_error_learnt']}"
    )
    seconds = result["seconds"]
    wall, cpu = seconds["total_wall_this_process"], seconds["total_cpu_this_process"]
    print(f"wall {wall:.0f} s (CPU {cpu:.0f} s, load {seconds['load_average_1min_at_end']:.1f})")


if __name__ == "__main__":
    main()
