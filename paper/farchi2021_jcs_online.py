"""Farchi et al. (2021, J. Comput. Sci.): online vs offline learning of a tendency correction.

Reproduction of the online part of Farchi, Bocquet, Laloyaux, Bonavita and Malartic
(2021), A comparison of combined data assimilation and machine learning methods for
offline and online model error correction, *J. Comput. Sci.* 55, 101468. The offline
part is `paper/farchi2021_jcs_correction.py`; this script imports its twin, models,
network, offline pipeline and evaluation.

**Twin** (as offline). Truth: two-scale Lorenz-96 (36 slow x 10 fast variables, RK4 dt
0.005, 10 steps per cycle of 0.05); physical model: the truncated one-scale Lorenz-96 on
the slow variables (one RK4 step of 0.05 per cycle). The 36 slow variables are observed
every cycle with Gaussian errors of std 1 (the offline script's training setting; with
``--obs-count 18``, 18 of them drawn at random every cycle, its `sparse` setting) over a
training period of `train_cycles` cycles; every learning method sees only these
observations.

**Hybrid model.** The tendency correction ``dx/dt = f(x) + c_θ(x)`` of the offline
script: the same float32 periodic CNN (`hybridda.nn.PeriodicCNN`, same widths, kernel
and initial weights) with the same fixed input/output scalings (derived, as offline,
from the ETKF analyses of the same observations), integrated with the model's one RK4
step per cycle. θ is the network's weights and biases.

**Online learning** (the paper's section 5, "a new formulation of weak-constraint
4D-Var"). The training period is cut into windows of `window` cycles. Each window
minimises `hybridda.variational.WithModelParameters` around a `WeakFourDVar`
(``--constraint weak``, default) or `StrongFourDVar`: control ``(x0, η, θ)``,

    J = ½‖x0 - x_b‖²/b² + ½Σ‖η_k‖²/q² + ½Σ‖y_k - x_k‖² + ½‖(θ - θ_b)/σ‖²,

with the incremental (Gauss-Newton) minimiser (`outer_loops` x `inner_loops` CG).
θ_b is the previous window's θ; σ is per parameter, `parameter_std` times the rms of
the initial weights of the parameter's layer (a relative learning rate per window); x_b
is the previous window's analysis at its end (the first background is a noisy copy, std
1, of the true slow state at cycle 0: the observation of cycle 0 when all are observed).
The weak constraint lets η absorb the part of the model error the network cannot
represent (the unresolved fast-scale noise) instead of forcing θ to fit it. The
online network starts with a zero readout (``c_θ = 0``: the hybrid starts as the
truncated model; a random readout would start 4D-Var with a large random model error).
One compiled function runs `chunk_windows` windows (`lax.scan`); an Orbax checkpoint
follows every chunk, and ``--resume`` continues with bit-identical results (on CPU).
After every chunk the current network's one-cycle correction and forecasts are scored
on true test states (the learning curve; never seen by the learning).

**Offline reference** (the offline script's pipeline on the same observations): a cycled
ETKF (N = 20, inflation 1.5) with the truncated model over the same training period, then
the tendency correction trained on its analyses (Adam, early stopping) from the offline
script's initial network.

**Control: offline from 4D-Var analyses** (`offline_4dvar`). The ETKF's analyses are
much worse than the 4D-Var windows' (0.84 against 0.29 in the full run), so "online beats
offline" could be "4D-Var beats this ETKF". The same tendency correction (same network,
scalings and training) is also trained offline on the analyses of the online run's DA
without θ: weak-constraint 4D-Var with the truncated model over the same windows (x0
and the states of each window's analysed trajectory, one per cycle).

**Evaluation** (the offline script's `evaluate`): forecast RMSE against lead time from
the true slow states of an independent test period for the truncated, offline (ETKF and
4D-Var analyses) and online models, and the learnt vs true one-cycle model error on true
test states; the valid time of each model (first lead where the mean normalised RMSE of
forecasts from true test states passes 0.5, up to `valid_time_leads` = 200 cycles), in
Lyapunov times of the truncated model (leading exponent by QR over `lyapunov_cycles`).

Deviations: the paper's settings were not at hand (only its abstract), so the network,
window, σ, b, q, the minimiser and the length of the training period (shorter than the
offline script's 20000 cycles: 4D-Var with the network in the control costs about
0.6 s per window of 8 cycles on 2 shared CPU cores) are our choices; by default every
slow variable is observed (the offline script's training setting), not a sparse
network; one pass over the training period, no re-analysis. ``--quick`` (used by the
tests) uses a tiny period (10 windows of 4 cycles), a smaller network, a short offline
training and leaves out the 4D-Var control (about 30 s of CPU, mostly compiling).

Usage::

    python paper/farchi2021_jcs_online.py            # full run
    python paper/farchi2021_jcs_online.py --quick    # small, for the tests
    python paper/farchi2021_jcs_online.py --resume   # continue a killed run
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
from jax.flatten_util import ravel_pytree  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import hybridda  # noqa: E402
from hybridda import metrics  # noqa: E402
from hybridda._parameters import partition_learnt, with_learnt  # noqa: E402
from hybridda.checkpoint import prepare_run_directory, resume_or_init  # noqa: E402
from hybridda.learn import AnalysisDataset, online_fourdvar  # noqa: E402
from hybridda.nn import PeriodicCNN  # noqa: E402
from hybridda.observe import (  # noqa: E402
    GaussianError,
    RandomSubsetObservation,
    full_observation,
)
from hybridda.variational import FourDVar  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import farchi2021_jcs_correction as offline  # noqa: E402

PUBLISHED = "online learning extracts all the information from sparse, noisy observations"


@dataclasses.dataclass(frozen=True)
class Config(offline.Config):
    """The offline script's settings (twin, network, offline training, evaluation) plus
    the online 4D-Var's. Its test-DA settings (`inflations`, `da_settings`, ...) are
    unused here."""

    # A training period that 4D-Var with the network in the control can cycle through.
    train_cycles: int = 6001
    # Slow variables observed per cycle; fewer than n_slow: a random subset drawn anew
    # every cycle (the offline script's `sparse` test setting), for every method.
    obs_count: int = 36
    da_settings: tuple[str, ...] = ()
    evaluate_fine: bool = False
    # Online: windows of weak-constraint 4D-Var with θ in the control.
    window: int = 8
    constraint: str = "weak"
    background_std: float = 0.5
    model_error_std: float = 0.1
    parameter_std: float = 0.3
    outer_loops: int = 3
    inner_loops: int = 20
    chunk_windows: int = 25
    # Control: offline learning from the analyses of the same weak 4D-Var without θ.
    offline_4dvar: bool = True
    # Learning curve: scored after each chunk on true test states (lead 0: no forecasts).
    curve_states: int = 100
    curve_lead: int = 10
    # Valid time (normalised RMSE 0.5) of forecasts from true test states up to this
    # many cycles (the 40 of the RMSE curves are too short for the learnt models).
    valid_time_leads: int = 200
    lyapunov_cycles: int = 4000

    @property
    def windows(self) -> int:
        # Observations at cycles 1 .. train_cycles - 1; cycle 0 is the first background.
        return (self.train_cycles - 1) // self.window

    @property
    def chunks(self) -> int:
        return -(-self.windows // self.chunk_windows)

    def check(self) -> None:
        super().check()
        if self.constraint not in ("weak", "strong"):
            raise SystemExit("--constraint must be 'weak' or 'strong'.")
        if self.window < 1 or self.windows < 1 or self.chunk_windows < 1:
            raise SystemExit("Need window >= 1, chunk_windows >= 1 and train_cycles > window.")
        if min(self.background_std, self.model_error_std, self.parameter_std) <= 0:
            raise SystemExit("background_std, model_error_std and parameter_std must be > 0.")
        if not 1 <= self.obs_count <= self.n_slow:
            raise SystemExit(f"--obs-count must be in 1 .. {self.n_slow}.")
        if self.curve_lead > self.forecast_leads:
            raise SystemExit("curve_lead must not exceed forecast_leads.")
        if not 1 <= self.valid_time_leads < self.test_cycles or self.lyapunov_cycles < 1:
            raise SystemExit("Need 1 <= valid_time_leads < test_cycles and lyapunov_cycles >= 1.")


QUICK = {
    **offline.QUICK,
    "train_cycles": 41,
    "burn_in_cycles": 8,
    "validation_block_cycles": 8,
    "steps": 60,
    "batch_size": 16,
    "eval_every": 30,
    "checkpoint_every": 60,
    "test_cycles": 400,
    "inflations": (1.5,),
    "window": 4,
    "outer_loops": 2,
    "inner_loops": 10,
    "parameter_std": 1.0,
    "chunk_windows": 5,
    "curve_states": 50,
    "curve_lead": 0,
    "valid_time_leads": 60,
    "lyapunov_cycles": 500,
    "offline_4dvar": False,
    "da_settings": (),
}


# ------------------------------------------------------------------ online 4D-Var


def training_observation(config: Config):
    """The observation operator of the training period (std `obs_std`)."""
    error = GaussianError(config.obs_std)
    if config.obs_count == config.n_slow:
        return full_observation(config.n_slow, error)
    return RandomSubsetObservation(
        config.obs_count, config.n_slow, error, jax.random.key(config.seed + 11)
    )


def learnt_layers(model):
    """θ: the weights and biases of the correction network of the tendency hybrid."""
    return model.dynamics.correction.network.layers


def parameter_std(network: PeriodicCNN, relative: float) -> jnp.ndarray:
    """σ per parameter (in the order of θ): `relative` x rms of its layer's initial weights."""
    per_layer = []
    for layer in network.layers:
        scale = relative * float(jnp.sqrt(jnp.mean(jnp.asarray(layer.weight, float) ** 2)))
        arrays = eqx.filter(layer, eqx.is_array)
        per_layer.append(jax.tree.map(lambda a, s=scale: jnp.full(a.shape, s), arrays))
    return ravel_pytree(tuple(per_layer))[0]


