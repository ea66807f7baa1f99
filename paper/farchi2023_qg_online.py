"""Farchi et al. (2023, 2024): online learning of the QG model error inside 4D-Var.

Reproduction, on the two-layer QG channel of `paper/farchi2021_qg_correction.py` (whose
twin, observations, 4D-Var, network and offline training this script imports), of

- Farchi, Chrust, Bocquet, Laloyaux and Bonavita (2023), Online model error correction
  with neural networks in the incremental 4D-Var framework, *J. Adv. Model. Earth Syst.*
  15, e2022MS003474: the parameters of the correction network are part of the 4D-Var
  control and are updated at every window ("online"); online learning does at least as
  well as offline learning from the same observations;
- Farchi et al. (2024), the hybrid (physics + network) model of ECMWF's IFS: the
  pipeline "pre-train the correction offline on a data set of analyses, then continue
  training it online", with the gain of each stage (title and settings not at hand here;
  only this claim is compared).

**Twin** (the offline script's). Truth ``QG()`` (depths 6000 / 4000 m), physical model
``QG().perturbed(depths=(5500, 4500))``, 40 x 20 grid, RK4 ``dt = 0.05``, 2 steps per
cycle; state: the perturbation streamfunction of both layers (n = 1600). Every cycle
100 random grid points (random layer) observe the streamfunction (std 0.05). A training
period of `train_windows` 4D-Var windows of `window` = 4 cycles; every method below
sees only these observations.

**4D-Var.** The offline script's strong-constraint 4D-Var (static Gaussian-correlated
``B``, Gauss-Newton `outer_loops` x `inner_loops` CG, `FourDVar`'s minimiser) over
windows of `window` cycles; the first background of every run is the same (truth + a
draw from ``B``), then each window's background is the previous window's analysis at its
end. Every DA run of this script, with the physical model too, is the one compiled
function of the online 4D-Var below: with the physical model its network is the zero
correction frozen by ``σ = 10⁻¹² σ_online`` (the θ part of the Gauss-Newton problem is
then decoupled and stays at θ_b, and the state part is the strong 4D-Var of the
physical model). One compilation instead of two, and faster per window here than the
offline script's `assimilate_windows` path (0.6 against 1.8 s per window, 20 windows
of each on 40 x 20, measured once side by side on 2 shared cores).

**Hybrid model and network** (the offline script's): ``x⁺ = M(x) + c_θ(x)`` every cycle
(`hybridda.ResolventCorrection`), ``c_θ`` a float32 `hybridda.nn.ChannelCNN` of the
streamfunction and PV of both layers, the orography and the latitude, with input and
output scales from the physical-model analyses of the training period (three numbers,
the same for every hybrid). θ: all the network's weights and biases.

**Stages** (all on the same observations):

1. *physical*: the physical model (``c = 0``);
2. *offline*: the offline script's pipeline: cycled 4D-Var with the physical model over
   the training period, then the correction trained (Adam, early stopping) to carry each
   window-end analysis to the next one through `window` cycles of the hybrid;
3. *online*: from scratch (zero readout: ``c_θ = 0``, the physical model), one pass of
   online 4D-Var over the training period. Each window minimises
   `hybridda.variational.WithModelParameters` around the window's `StrongFourDVar`
   (``--constraint weak``: `WeakFourDVar`, ``Q`` = (`model_error_std` / `background_std`)²
   ``B`` per cycle), control ``(x0, θ)``:

       J = ½‖x0 - x_b‖²_B⁻¹ + ½Σ‖y_k - H_k(M_θ^k(x0))‖²_R⁻¹ + ½‖(θ - θ_b)/σ‖²,

   with the same Gauss-Newton minimiser (`outer_loops` x `inner_loops` CG, tangent-linear
   and adjoint of the network by JAX). θ_b is the previous window's θ; σ is per
   parameter, `parameter_std` times the rms of the random initial weights of its layer
   (how far one window may move θ; 1: see `Config` for how it was chosen), the same in
   every window as in the papers, or shrinking as σ / √(1 + w / w0) with
   ``--parameter-std-decay w0`` (over long periods a constant σ lets θ random-walk away:
   paper/README.md), or per parameter by the information the windows have given about
   it, ``P⁻¹ ← P⁻¹ + κ diag(JᵀJ)`` with ``--information-scale κ`` (Hutchinson estimate,
   `hybridda.learn.online_fourdvar`'s `accumulate_information`); x_b is the previous
   window's analysis at its end.
   *With* ``--online-method replay`` θ is not in the control: each window runs the
   4D-Var above with the current hybrid, its pair (background, window-end analysis) (the
   offline training pair) joins a buffer of the last `replay_buffer_windows` windows,
   and `replay_steps` Adam steps on minibatches of the buffer follow
   (`hybridda.learn.online_replay_fourdvar`); the online network evaluated is the moving
   average of θ over the windows (`replay_average_decay`). The DA → ML iteration of the
   offline pipeline, run online with the improving model;
4. *offline + online*: the same online 4D-Var, started from the offline-trained network
   (θ_b of the first window = the pre-trained θ), the pipeline of Farchi et al. (2024),
   with its own σ from ``--finetune-std`` (default: the same σ, which spoils the
   pre-trained network; 0.1 keeps it). With ``--online-method replay`` (learning rate
   `replay_finetune_learning_rate`), its replay buffer starts as the offline data set,
   every window's (background, analysis) pair of the physical model's 4D-Var, and as
   the pass reaches window w its pair is replaced by the one from the current hybrid's
   4D-Var (``--finetune-buffer empty``: an empty buffer, as from scratch);

plus the true model as the floor. The window-end analyses of the online runs are the
"4D-Var analysis RMSE during the online period", compared with those of 4D-Var with the
physical model (the offline data set) on the same windows.

**Evaluation** on an independent test period (after `gap_windows` windows): RMSE
against lead time of forecasts from the *true* test states (one start per window) up to
`forecast_steps` = 48 RK4 steps with each model, and the learnt against the true
one-cycle model error ``M_true(x) - M_physical(x)`` on true test states; also after
every chunk of online windows (the learning curve). RMSEs are of the perturbation
streamfunction over both layers (unit 10^7 m²/s; clim. std about 1.25).

Deviations (every setting is in ``config.json``). The papers' settings are ECMWF's
(OOPS QG, then the IFS); ours are the offline script's twin with shorter periods to fit
about 40 min on 2 shared CPU cores: 120 training windows (56 days) instead of the
offline script's 300, a (16, 16) CNN instead of (32, 32, 32), 300 Adam steps at most,
forecasts from true states (no test-period 4D-Var). Online learning here is one pass
over the training period (the papers cycle much longer); the tangent-linear and adjoint
of the network with respect to the state and θ are exact (JAX), whatever simplification
the 2023 paper's "simplified" method makes (its details were not at hand); strong
4D-Var for the state, the network being the model error (``--constraint weak`` adds a
model-error forcing η per cycle). The offline data set is the 4D-Var analyses only (no
analysis-increment training). ``--quick`` (used by the tests) runs the
offline script's quick twin (20 x 10 grid, 2 x 6 Gauss-Newton iterations, 80 Adam steps)
over 24 windows: every stage, mostly compilation (one 4D-Var, one training step, the
forecasts).

Checkpoints (``--checkpoint-dir``, default ``checkpoints/farchi2023_qg_online``): every
DA run after each chunk of `da_chunk_windows` windows (``physical/``, ``online/``,
``offline_online/``) and the offline training (``train/``); ``--resume`` continues a
killed run with the same settings.

Usage::

    python paper/farchi2023_qg_online.py            # full run (23 min on 2 shared cores)
    python paper/farchi2023_qg_online.py --quick    # small, for the tests
    python paper/farchi2023_qg_online.py --resume   # continue a killed run
    python paper/farchi2023_qg_online.py --train-windows 480 --online-method replay
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from hybridda._parameters import partition_learnt, with_learnt  # noqa: E402
from hybridda.checkpoint import has_checkpoint, prepare_run_directory, resume_or_init  # noqa: E402
from hybridda.learn import ReplayState, online_fourdvar, online_replay_fourdvar  # noqa: E402
from hybridda.variational import FourDVar  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import farchi2021_qg_correction as offline  # noqa: E402

PUBLISHED = {
    "online_vs_offline": "online learning at least as good as offline learning from the "
    "same observations (Farchi et al. 2023)",
    "pipeline": "offline pre-training then online training: each stage improves the "
    "forecasts (Farchi et al. 2024)",
}

# σ of the physical-model 4D-Var, relative to the online σ: θ frozen at c = 0 (σ → 0: the
# θ part of the minimisation is decoupled, and the state part is strong 4D-Var exactly).
FROZEN = 1e-12

# Adam for `--online-method replay`, one object with the learning rate in its state (set
# per stage), so that the online and the offline + online stages share one compilation.
REPLAY_OPTIMISER = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

# The models compared, in the order of the tables and figures.
NAMES = ("physical", "offline", "online", "offline_online", "true")


@dataclasses.dataclass(frozen=True)
class Config(offline.Config):
    """The offline script's settings (twin, 4D-Var, network, offline training) with
    shorter periods, plus those of the online 4D-Var."""

    train_windows: int = 120
    gap_windows: int = 5
    test_windows: int = 40
    widths: tuple[int, ...] = (16, 16)
    steps: int = 300
    eval_every: int = 25
    # Online: 4D-Var windows with θ in the control (same B, window, minimiser).
    constraint: str = "strong"
    model_error_std: float = 0.004
    # A pilot (seed 1, 40 windows; one-cycle model error explained on its true test
    # states): 0.3 -> 0 %, 1 -> 3 %, 3 -> 45 % (but analyses 5 % worse than the physical
    # model's and growing θ steps), 10 -> diverged (-313 %). The full run first used 2 (a
    # margin from 3): over 120 windows θ random-walks and the correction overshoots
    # (worse than the physical model, paper/README.md); halved to 1, it learns steadily.
    parameter_std: float = 1.0
    # σ of the offline + online stage (relative, as `parameter_std`; None: the same σ).
    # Fine-tuning a trained network with the from-scratch σ spoils it (paper/README.md).
    finetune_std: float | None = None
    # w0 > 0: window w uses σ / sqrt(1 + w / w0) (`online_fourdvar`'s
    # `parameter_std_decay`); 0: the same σ in every window, as in the papers.
    parameter_std_decay: float = 0.0
    # κ > 0: each parameter's σ shrinks by the accumulated diagonal Gauss-Newton
    # information of the windows (`online_fourdvar`'s `accumulate_information`, with
    # `information_probes` Hutchinson probes); 0: off. Exclusive with the decay.
    information_scale: float = 0.0
    information_probes: int = 4
    # "control": θ in every window's 4D-Var control, as above (`online_fourdvar`);
    # "replay": θ not in the control; 4D-Var with the current hybrid every window, its
    # (background, window-end analysis) pair into a buffer of the last
    # `replay_buffer_windows` windows, `replay_steps` Adam steps on minibatches of the
    # buffer per window, θ averaged over the windows with `replay_average_decay`
    # (`online_replay_fourdvar`). Chosen with a driver over 480 windows (one-cycle model
    # error explained by the last θ / its moving average; offline 80 %): buffer 60, 74 %
    # / (not computed); buffer 120, 79 % / 82 %.
    online_method: str = "control"
    replay_buffer_windows: int = 120
    replay_steps: int = 4
    replay_batch_size: int = 16
    replay_learning_rate: float = 1e-3
    replay_finetune_learning_rate: float = 1e-4
    replay_average_decay: float = 0.99
    # The buffer of the offline + online stage with "replay": "data-set", the offline
    # data set (the physical model's analyses: every window's pair, window w's replaced
    # by its new analysis as the pass reaches it); "empty": an empty buffer of
    # `replay_buffer_windows`. Measured (seed 0, 480 windows, paper/README.md), one-cycle
    # model error explained after the first chunk / at the end (offline 80 %): empty
    # 71 / 80 % (24-step RMSE 1.02 x offline); data set 80 / 82 % (0.97 x offline).
    replay_finetune_buffer: str = "data-set"

    @property
    def finetune_sigma(self) -> float:
        return self.parameter_std if self.finetune_std is None else self.finetune_std

    @property
    def chunks(self) -> int:
        return self.train_windows // self.da_chunk_windows

    def check(self) -> None:
        super().check()
        if self.constraint not in ("strong", "weak"):
            raise SystemExit("--constraint must be 'strong' or 'weak'.")
        if min(self.model_error_std, self.parameter_std, self.finetune_sigma) <= 0:
            raise SystemExit("model_error_std, parameter_std and finetune_std must be > 0.")
        if self.parameter_std_decay < 0:
            raise SystemExit("parameter_std_decay must be >= 0 (0: constant σ).")
        if self.information_scale < 0 or self.information_probes < 1:
            raise SystemExit("information_scale must be >= 0 (0: off), information_probes >= 1.")
        if self.information_scale > 0 and self.parameter_std_decay > 0:
            raise SystemExit("Choose --parameter-std-decay or --information-scale, not both.")
        if self.online_method not in ("control", "replay"):
            raise SystemExit("--online-method must be 'control' or 'replay'.")
        if min(self.replay_buffer_windows, self.replay_steps, self.replay_batch_size) < 1:
            raise SystemExit("The replay buffer, steps and batch size must be >= 1.")
        if min(self.replay_learning_rate, self.replay_finetune_learning_rate) <= 0:
            raise SystemExit("The replay learning rates must be > 0.")
        if not 0 <= self.replay_average_decay < 1:
            raise SystemExit("replay_average_decay must be in [0, 1).")
        if self.replay_finetune_buffer not in ("data-set", "empty"):
            raise SystemExit("--finetune-buffer must be 'data-set' or 'empty'.")


QUICK = {
    **offline.QUICK,
    "train_windows": 24,
    "gap_windows": 2,
    "test_windows": 12,
    "da_chunk_windows": 12,
    "replay_batch_size": 8,
    # = train_windows: the same runs as 120 (the buffer never wraps), and the buffer of
    # offline + online (the data set, one pair per window) has the same shape, so both
    # stages share one compiled program.
    "replay_buffer_windows": 24,
}


# ------------------------------------------------------------------ online 4D-Var


def learnt_network(model):
    """θ's part of a hybrid (`ResolventCorrection`): the layers of the correction's CNN."""
    return model.correction.network.layers


def parameter_std(model, network, relative: float) -> jnp.ndarray:
    """σ per parameter (in the order of θ): `relative` x the rms of the weights of its
    layer in `network` (the random initial network; the online start's readout is 0)."""
    scaled = []
    for layer in network.layers:
        scale = relative * float(jnp.sqrt(jnp.mean(jnp.asarray(layer.conv.weight, float) ** 2)))
        scaled.append(jax.tree.map(lambda a, s=scale: jnp.full_like(a, s), layer))
    sigma_model = eqx.tree_at(learnt_network, model, tuple(scaled))
    return partition_learnt(sigma_model, learnt_network)[0].astype(float)


def theta_of(model) -> jnp.ndarray:
    return partition_learnt(model, learnt_network)[0]


def with_theta(model, theta):
    return with_learnt(model, learnt_network, jnp.asarray(theta))


def fourdvar(twin, config: Config) -> FourDVar:
    """The offline script's 4D-Var window (Gauss-Newton, its loops and ``B``), weak with
    ``Q = (σ_q / σ_b)² B`` when `config.constraint` is ``"weak"``."""
    B = jnp.asarray(twin.background_covariance)
    Q = (config.model_error_std / config.background_std) ** 2 * B
    return FourDVar(
        B,
        window=config.window,
        outer_loops=config.outer_loops,
        inner_loops=config.inner_loops,
        model_error_covariance=Q if config.constraint == "weak" else None,
    )


def first_background(twin, config) -> np.ndarray:
    """The first background of every DA run: the offline script's (truth + draw of B)."""
    rng = np.random.default_rng(config.seed)
    return twin.truth[0] + twin.background_factor @ rng.standard_normal(twin.truth.shape[1])


def learn_online(
    name,
    start_model,
    sigma,
    twin,
    model_set,
    config: Config,
    args,
    decay=None,
    information=False,
    replay_learning_rate=None,
    replay_data=None,
):
    """One pass of online 4D-Var over the training period from `start_model`, in
    checkpointed chunks of `da_chunk_windows` windows; σ shrinks with `decay` (w0) or,
    with `information` and ``config.information_scale > 0``, by accumulated information.
    With a `replay_learning_rate`, θ is learnt from the replayed analyses instead
    (`online_replay_fourdvar`, Adam with that rate; `sigma` unused), and the history's
    ``theta`` is the moving average of θ; its buffer is empty, or with `replay_data`
    ``(inputs, targets)`` of shape ``(W, n)``, that data set (window w replaces pair w).

    Returns the history (numpy arrays) and whether the pass is complete.
    """
    replay = replay_learning_rate is not None
    W, L, chunk = config.train_windows, config.window, config.da_chunk_windows
    buffer = config.replay_buffer_windows if replay_data is None else W
    y = jnp.asarray(twin.observations[: W * L].reshape(W, L, -1))
    method = fourdvar(twin, config)
    curve_states = model_error_states(twin, config)

    def init_state():
        state = {
            "background": jnp.asarray(first_background(twin, config)),
            "theta": theta_of(start_model),
            # The diagonal of P⁻¹ carried between chunks (used with --information-scale).
            "precision": jnp.broadcast_to(
                1.0 / jnp.asarray(sigma) ** 2, theta_of(start_model).shape
            ),
            "window_end": jnp.zeros((W, twin.truth.shape[1])),
            "cost_before": jnp.zeros(W),
            "cost_after": jnp.zeros(W),
            "parameter_step": jnp.zeros(W),
            "curve_explained": jnp.zeros(config.chunks),
            "chunk_seconds": jnp.zeros(config.chunks),
        }
        if replay:  # the learner's state; "parameter_step" holds the training loss
            inputs, targets = (None, None) if replay_data is None else replay_data
            state["replay"] = ReplayState.start(
                state["background"],
                state["theta"],
                REPLAY_OPTIMISER,
                buffer,
                inputs=inputs,
                targets=targets,
            )
            rate = jnp.asarray(replay_learning_rate, state["theta"].dtype)
            state["replay"].optimiser_state.hyperparams["learning_rate"] = rate
            state["curve_explained_last"] = jnp.zeros(config.chunks)
        return state

    directory = args.checkpoint_dir / name
    state, done, checkpointer = resume_or_init(
        directory,
        init_state,
        # A run that had not started when the process stopped starts afresh.
        resume=args.resume and has_checkpoint(directory),
        config=dataclasses.asdict(config),
        max_to_keep=2,
    )
    firsts = list(range(done, W, chunk))
    if args.stop_after_chunks is not None:
        firsts = firsts[: args.stop_after_chunks]
    bar = tqdm(
        firsts,
        desc=f"{name} 4D-Var windows",
        unit="chunk",
        initial=done // chunk,
        total=config.chunks,
        disable=not args.progress,
    )
    with checkpointer:
        for first in bar:
            last = first + chunk
            tic = time.perf_counter()
            accumulate = {}
            if information and config.information_scale > 0:
                accumulate = {
                    "accumulate_information": True,
                    "parameter_precision": state["precision"],
                    "information_scale": config.information_scale,
                    "information_probes": config.information_probes,
                    "key": jax.random.key(config.seed + 5),
                }
            extra = {}
            if replay:
                learner, record = online_replay_fourdvar(
                    method,
                    start_model,
                    twin.observation,
                    y[first:last],
                    where=learnt_network,
                    optimiser=REPLAY_OPTIMISER,
                    key=jax.random.key(config.seed + 6),
                    state=state["replay"],
                    buffer_windows=buffer,
                    steps_per_window=config.replay_steps,
                    batch_size=config.replay_batch_size,
                    average_decay=config.replay_average_decay,
                    first_window=first,
                )
                background, theta, precision = learner.background, learner.average, None
                ends, before, after, step = record[:4]  # step: the training loss
                last_explained = explained_fraction(
                    model_set, with_theta(start_model, learner.parameters), curve_states
                )
                extra = {
                    "replay": learner,
                    "curve_explained_last": state["curve_explained_last"]
                    .at[first // chunk]
                    .set(last_explained),
                }
            else:
                (background, theta, precision), record = online_fourdvar(
                    method,
                    start_model,
                    twin.observation,
                    state["background"],
                    y[first:last],
                    where=learnt_network,
                    parameter_std=sigma,
                    parameter_std_decay=decay,
                    parameters=state["theta"],
                    first_window=first,
                    **accumulate,
                )
                ends, before, after, step = record[:4]
            jax.block_until_ready(theta)
            seconds = time.perf_counter() - tic
            index = first // chunk
            explained = explained_fraction(model_set, with_theta(start_model, theta), curve_states)
            state = {
                **extra,
                "background": background,
                "theta": theta,
                "precision": state["precision"] if precision is None else precision,
                "window_end": state["window_end"].at[first:last].set(ends),
                "cost_before": state["cost_before"].at[first:last].set(before),
                "cost_after": state["cost_after"].at[first:last].set(after),
                "parameter_step": state["parameter_step"].at[first:last].set(step),
                "curve_explained": state["curve_explained"].at[index].set(explained),
                "chunk_seconds": state["chunk_seconds"].at[index].set(seconds),
            }
            checkpointer.save(last, state, force=True)
            truth_ends = twin.truth[L * np.arange(first + 1, last + 1)]
            rmse = np.sqrt(np.mean((np.asarray(ends) - truth_ends) ** 2))
            bar.set_postfix(rmse_end=f"{rmse:.4f}", explained=f"{explained:.2f}")
            done = last
    return {k: np.asarray(v) for k, v in state.items() if k != "replay"}, done >= W


# ------------------------------------------------------------------ evaluation


def model_error_states(twin, config: Config) -> jnp.ndarray:
    """True test states on which the one-cycle model error is scored."""
    cycles = config.test_start_cycle + np.linspace(
        0, config.test_windows * config.window, config.model_error_states, dtype=int
    )
    return jnp.asarray(twin.truth[cycles])


def explained_fraction(model_set: dict, hybrid, states) -> float:
    """Fraction of the true one-cycle model error's variance that `hybrid` explains."""
    true_error, learnt = offline._model_error(
        model_set["true"], model_set["physical"], hybrid, states
    )
    return float(1.0 - jnp.sum((true_error - learnt) ** 2) / jnp.sum(true_error**2))


def evaluate(model_set: dict, twin, config: Config):
    """Forecast RMSE against lead (cycles) from the true test states (one start per
    window), and the learnt vs true one-cycle model error of each hybrid."""
    starts = config.test_start_cycle + config.window * np.arange(config.test_windows)
    truth = jnp.asarray(twin.truth)
    initial = truth[starts]
    curves = {
        name: np.asarray(
            offline._forecast_errors(
                model, truth, jnp.asarray(starts), initial, config.forecast_cycles
            )
        ).mean(axis=0)
        for name, model in model_set.items()
    }
    states = model_error_states(twin, config)
    errors, fields = {}, {}
    for name in ("offline", "online", "offline_online"):
        true_error, learnt = offline._model_error(
            model_set["true"], model_set["physical"], model_set[name], states
        )
        true_error, learnt = np.asarray(true_error), np.asarray(learnt)
        residual = np.sum((true_error - learnt) ** 2)
        errors[name] = {
            "learnt_rms": float(np.sqrt(np.mean(learnt**2))),
            "explained_fraction": float(1.0 - residual / np.sum(true_error**2)),
            "correlation": float(np.corrcoef(true_error.ravel(), learnt.ravel())[0, 1]),
        }
        fields[name] = learnt[0]
    errors["true_rms"] = float(np.sqrt(np.mean(true_error**2)))
    errors["states"] = config.model_error_states
    fields["true"] = true_error[0]
    return curves, len(starts), errors, fields


# ------------------------------------------------------------------ outputs

STYLES = {
    "physical": ("C3", "physical model"),
    "offline": ("C0", "offline (4D-Var analyses)"),
    "online": ("C2", "online, from scratch"),
    "offline_online": ("C4", "offline pre-trained + online"),
    "true": ("k", "true model"),
}


def figures(out: Path, result: dict, histories: dict, fields: dict, twin, config) -> None:
    import matplotlib.pyplot as plt

    forecast = result["forecast"]
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name in NAMES:
        colour, label = STYLES[name]
        axis.plot(forecast["lead_steps"], forecast["rmse"][name], color=colour, label=label)
    axis.set(
        xlabel=f"lead time (RK4 steps of {config.dt} = {config.dt * 27.8:.2f} h)",
        ylabel="streamfunction RMSE",
        title="Forecasts from the true test states",
    )
    axis.legend()
    axis.grid(alpha=0.3)
    figure.savefig(out / "rmse_vs_lead.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 3, figsize=(17, 4.2), constrained_layout=True)
    windows = np.arange(1, config.train_windows + 1)
    analysis = result["analysis"]["window_end_rmse"]
    for name in ("physical", "online", "offline_online"):
        colour, label = STYLES[name]
        axes[0].plot(windows, analysis[name], color=colour, lw=0.8, label=label)
    axes[0].set(xlabel="training window", ylabel="4D-Var analysis RMSE (window end)")
    axes[0].legend(fontsize=8)
    for name in ("online", "offline_online"):
        colour, label = STYLES[name]
        history = histories[name]
        axes[1].semilogy(windows, history["parameter_step"], color=colour, lw=0.7, label=label)
        chunk_windows = config.da_chunk_windows * np.arange(1, config.chunks + 1)
        axes[2].plot(chunk_windows, history["curve_explained"], "o-", color=colour, label=label)
    step_label = (
        "training loss (minibatch misfit)"
        if config.online_method == "replay"
        else "rms whitened θ step, |θ - θ_b| / σ"
    )
    axes[1].set(xlabel="training window", ylabel=step_label)
    axes[1].legend(fontsize=8)
    offline_explained = result["model_error"]["offline"]["explained_fraction"]
    axes[2].axhline(offline_explained, color="C0", ls="--", label=STYLES["offline"][1])
    axes[2].set(xlabel="training window", ylabel="one-cycle model error explained (test)")
    axes[2].legend(fontsize=8)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.savefig(out / "online_learning.png", dpi=110)
    plt.close(figure)

    shown = ("true", "offline", "online", "offline_online")
    maps = {name: np.asarray(twin.physics.to_fields(jnp.asarray(fields[name]))) for name in shown}
    x, y = twin.physics.grid()
    limit = float(np.abs(maps["true"]).max())
    figure, axes = plt.subplots(2, 4, figsize=(20, 5.5), constrained_layout=True)
    for layer, layer_name in enumerate(("upper", "lower")):
        for column, name in enumerate(shown):
            label = "true model error" if name == "true" else STYLES[name][1]
            axis = axes[layer, column]
            image = axis.pcolormesh(x, y, maps[name][layer], cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.set_title(f"{label}, {layer_name} layer", fontsize=9)
            axis.set_aspect("equal")
            figure.colorbar(image, ax=axis, shrink=0.8)
    figure.savefig(out / "model_error.png", dpi=110)
    plt.close(figure)


def print_table(result: dict, config: Config) -> None:
    forecast = result["forecast"]
    print(
        f"Farchi et al. (2023, 2024), QG {config.nx}x{config.ny}: online / offline / "
        f"pre-trained + online correction, {config.train_windows} training windows"
    )
    leads = list(next(iter(forecast["rmse_at"].values())))
    print(f"{'forecast RMSE at lead (RK4 steps)':<36}" + "".join(f"{k:>9}" for k in leads))
    for name in NAMES:
        values = forecast["rmse_at"][name].values()
        print(f"  {STYLES[name][1]:<34}" + "".join(f"{v:>9.4f}" for v in values))
    error = result["model_error"]
    print(
        "one-cycle model error explained (true test states): "
        + ", ".join(
            f"{n} {100 * error[n]['explained_fraction']:.0f} %"
            for n in ("offline", "online", "offline_online")
        )
    )
    analysis = result["analysis"]["second_half_mean"]
    print(
        "4D-Var analysis RMSE, second half of the training period: "
        + ", ".join(f"{n} {v:.4f}" for n, v in analysis.items())
    )
    for key, verdict in result["comparisons"].items():
        print(
            f"  {key}: RMSE ratio at {list(verdict['ratio_at'])} steps: "
            + ", ".join(f"{v:.2f}" for v in verdict["ratio_at"].values())
        )
    for key, claim in PUBLISHED.items():
        print(f"  published ({key}): {claim}")
    s = result["seconds"]
    print(
        f"wall {s['total_wall_this_process']:.0f} s (CPU {s['total_cpu_this_process']:.0f} s, "
        f"load {s['load_average_1min_at_end']:.1f})"
    )


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, network and training seed")
    parser.add_argument("--out", type=Path, help="results (default runs/farchi2023_qg_online)")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="checkpoints (default checkpoints/farchi2023_qg_online[-quick])",
    )
    parser.add_argument("--quick", action="store_true", help="20 x 10 grid, 24 windows")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument("--train-windows", type=int, help="training-period windows (120)")
    parser.add_argument("--constraint", choices=("strong", "weak"), help="4D-Var (strong)")
    parser.add_argument("--parameter-std", type=float, help="σ / initial weight rms (1)")
    parser.add_argument(
        "--finetune-std", type=float, help="σ of offline + online (default: --parameter-std)"
    )
    parser.add_argument(
        "--parameter-std-decay", type=float, help="w0: σ / sqrt(1 + w / w0) (0: constant)"
    )
    parser.add_argument(
        "--information-scale",
        type=float,
        help="κ: σ shrinks per parameter by κ × the windows' Gauss-Newton information (0: off)",
    )
    parser.add_argument(
        "--online-method",
        choices=("control", "replay"),
        help="θ in the 4D-Var control (control, default) or trained on replayed analyses",
    )
    parser.add_argument(
        "--finetune-buffer",
        dest="replay_finetune_buffer",
        choices=("data-set", "empty"),
        help="replay: offline + online starts from the offline data set (default) or empty",
    )
    parser.add_argument(
        "--stop-after-chunks", type=int, help="stop after this many chunks (to test --resume)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or Path(f"runs/farchi2023_qg_online{suffix}")
    args.checkpoint_dir = args.checkpoint_dir or Path(f"checkpoints/farchi2023_qg_online{suffix}")
    args.progress = not args.no_progress
    return args


def make_config(args) -> Config:
    changes = dict(QUICK) if args.quick else {}
    for name in (
        "train_windows",
        "constraint",
        "parameter_std",
        "finetune_std",
        "parameter_std_decay",
        "information_scale",
        "online_method",
        "replay_finetune_buffer",
    ):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = Config(seed=args.seed, **changes)
    config.check()
    return config


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    config = make_config(args)
    prepare_run_directory(args.checkpoint_dir, dataclasses.asdict(config), resume=args.resume)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    seconds = {}

    # 1. Twin, and 4D-Var with the physical model over the training period (the offline
    # data set, and the scales of the network's inputs and output): the online 4D-Var
    # with the zero correction frozen (σ → 0), so that every DA run is the same function.
    start = time.perf_counter()
    twin = offline.make_twin(config)
    seconds["truth_and_observations"] = time.perf_counter() - start
    key_network = jax.random.key(config.seed + 2)
    network = offline.build_network(config, key_network)
    correction = offline.build_correction(twin.physics, config, key_network, network)
    zero_start = offline.models(twin, config, correction)["hybrid"]  # c = 0
    sigma = parameter_std(zero_start, network, config.parameter_std)
    model_set = {"physical": zero_start, "true": offline.models(twin, config, correction)["true"]}
    start = time.perf_counter()
    histories = {}
    histories["physical"], complete = learn_online(
        "physical", zero_start, FROZEN * sigma, twin, model_set, config, args
    )
    seconds["da_physical"] = time.perf_counter() - start
    if not complete:
        print("stopped before the end of the training period; continue with --resume")
        return None
    analyses = histories["physical"]["window_end"]
    scales = offline.scales(twin, analyses, config)
    correction = eqx.tree_at(
        lambda c: (c.psi_scale, c.pv_scale, c.output_scale),
        correction,
        tuple(jnp.asarray(v) for v in scales),
    )
    base = offline.models(twin, config, correction)
    model_set = {"physical": base["imperfect"], "true": base["true"]}
    zero_start = base["hybrid"]  # zero readout: c = 0, the physical model

    # 2. Offline: the correction trained on the analyses (the offline script's training).
    trained, training = offline.train(
        zero_start, analyses, config, args.checkpoint_dir / "train", args.resume, args.progress
    )
    seconds["offline_training"] = training["seconds_this_process"]
    model_set["offline"] = trained

    # 3-4. Online learning from scratch and from the pre-trained network.
    finetune = parameter_std(zero_start, network, config.finetune_sigma)
    decay = config.parameter_std_decay or None
    replay = config.online_method == "replay"
    # The offline data set as replay pairs: window w's (background, analysis at its end).
    data_set = None
    if replay and config.replay_finetune_buffer == "data-set":
        backgrounds = np.concatenate([first_background(twin, config)[None], analyses[:-1]])
        data_set = (jnp.asarray(backgrounds), jnp.asarray(analyses))
    for name, start_model, std, rate, data in (
        ("online", zero_start, sigma, config.replay_learning_rate, None),
        ("offline_online", trained, finetune, config.replay_finetune_learning_rate, data_set),
    ):
        start = time.perf_counter()
        history, complete = learn_online(
            name, start_model, std, twin, model_set, config, args, decay, information=True,
            replay_learning_rate=rate if replay else None, replay_data=data,
        )  # fmt: skip
        seconds[name] = time.perf_counter() - start
        if not complete:
            print("stopped before the end of the training period; continue with --resume")
            return None
        histories[name] = history
        model_set[name] = with_theta(start_model, history["theta"])

    # 5. Test period: forecasts from the true states, one-cycle model error.
    start = time.perf_counter()
    model_set = {name: model_set[name] for name in NAMES}
    curves, starts, model_error, fields = evaluate(model_set, twin, config)
    seconds["evaluation"] = time.perf_counter() - start

    steps = [k for k in (2, 12, 24, 48) if k <= config.forecast_steps]
    per_cycle = config.steps_per_cycle
    at = {
        name: {str(k): float(curve[k // per_cycle]) for k in steps}
        for name, curve in curves.items()
    }
    L, W = config.window, config.train_windows
    truth_ends = twin.truth[L * np.arange(1, W + 1)]
    window_end_rmse = {}
    for name, history in histories.items():
        window_end_rmse[name] = np.sqrt(np.mean((history["window_end"] - truth_ends) ** 2, axis=1))
    half = W // 2
    comparisons = {
        "online_vs_offline": ("online", "offline"),
        "offline_online_vs_offline": ("offline_online", "offline"),
        "offline_online_vs_online": ("offline_online", "online"),
        "online_vs_physical": ("online", "physical"),
    }
    theta_changes = {
        name: float(
            np.sqrt(
                np.mean(
                    (histories[name]["theta"].astype(float) - np.asarray(theta_of(m), float)) ** 2
                )
            )
        )
        for name, m in (("online", zero_start), ("offline_online", trained))
    }
    result = {
        "forecast": {
            "lead_steps": (np.arange(config.forecast_cycles + 1) * per_cycle).tolist(),
            "rmse": {name: curve.tolist() for name, curve in curves.items()},
            "rmse_at": at,
            "starts": starts,
            "initial_states": "true states of the test period, one per window",
        },
        "comparisons": {
            key: {
                "ratio_at": {
                    str(k): float(curves[a][k // per_cycle] / curves[b][k // per_cycle])
                    for k in steps
                },
                "mean_ratio_over_leads": float(np.mean(curves[a][1:] / curves[b][1:])),
            }
            for key, (a, b) in comparisons.items()
        },
        "model_error": model_error,
        "analysis": {
            "window_end_rmse": {name: v.tolist() for name, v in window_end_rmse.items()},
            "second_half_mean": {
                name: float(np.mean(v[half:])) for name, v in window_end_rmse.items()
            },
        },
        "online": {
            name: {
                "parameter_change_rms": theta_changes[name],
                "parameter_count": int(history["theta"].size),
                # control: rms whitened θ step; replay: the window's training loss
                (
                    "training_loss_first_last"
                    if config.online_method == "replay"
                    else "parameter_step_rms_first_last"
                ): [
                    float(history["parameter_step"][0]),
                    float(history["parameter_step"][-1]),
                ],
                "cost_before_mean": float(np.mean(history["cost_before"])),
                "cost_after_mean": float(np.mean(history["cost_after"])),
                "learning_curve_explained": history["curve_explained"].tolist(),
                **(
                    {
                        "learning_curve_explained_last_iterate": history[
                            "curve_explained_last"
                        ].tolist()
                    }
                    if "curve_explained_last" in history
                    else {}
                ),
                "seconds_per_window": float(
                    np.median(history["chunk_seconds"]) / config.da_chunk_windows
                ),
            }
            for name, history in histories.items()
            if name != "physical"
        },
        "offline": {"training": training},
        "scales": dict(zip(("psi", "pv", "output_per_cycle"), scales, strict=True)),
        "climatological_std": twin.climatological_std,
        "published": PUBLISHED,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figures(args.out, result, histories, fields, twin, config)
    seconds["total_wall_this_process"] = time.perf_counter() - wall_start
    seconds["total_cpu_this_process"] = time.process_time() - cpu_start
    seconds["load_average_1min_at_end"] = os.getloadavg()[0]
    result["seconds"] = seconds
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    (args.out / "metrics.json").write_text(json.dumps(offline._finite_or_none(result), indent=2))
    print_table(result, config)
    return result


if __name__ == "__main__":
    main()