def zero_readout(model):
    """The hybrid with the network's last layer set to zero: ``c_θ(x) = 0``."""
    readout = model.dynamics.correction.network.layers[-1]
    return eqx.tree_at(
        lambda m: (
            m.dynamics.correction.network.layers[-1].weight,
            m.dynamics.correction.network.layers[-1].bias,
        ),
        model,
        (jnp.zeros_like(readout.weight), jnp.zeros_like(readout.bias)),
    )


def theta_of(model) -> jnp.ndarray:
    return partition_learnt(model, learnt_layers)[0]


def with_theta(model, theta):
    return with_learnt(model, learnt_layers, jnp.asarray(theta))


def fourdvar(config: Config, weak: bool | None = None) -> FourDVar:
    """The 4D-Var window: ``B = σ_b² I``, incremental (`outer_loops` x `inner_loops`
    CG) from the background; weak-constraint (``Q = σ_q² I``) if `weak`, by default
    when `config.constraint` is ``"weak"``."""
    identity = jnp.eye(config.n_slow)
    weak = config.constraint == "weak" if weak is None else weak
    return FourDVar(
        config.background_std**2 * identity,
        window=config.window,
        minimiser="incremental",
        outer_loops=config.outer_loops,
        inner_loops=config.inner_loops,
        model_error_covariance=config.model_error_std**2 * identity if weak else None,
    )


@eqx.filter_jit
def _learning_curve_point(model, lead, truth, starts, states, true_error, truncated):
    """Scores of the current network on true test states: one-cycle correlation with the
    true model error, explained fraction, and forecast RMSE at `lead` (NaN if 0)."""
    learnt = jax.vmap(model)(states) - truncated
    residual = jnp.sum((true_error - learnt) ** 2)
    a, b = learnt.ravel() - learnt.mean(), true_error.ravel() - true_error.mean()
    correlation = jnp.sum(a * b) / jnp.sqrt(jnp.sum(a**2) * jnp.sum(b**2) + 1e-300)
    if lead == 0:  # (--quick: one compilation less)
        forecast = jnp.asarray(jnp.nan)
    else:
        forecast = metrics.forecast_skill(model, truth, starts, lead).rmse_per_start[:, -1].mean()
    return correlation, 1.0 - residual / jnp.sum(true_error**2), forecast


def learning_curve_reference(twin, config: Config):
    """The test trajectory, the forecast starts, and the true test states with their true
    one-cycle model error and truncated one-cycle forecasts."""
    cycles = config.test_start + np.linspace(
        0, config.test_cycles - 1, config.curve_states, dtype=int
    )
    truncated = offline.truncated_model(config)
    full = jnp.asarray(twin.full_truth[cycles])
    states = full[:, : config.n_slow]
    truncated_one = jax.vmap(truncated)(states)
    true_error = jax.vmap(twin.truth_model)(full)[:, : config.n_slow] - truncated_one
    truth = jnp.asarray(twin.slow[config.test_start :])
    starts = jnp.asarray(cycles - config.test_start)
    starts = starts[starts + config.curve_lead < config.test_cycles]
    return truth, starts, states, true_error, truncated_one


def learn_online(model, sigma, y, first_background, twin, config: Config, args):
    """Cycle the online windows over the training period, in checkpointed chunks.

    Returns the history (a dict of arrays) and whether the run is complete.
    """
    observation = training_observation(config)
    W, L = config.windows, config.window
    y_windows = jnp.asarray(y[1 : 1 + W * L].reshape(W, L, -1))
    reference = learning_curve_reference(twin, config)
    method = fourdvar(config)

    def init_state():
        return {
            "background": jnp.asarray(first_background),
            "theta": theta_of(model),
            "window_end": jnp.zeros((W, config.n_slow)),
            "cost_before": jnp.zeros(W),
            "cost_after": jnp.zeros(W),
            "parameter_step": jnp.zeros(W),
            "curve_correlation": jnp.zeros(config.chunks),
            "curve_explained": jnp.zeros(config.chunks),
            "curve_forecast": jnp.zeros(config.chunks),
            "chunk_seconds": jnp.zeros(config.chunks),
        }

    state, done, checkpointer = resume_or_init(
        args.checkpoint_dir / "online",
        init_state,
        resume=args.resume,
        config=dataclasses.asdict(config),
        max_to_keep=2,
    )
    firsts = list(range(done, W, config.chunk_windows))
    if args.stop_after_chunks is not None:
        firsts = firsts[: args.stop_after_chunks]
    bar = tqdm(
        firsts,
        desc="online 4D-Var windows",
        unit="chunk",
        initial=done // config.chunk_windows,
        total=config.chunks,
        disable=not args.progress,
    )
    with checkpointer:
        for first in bar:
            last = min(first + config.chunk_windows, W)
            tic = time.perf_counter()
            (background, theta, _), record = online_fourdvar(
                method,
                model,
                observation,
                state["background"],
                y_windows[first:last],
                where=learnt_layers,
                parameter_std=sigma,
                parameters=state["theta"],
                first_window=first,
                first_cycle_offset=1,  # y[0] observes the initial state, never assimilated
            )
            jax.block_until_ready(theta)
            seconds = time.perf_counter() - tic
            ends, before, after, step = record[:4]
            chunk = first // config.chunk_windows
            point = _learning_curve_point(with_theta(model, theta), config.curve_lead, *reference)
            state = {
                "background": background,
                "theta": theta,
                "window_end": state["window_end"].at[first:last].set(ends),
                "cost_before": state["cost_before"].at[first:last].set(before),
                "cost_after": state["cost_after"].at[first:last].set(after),
                "parameter_step": state["parameter_step"].at[first:last].set(step),
                "curve_correlation": state["curve_correlation"].at[chunk].set(point[0]),
                "curve_explained": state["curve_explained"].at[chunk].set(point[1]),
                "curve_forecast": state["curve_forecast"].at[chunk].set(point[2]),
                "chunk_seconds": state["chunk_seconds"].at[chunk].set(seconds),
            }
            checkpointer.save(last, state, force=True)
            truth_ends = twin.slow[L * np.arange(first + 1, last + 1)]
            bar.set_postfix(
                rmse_end=f"{np.sqrt(np.mean((np.asarray(ends) - truth_ends) ** 2)):.3f}",
                corr=f"{float(point[0]):.2f}",
                expl=f"{float(point[1]):.2f}",
            )
            done = last
    return {k: np.asarray(v) for k, v in state.items()}, done >= W


# ------------------------------------------------------------------ offline reference


def etkf_analyses(config: Config, y, twin, network):
    """The offline script's DA on the same observations: ETKF with the truncated model.

    Returns the tendency hybrid around `network` with the scalings of the analyses, the
    analyses and their variances (the offline training data) and the ETKF's scores.
    """
    observation = training_observation(config)
    truth = twin.slow[: config.train_cycles]
    _, key_da = jax.random.split(jax.random.key(config.seed + 3))
    means, spreads, errors = offline.run_etkf(
        offline.truncated_model(config),
        observation,
        truth,
        y,
        config,
        np.asarray([config.train_inflation]),
        key_da,
    )
    burn = config.burn_in_cycles
    analyses = means[0, burn:]
    variance = np.repeat(spreads[0, burn:, None] ** 2, config.n_slow, axis=1)
    hybrid = offline.build_hybrids(config, analyses, network)["tendency"]
    return (
        hybrid,
        analyses,
        variance,
        {
            "rmse": float(np.mean(errors[0, burn:])),
            "spread": float(np.mean(spreads[0, burn:])),
            "inflation": config.train_inflation,
        },
    )


@eqx.filter_jit
def weak_4dvar_analyses(model, observation, background, y_windows, config):
    """The online run's DA without θ: weak-constraint 4D-Var windows with the truncated
    `model`; the analysed trajectory of every cycle, ``(windows * window + 1, n)``."""

    method = fourdvar(config, weak=True)

    def one(background, inputs):
        y_window, index = inputs
        first_cycle = index * config.window
        t0 = first_cycle * model.cycle_length
        cost = method.window_cost(model, observation, y_window, background, t0, first_cycle + 1)
        control = method.minimise(cost, cost.initial_control()).control
        states = cost.trajectory(control)
        # x0 and the states after 1 .. L - 1 cycles; the end state starts the next window.
        return states[-1], jnp.concatenate([control[0][None], states[:-1]])

    indices = jnp.arange(y_windows.shape[0])
    end, trajectories = jax.lax.scan(one, background, (y_windows, indices))
    return jnp.concatenate([trajectories.reshape(-1, background.shape[0]), end[None]])


def learn_offline_4dvar(config: Config, y, first_background, twin, hybrid, args):
    """The tendency correction (`hybrid`: same network and scalings as the ETKF-trained
    one) trained offline on the weak 4D-Var analyses of the same observations."""
    W, L = config.windows, config.window
    y_windows = jnp.asarray(y[1 : 1 + W * L].reshape(W, L, -1))
    analyses = np.asarray(
        weak_4dvar_analyses(
            offline.truncated_model(config),
            training_observation(config),
            jnp.asarray(first_background),
            y_windows,
            config,
        )
    )
    rmse = np.sqrt(np.mean((analyses - twin.slow[: W * L + 1]) ** 2, axis=1))
    analyses = analyses[config.burn_in_cycles :]
    # No per-cycle variance from 4D-Var: a constant weight (b²) for every cycle.
    variance = np.full_like(analyses, config.background_std**2)
    trained, training = offline.train(
        "tendency_4dvar",
        hybrid,
        AnalysisDataset(analyses, variance),
        config,
        args.checkpoint_dir / "offline_4dvar_tendency",
        args.resume,
        args.progress,
    )
    training["analysis_rmse"] = float(np.mean(rmse[config.burn_in_cycles :]))
    return trained, training


# ------------------------------------------------------------------ outputs

STYLES = {
    "truncated": ("C3", "truncated model"),
    "offline": ("C0", "tendency correction, offline (ETKF analyses)"),
    "offline_4dvar": ("C1", "tendency correction, offline (weak 4D-Var analyses)"),
    "online": ("C2", "tendency correction, online 4D-Var"),
}


def figures(out: Path, result: dict, history: dict, config: Config) -> None:
    import matplotlib.pyplot as plt

    forecast = result["forecast"]
    times = np.asarray(forecast["lead_cycles"]) * config.cycle_length
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name, curve in forecast["rmse"].items():
        colour, label = STYLES[name]
        axis.plot(times, curve, color=colour, label=label)
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

    figure, axes = plt.subplots(1, 4, figsize=(21, 4.2), constrained_layout=True)
    window_cycles = config.window * np.arange(1, config.windows + 1)
    errors = np.asarray(result["online"]["window_end_rmse"])
    smooth = max(1, len(errors) // 50)
    axes[0].plot(
        window_cycles[smooth - 1 :],
        np.convolve(errors, np.ones(smooth) / smooth, mode="valid"),
        color="C2",
        label="online 4D-Var, window end",
    )
    axes[0].axhline(result["offline"]["etkf"]["rmse"], color="C0", ls="--", label="ETKF (offline)")
    if "offline_4dvar" in result:
        axes[0].axhline(
            result["offline_4dvar"]["analysis_rmse"],
            color="C1",
            ls="--",
            label="weak 4D-Var without θ (offline)",
        )
    axes[0].set(xlabel="training cycle", ylabel="analysis RMSE (running mean)")
    axes[0].legend()
    axes[1].semilogy(window_cycles, history["parameter_step"], color="C2", lw=0.7)
    axes[1].set(xlabel="training cycle", ylabel="rms whitened θ step, |θ - θ_b| / σ")
    curve = result["online"]["learning_curve"]
    chunk_cycles = np.asarray(curve["cycle"])
    axes[2].plot(chunk_cycles, curve["correlation"], "o-", color="C2", label="corr. (online)")
    axes[2].plot(chunk_cycles, curve["explained"], "s-", color="C8", label="explained (online)")
    error = result["model_error"]["offline"]
    axes[2].axhline(error["correlation"], color="C0", ls="--", label="corr. (offline)")
    axes[2].axhline(error["explained_fraction"], color="C9", ls=":", label="explained (offline)")
    axes[2].set(xlabel="training cycle", ylabel="one-cycle model error, true test states")
    axes[2].legend(fontsize=8)
    lead = config.curve_lead
    if lead > 0:
        axes[3].plot(
            chunk_cycles, curve[f"forecast_rmse_lead_{lead}"], "o-", color="C2", label="online"
        )
        for name in [n for n in ("truncated", "offline", "offline_4dvar") if n in forecast["rmse"]]:
            colour, label = STYLES[name]
            axes[3].axhline(forecast["rmse"][name][lead], color=colour, ls="--", label=label)
        axes[3].legend(fontsize=8)
    axes[3].set(xlabel="training cycle", ylabel=f"forecast RMSE at lead {lead} (true test states)")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.savefig(out / "online_learning.png", dpi=110)
    plt.close(figure)


def compare(curves: dict, name: str, other: str, leads: list[int]) -> dict:
    """Forecast RMSE ratio `name` / `other` at `leads`, and over every lead >= 1."""
    return {
        "ratio_at": {str(k): float(curves[name][k] / curves[other][k]) for k in leads},
        "mean_ratio_over_leads_1_to_last": float(np.mean(curves[name][1:] / curves[other][1:])),
        "online_at_least_as_good": bool(np.mean(curves[name][1:]) <= np.mean(curves[other][1:])),
    }


def valid_times(model_set: dict, twin, config: Config) -> dict:
    """Valid time of each model's forecasts from true test states: the first lead where
    the mean normalised RMSE (over starts every `forecast_every` cycles) passes 0.5, in
    model time and in Lyapunov times of the truncated model (the two-scale truth's
    leading exponent belongs to its fast variables), as in the Bocquet 2021 script."""
    truth = jnp.asarray(twin.slow[config.test_start :])
    leads = config.valid_time_leads
    starts = jnp.arange(0, truth.shape[0] - leads, config.forecast_every)
    curves, exponent = _valid_time_curves(
        model_set, truth, starts, leads, twin.climatological_std, config.lyapunov_cycles
    )
    result = {
        "threshold": 0.5,
        "leads": leads,
        "starts": int(starts.shape[0]),
        "lyapunov_exponent_truncated_model": float(exponent),
    }
    for name in model_set:
        times = metrics.valid_time(curves[name], config.cycle_length, exponent)
        result[name] = {
            "model_time": float(times.model_time),
            "lyapunov_time": float(times.lyapunov_time),
            "exceeded": bool(times.exceeded),
        }
    return result


@eqx.filter_jit
def _valid_time_curves(model_set, truth, starts, leads, climatology, lyapunov_cycles):
    curves = {
        name: metrics.forecast_skill(model, truth, starts, leads, None, climatology).normalised_rmse
        for name, model in model_set.items()
    }
    exponent = metrics.lyapunov_spectrum(
        model_set["truncated"], truth[0], lyapunov_cycles, count=1, key=jax.random.key(0)
    )[0]
    return curves, exponent


def print_table(result: dict) -> None:
    forecast = result["forecast"]
    print("Farchi et al. (2021, JCS), online part: tendency correction learnt online vs offline")
    leads = list(next(iter(forecast["rmse_at"].values())))
    print(f"{'forecast RMSE at lead (cycles)':<34}" + "".join(f"{k:>8}" for k in leads))
    for name, values in forecast["rmse_at"].items():
        print(f"  {name:<32}" + "".join(f"{v:>8.3f}" for v in values.values()))
    error = result["model_error"]
    print(
        "one-cycle model error (true test states): "
        + ", ".join(
            f"{n} corr. {error[n]['correlation']:.2f}, "
            f"{100 * error[n]['explained_fraction']:.0f} % explained"
            for n in error
            if n not in ("truncated", "true_rms", "states")
        )
    )
    for name in ("offline", "offline_4dvar"):
        verdict = result.get(f"online_vs_{name}")
        if verdict is None:
            continue
        print(
            f"  ours: online/{name} forecast RMSE at leads {list(verdict['ratio_at'])}: "
            + ", ".join(f"{v:.2f}" for v in verdict["ratio_at"].values())
            + f" -> online {'better' if verdict['online_at_least_as_good'] else 'worse'}"
            " (mean over leads)"
        )
    valid = result["valid_time"]
    print(
        f"valid time (normalised RMSE {valid['threshold']}, Lyapunov times of the truncated "
        f"model, λ = {valid['lyapunov_exponent_truncated_model']:.2f}): "
        + ", ".join(
            f"{name} {valid[name]['lyapunov_time']:.2f}" + ("" if valid[name]["exceeded"] else "+")
            for name in result["forecast"]["rmse"]
        )
    )
    print(f"  published: {PUBLISHED}")
    print(
        f"analysis RMSE: online 4D-Var window ends (2nd half) "
        f"{result['online']['window_end_rmse_second_half']:.3f}, "
        f"offline ETKF {result['offline']['etkf']['rmse']:.3f}"
        + (
            f", weak 4D-Var without θ {result['offline_4dvar']['analysis_rmse']:.3f}"
            if "offline_4dvar" in result
            else ""
        )
    )
    s = result["seconds"]
    print(
        f"wall {s['total_wall_this_process']:.0f} s (CPU {s['total_cpu_this_process']:.0f} s, "
        f"load {s['load_average_1min_at_end']:.1f})"
    )


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, network and training seed")
    parser.add_argument("--out", type=Path, help="results (default runs/farchi2021_jcs_online)")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="checkpoints (default checkpoints/farchi2021_jcs_online[-quick])",
    )
    parser.add_argument("--quick", action="store_true", help="tiny period, small network")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument("--train-cycles", type=int, help="training-period cycles (6001)")
    parser.add_argument("--window", type=int, help="4D-Var window in cycles (8)")
    parser.add_argument(
        "--obs-count", type=int, help="slow variables observed per cycle (36; fewer: random)"
    )
    parser.add_argument("--constraint", choices=("weak", "strong"), help="4D-Var (weak)")
    parser.add_argument("--parameter-std", type=float, help="σ / initial weight rms (0.3)")
    parser.add_argument(
        "--stop-after-chunks", type=int, help="stop after this many chunks (to test --resume)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or Path(f"runs/farchi2021_jcs_online{suffix}")
    args.checkpoint_dir = args.checkpoint_dir or Path(f"checkpoints/farchi2021_jcs_online{suffix}")
    args.progress = not args.no_progress
    return args


def make_config(args) -> Config:
    changes = dict(QUICK) if args.quick else {}
    for name in ("train_cycles", "window", "obs_count", "constraint", "parameter_std"):
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

    # 1. Truth and the observations of the training period (the offline script's).
    start = time.perf_counter()
    twin = offline.make_twin(config)
    key_obs, _ = jax.random.split(jax.random.key(config.seed + 3))
    synthesise = eqx.filter_jit(hybridda.synthesise_observations)
    train_truth = jnp.asarray(twin.slow[: config.train_cycles])
    y = np.asarray(synthesise(training_observation(config), train_truth, key_obs))
    # The first 4D-Var background: every slow variable at cycle 0 with noise of std
    # obs_std (with full observations, the observation of cycle 0; the ETKF's initial
    # ensemble is likewise centred on the true state).
    if config.obs_count == config.n_slow:
        first_background = y[0]
    else:
        full = full_observation(config.n_slow, GaussianError(config.obs_std))
        first_background = np.asarray(synthesise(full, train_truth, key_obs))[0]
    # 2. The offline pipeline's DA (analyses and the network's scalings).
    network = PeriodicCNN(
        widths=config.widths,
        kernel_sizes=config.kernel_size,
        key=jax.random.key(config.seed + 2),
        dtype=jnp.float32 if config.network_dtype == "float32" else jnp.float64,
    )
    hybrid, analyses, variance, etkf = etkf_analyses(config, y, twin, network)
    seconds["truth_and_etkf"] = time.perf_counter() - start

    # 3. Online: windows of 4D-Var with θ in the control, from a zero correction.
    start = time.perf_counter()
    online_start = zero_readout(hybrid)
    sigma = parameter_std(network, config.parameter_std)
    history, complete = learn_online(online_start, sigma, y, first_background, twin, config, args)
    seconds["online"] = time.perf_counter() - start
    if not complete:
        print("stopped before the end of the training period; continue with --resume")
        return None
    online_model = with_theta(online_start, jnp.asarray(history["theta"]))

    # 4. Offline: the tendency correction trained on the ETKF analyses.
    trained, training = offline.train(
        "tendency",
        hybrid,
        AnalysisDataset(analyses, variance),
        config,
        args.checkpoint_dir / "offline_tendency",
        args.resume,
        args.progress,
    )
    seconds["offline_training"] = training["seconds_this_process"]
    if config.offline_4dvar:
        start = time.perf_counter()
        trained_4dvar, training_4dvar = learn_offline_4dvar(
            config, y, first_background, twin, hybrid, args
        )
        seconds["offline_4dvar"] = time.perf_counter() - start

    # 5. Test period: forecasts from the true states, one-cycle model error.
    start = time.perf_counter()
    model_set = {
        "truncated": offline.truncated_model(config),
        "offline": trained,
        "online": online_model,
    }
    if config.offline_4dvar:
        model_set["offline_4dvar"] = trained_4dvar
    curves, starts, model_error, _ = offline.evaluate(model_set, twin, config)
    valid = valid_times(model_set, twin, config)
    seconds["evaluation"] = time.perf_counter() - start

    leads = [k for k in (1, 5, 10, 20, 40) if k <= config.forecast_leads]
    at = {name: {str(k): float(curve[k]) for k in leads} for name, curve in curves.items()}
    comparisons = {"online_vs_offline": "offline"}
    if config.offline_4dvar:
        comparisons["online_vs_offline_4dvar"] = "offline_4dvar"
    window_end = history["window_end"]
    truth_ends = twin.slow[config.window * np.arange(1, config.windows + 1)]
    window_end_rmse = np.sqrt(np.mean((window_end - truth_ends) ** 2, axis=1))
    half = config.windows // 2
    theta0 = np.asarray(theta_of(online_start), dtype=float)
    theta = history["theta"].astype(float)
    chunk_ends = np.minimum(config.chunk_windows * np.arange(1, config.chunks + 1), config.windows)
    result = {
        "forecast": {
            "lead_cycles": list(range(config.forecast_leads + 1)),
            "rmse": {name: curve.tolist() for name, curve in curves.items()},
            "rmse_at": at,
            "starts": starts,
            "initial_states": "true slow state of the test period",
        },
        "model_error": model_error,
        "valid_time": valid,
        **{key: compare(curves, "online", other, leads) for key, other in comparisons.items()},
        "online": {
            "windows": config.windows,
            "window_end_rmse": window_end_rmse.tolist(),
            "window_end_rmse_second_half": float(np.mean(window_end_rmse[half:])),
            "cost_before_mean": float(np.mean(history["cost_before"])),
            "cost_after_mean": float(np.mean(history["cost_after"])),
            "parameter_step_rms_first_last": [
                float(history["parameter_step"][0]),
                float(history["parameter_step"][-1]),
            ],
            "parameter_change_rms": float(np.sqrt(np.mean((theta - theta0) ** 2))),
            "parameter_count": int(theta.size),
            "learning_curve": {
                "cycle": (config.window * chunk_ends).tolist(),
                "correlation": history["curve_correlation"].tolist(),
                "explained": history["curve_explained"].tolist(),
                **(
                    {f"forecast_rmse_lead_{config.curve_lead}": history["curve_forecast"].tolist()}
                    if config.curve_lead > 0
                    else {}
                ),
            },
            "seconds_per_window": float(
                np.median(
                    history["chunk_seconds"][1:] if config.chunks > 1 else history["chunk_seconds"]
                )
                / config.chunk_windows
            ),
        },
        "offline": {"etkf": etkf, "training": training},
        **({"offline_4dvar": training_4dvar} if config.offline_4dvar else {}),
        "climatological_std": twin.climatological_std,
        "published": PUBLISHED,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figures(args.out, result, history, config)
    seconds["total_wall_this_process"] = time.perf_counter() - wall_start
    seconds["total_cpu_this_process"] = time.process_time() - cpu_start
    seconds["load_average_1min_at_end"] = os.getloadavg()[0]
    result["seconds"] = seconds
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    (args.out / "metrics.json").write_text(json.dumps(offline._finite_or_none(result), indent=2))
    print_table(result)
    return result


if __name__ == "__main__":
    main()
