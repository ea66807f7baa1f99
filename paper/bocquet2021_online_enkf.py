"""Bocquet, Farchi and Malartic (2021): learn state and dynamics online with an augmented EnKF.

Reproduces the global-EnKF experiment of *Online learning of both state and dynamics
using ensemble Kalman filters* (Found. Data Sci. 3, 305-330, 2021) on the one-scale
Lorenz-96 model:

- truth: Lorenz-96, n = 40, F = 8, one RK4 step of Δt = 0.05 per cycle; every variable
  observed each cycle (or every k-th, ``--obs-every``) with noise of std 1;
- surrogate: `hybridda.dynamics.MonomialDynamics`, a linear combination of the 18 local
  monomials {1, x_{i+j}, x_{i+j} x_{i+k}} (|j|, |k| ≤ 2, k - j ≤ 2) shared by all sites,
  integrated with the same RK4 step. Lorenz-96 lies in this span, so the coefficients
  have an exact truth (4 non-zero: F, -1, +1, -1);
- filter: a global ETKF (or EnKF-N, ``--method enkf-n``) on the augmented state
  ``[x; θ]`` (58 variables), through `hybridda.filters.ParameterAugmentation` and
  `hybridda.filters.AugmentedModel` inside `hybridda.assimilate`; or (section 4,
  ``--method letkf``) the LETKF, which analyses the state locally (Gaspari-Cohn radius
  ``--localisation-radius``) and the coefficients by the mean of their local analyses,
  so that fewer members than the state's unstable directions suffice; or (section 3,
  ``--method ienkf``) the iterative EnKF: `hybridda.filters.IEnKS` with lag 1 (Sakov et
  al. 2012's IEnKF, Gauss-Newton in ensemble space, ``--iterations``) on the augmented
  system (`AugmentedModel`, `AugmentedObservation`) through `hybridda.assimilate_windows`:
  each iteration re-runs every member's forecast with its updated state *and*
  coefficients, which the one-step filters' linear update cannot do when the cycle is
  long (``--steps-per-cycle``: RK4 steps of Δt per cycle). Every member is forecast with
  its own coefficients, and the analysis of the observed state updates the coefficients
  through their forecast correlations.

The coefficients start from ignorance: prior mean 0 (the surrogate is then persistence)
and std 0.5 for every coefficient. The script shows the coefficient error and the
analysis RMSE converging over cycles, compares the analysis RMSE with that of the same
filter run with the true model on the same observations, and measures the valid time
of the learnt surrogate's forecasts against the true model's (both from the same
analyses).

``--model two-scale`` (the paper's two-scale experiment): the truth is the two-scale
Lorenz-96 model of ``paper/farchi2021_jcs_correction.py`` (`TwoScaleLorenz96`, 36 slow x
10 fast variables, F = 10, h = 1, b = c = 10, RK4 dt 0.005, 10 steps per cycle of 0.05);
the 36 slow variables are observed every cycle (std 1, through the filter's operator on
the slow block of the full state: the fast variables are never seen). The surrogate is
the same 18-coefficient monomial model on the slow variables (one RK4 step of 0.05 per
cycle, prior 0 ± 0.5; ``--prior perturbed-truth`` perturbs the truncated model's
coefficients), so the online filter must learn the effect of the unresolved scales.
There is no exact coefficient truth: the coefficient errors are against the offline fit
(`fit_offline`: one-cycle least squares of the surrogate's own RK4 step on the *true*
slow trajectory, Gauss-Newton from the central-difference tendency fit), the best this
model class can do. References on the same observations: the same filter with (i) the
truncated one-scale model (Lorenz-96, F = 10) and (ii) the offline fit, each at the
online filter's inflation and at its own best on `reference_inflations` (a fixed,
imperfect model needs its own inflation). Forecast valid times start from the true slow
states, in Lyapunov times of the truncated model (the two-scale truth's leading
exponent is that of its fast variables). The two-scale runs inflate by 1.05 (the state
needs more than in the perfect-model case) with an extra factor of 0.975 on the
coefficients (`TWO_SCALE`).

Cycles run as `lax.scan`s over chunks (``--chunk`` cycles, one compiled function); an
Orbax checkpoint (`hybridda.checkpoint`) of the ensemble and the history is written
after every chunk, and ``--resume`` continues from the last one with bit-identical
results.

Usage::

    python paper/bocquet2021_online_enkf.py --quick          # 3000 cycles (< 1 min)
    python paper/bocquet2021_online_enkf.py                  # 20000 cycles
    python paper/bocquet2021_online_enkf.py --resume         # continue an interrupted run
    python paper/bocquet2021_online_enkf.py --obs-every 2 --out runs/bocquet2021_half
    python paper/bocquet2021_online_enkf.py --method letkf --ensemble-size 10 \
        --out runs/bocquet2021_letkf                      # the local EnKF (section 4)
    python paper/bocquet2021_online_enkf.py --method ienkf --steps-per-cycle 3 \
        --out runs/bocquet2021_ienkf                      # iterative EnKF, Δt = 0.15
    python paper/bocquet2021_online_enkf.py --model two-scale \
        --out runs/bocquet2021_two_scale                  # two-scale truth, slow surrogate
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

import hybridda  # noqa: E402
from hybridda import metrics  # noqa: E402
from hybridda.checkpoint import resume_or_init  # noqa: E402
from hybridda.dynamics import Lorenz96, MonomialDynamics, TwoScaleLorenz96  # noqa: E402
from hybridda.filters import (  # noqa: E402
    ETKF,
    LETKF,
    AugmentedModel,
    AugmentedObservation,
    EnKFN,
    IEnKS,
    Localisation,
    ParameterAugmentation,
    multiplicative,
)
from hybridda.observe import GaussianError, IndexObservation, every_kth  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import farchi2021_jcs_correction as two_scale_twin  # noqa: E402

METHODS = ("etkf", "enkf-n", "letkf", "ienkf")
PRIORS = ("constant", "perturbed-truth")
MODELS = ("one-scale", "two-scale")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (written to config.json)."""

    model: str = "one-scale"
    n: int = 40
    forcing: float = 8.0
    dt: float = 0.05
    # Two-scale truth only (None for one-scale): fast variables per slow one, RK4 step.
    n_fast: int | None = None
    truth_dt: float | None = None
    truth_steps_per_cycle: int | None = None
    offline_fit_iterations: int | None = None
    # Two-scale references (fixed coefficients): also run at these inflations, best kept.
    reference_inflations: tuple[float, ...] = ()
    steps_per_cycle: int = 1
    obs_std: float = 1.0
    obs_every: int = 1
    radius: int = 2
    method: str = "etkf"
    localisation_radius: float = 4.0
    parameter_update: str = "mean"
    iterations: int = 5
    ensemble_size: int = 40
    inflation: float = 1.02
    parameter_inflation: float = 1.0
    parameter_noise_std: float = 0.0
    prior: str = "constant"
    prior_mean: float = 0.0
    prior_std: float = 0.5
    initial_spread: float = 1.0
    cycles: int = 20000
    chunk: int = 1000
    spin_up_cycles: int = 1000
    forecast_starts: int = 100
    forecast_leads: int = 200
    lyapunov_cycles: int = 4000
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"`--model` must be one of {MODELS}, got {self.model!r}.")
        if (self.model == "two-scale") != (self.n_fast is not None):
            raise ValueError(
                "`n_fast` (and the truth's RK4 step) is set for --model two-scale only."
            )
        if self.method not in METHODS:
            raise ValueError(f"`--method` must be one of {METHODS}, got {self.method!r}.")
        if self.prior not in PRIORS:
            raise ValueError(f"`--prior` must be one of {PRIORS}, got {self.prior!r}.")
        if self.parameter_update not in ("mean", "global"):
            raise ValueError(
                f"`--parameter-update` must be 'mean' or 'global', got {self.parameter_update!r}."
            )
        if not self.localisation_radius > 0:
            raise ValueError(
                f"`--localisation-radius` must be > 0, got {self.localisation_radius}."
            )
        if self.steps_per_cycle < 1 or self.iterations < 1:
            raise ValueError(
                f"`--steps-per-cycle` and `--iterations` must be >= 1, got "
                f"{self.steps_per_cycle} and {self.iterations}."
            )
        if self.method == "ienkf" and (self.parameter_inflation != 1 or self.parameter_noise_std):
            raise ValueError(
                "`--method ienkf` inflates the whole augmented ensemble (`--inflation`); "
                "`--parameter-inflation` and `--parameter-noise-std` are for the filters."
            )
        if self.ensemble_size < 2:
            raise ValueError(f"`--ensemble-size` must be >= 2, got {self.ensemble_size}.")
        if not self.prior_std > 0:
            raise ValueError(
                f"`--prior-std` (prior std of every coefficient) must be > 0, got {self.prior_std}."
            )
        if self.parameter_noise_std < 0:
            raise ValueError(
                f"`--parameter-noise-std` must be >= 0, got {self.parameter_noise_std}."
            )
        if not (self.inflation > 0 and self.parameter_inflation > 0):
            raise ValueError("`--inflation` and `--parameter-inflation` must be > 0 (1: none).")
        if self.chunk < 1 or self.cycles < 2 * self.forecast_starts or self.cycles < 10:
            raise ValueError(
                f"Need `--chunk` >= 1 and `--cycles` >= max(10, 2 x forecast starts = "
                f"{2 * self.forecast_starts}), got chunk={self.chunk}, cycles={self.cycles}."
            )
        if not 1 <= self.obs_every <= self.n:
            raise ValueError(f"`--obs-every` must be in [1, n={self.n}], got {self.obs_every}.")

    @property
    def cycle_length(self) -> float:
        """Model time between two analyses: `steps_per_cycle` RK4 steps of `dt`."""
        return self.dt * self.steps_per_cycle

    def resolvent(self, dynamics) -> hybridda.Resolvent:
        return hybridda.Resolvent(dynamics, self.dt, steps_per_cycle=self.steps_per_cycle)


QUICK = {
    "cycles": 3000,
    "chunk": 500,
    "spin_up_cycles": 500,
    "forecast_starts": 20,
    "forecast_leads": 100,
    "lyapunov_cycles": 1000,
    "reference_inflations": (),
}

# The two-scale twin of Farchi et al. (2021, JCS), whose script sets up the same truth:
# 36 slow x 10 fast variables, F = 10, RK4 dt 0.005, 10 steps per cycle of 0.05. The
# surrogate learns the 36 slow variables with one RK4 step of 0.05 per cycle.
_FARCHI = two_scale_twin.Config()
TWO_SCALE = {
    "model": "two-scale",
    "n": _FARCHI.n_slow,
    "forcing": _FARCHI.forcing,
    "dt": _FARCHI.model_dt,
    "n_fast": _FARCHI.n_fast,
    "truth_dt": _FARCHI.truth_dt,
    "truth_steps_per_cycle": _FARCHI.truth_steps_per_cycle,
    "offline_fit_iterations": 4,
    # The surrogate cannot represent the truth (unresolved scales): more inflation of the
    # state than the perfect-model 1.02 (the same for the online filter and its
    # references), but less of the coefficients (1.05 x 0.975 ≈ 1.024 per cycle), whose
    # spread would otherwise stay large and the learnt coefficients noisy (20000 cycles
    # at 1.05 on θ: analysis RMSE 0.263, coefficient error 0.141 against 0.237 and 0.101;
    # at x 0.96 the spread collapses to 0.03 and the coefficients learn slower).
    "inflation": 1.05,
    "parameter_inflation": 0.975,
    "reference_inflations": (1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 1.7),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, noise and ensemble seed")
    parser.add_argument("--out", type=Path, default=Path("runs/bocquet2021"))
    parser.add_argument("--quick", action="store_true", help="3000 cycles (< 1 min)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--cycles", type=int, help="DA cycles (default 20000; quick 3000)")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="one-scale",
        help="truth: one-scale Lorenz-96 (n=40, F=8; the surrogate's exact coefficients are "
        "known) or the two-scale Lorenz-96 (36 slow x 10 fast, F=10; the surrogate learns "
        "the slow variables, scored against an offline least-squares fit)",
    )
    parser.add_argument("--chunk", type=int, help="cycles per compiled chunk / checkpoint")
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="global ETKF (default), EnKF-N, the LETKF (section 4: local state analyses, "
        "coefficients by the mean of their local analyses) or the iterative EnKF (IEnKS "
        "with lag 1 on the augmented system)",
    )
    parser.add_argument("--iterations", type=int, help="IEnKF Gauss-Newton iterations (5)")
    parser.add_argument(
        "--steps-per-cycle", type=int, help="RK4 steps of dt = 0.05 between analyses (1)"
    )
    parser.add_argument(
        "--localisation-radius", type=float, help="LETKF localisation radius (grid units, 4)"
    )
    parser.add_argument(
        "--parameter-update",
        choices=("mean", "global"),
        help="LETKF: coefficients by the mean of their local analyses (default) or by the "
        "global analysis with every observation",
    )
    parser.add_argument("--ensemble-size", type=int, help="members (default 40)")
    parser.add_argument("--inflation", type=float, help="filter inflation, whole [x; θ] (1.02)")
    parser.add_argument(
        "--parameter-inflation", type=float, help="extra multiplicative inflation of θ (1: none)"
    )
    parser.add_argument(
        "--parameter-noise-std", type=float, help="random walk of θ per cycle (0: none)"
    )
    parser.add_argument(
        "--prior",
        choices=PRIORS,
        help="prior mean of the coefficients: --prior-mean for all (default), or the truth "
        "plus a draw of std --prior-std",
    )
    parser.add_argument("--prior-mean", type=float, help="prior mean of every coefficient (0)")
    parser.add_argument("--prior-std", type=float, help="prior std of every coefficient (0.5)")
    parser.add_argument("--obs-every", type=int, help="observe every k-th variable (1: all)")
    parser.add_argument(
        "--stop-after-chunks", type=int, help="stop after this many chunks (to test --resume)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def build_filter(config: Config, observation):
    """The filter of `config` (for ``ienkf``: the window method, lag 1)."""
    inflation = multiplicative(config.inflation)
    if config.method == "ienkf":
        return IEnKS(window=1, iterations=config.iterations, inflation=inflation)
    if config.method == "letkf":
        localisation = Localisation(config.localisation_radius)
        return LETKF(localisation, inflation, localisation.local_domains(observation))
    return ETKF(inflation=inflation) if config.method == "etkf" else EnKFN(inflation=inflation)


def two_scale_twin_run(config: Config, observation, key_start, key_obs):
    """The two-scale truth and observations of its slow block (`observation`'s indices).

    **Returns:** the truth's resolvent (10 RK4 steps of 0.005 per cycle), the slow part
    of the spun-up initial state, the slow trajectory (``cycles + forecast_leads``
    states, the fast variables dropped) and the observations of the first ``cycles``.
    """
    dynamics = TwoScaleLorenz96(n_slow=config.n, n_fast=config.n_fast, forcing=config.forcing)
    truth_model = hybridda.Resolvent(
        dynamics, config.truth_dt, steps_per_cycle=config.truth_steps_per_cycle
    )
    # The filter's operator acting on the full state: the fast variables are never seen.
    slow_block = IndexObservation(observation.indices, dynamics.state_size, observation.error)
    cycles = config.cycles + config.forecast_leads

    @eqx.filter_jit
    def twin():
        x_start = dynamics.default_initial_state()
        x_start = x_start + 0.1 * jax.random.normal(key_start, (dynamics.state_size,))
        x0 = hybridda.spin_up(truth_model, x_start, config.spin_up_cycles)
        full = hybridda.simulate(truth_model, x0, cycles)[1:]
        y = hybridda.synthesise_observations(slow_block, full[: config.cycles], key_obs)
        return x0[: config.n], full[:, : config.n], y

    return truth_model, *twin()


def fit_offline(config: Config, truth) -> dict:
    """The monomial surrogate fitted by least squares to the true slow trajectory.

    The best this model class does with perfect data (Bocquet et al. 2021's reference
    for the two-scale model). ``tendency``: linear least squares of the central
    difference ``(x_{k+1} - x_{k-1}) / 2Δt`` on the monomials of ``x_k``;
    ``resolvent`` (the reference): `offline_fit_iterations` Gauss-Newton steps from the
    tendency fit on the one-cycle error ``M_θ(x_k) - x_{k+1}`` of the surrogate's own
    RK4 step of Δt, the quantity the online filter's forecasts are judged by.
    """
    return _fit_offline(config, jnp.asarray(truth))


@eqx.filter_jit
def _fit_offline(config: Config, truth):
    q = MonomialDynamics.number_of_monomials(config.radius)
    features = MonomialDynamics(config.n, jnp.zeros(q), config.radius).features
    regressors = jax.vmap(features)(truth[1:-1]).reshape(-1, q)
    tendencies = (truth[2:] - truth[:-2]) / (2 * config.cycle_length)
    tendency_fit = jnp.linalg.lstsq(regressors, tendencies.reshape(-1))[0]

    def one_cycle_error(theta):
        # Every state of the trajectory as one batch (`Resolvent.ensemble`: one RK4 solve).
        surrogate = config.resolvent(MonomialDynamics(config.n, theta, config.radius))
        return surrogate.ensemble(truth[:-1]) - truth[1:]

    def gauss_newton(theta, _):
        # J: (K - 1, n, q) Jacobian of the one-cycle errors; normal equations (q x q).
        J = jax.jacfwd(one_cycle_error)(theta)
        JTJ = jnp.einsum("kiq,kir->qr", J, J)
        JTr = jnp.einsum("kiq,ki->q", J, one_cycle_error(theta))
        step = jax.scipy.linalg.solve(JTJ, -JTr, assume_a="pos")
        return theta + step, None

    resolvent_fit, _ = jax.lax.scan(
        gauss_newton, tendency_fit, None, length=config.offline_fit_iterations
    )
    return {"tendency": tendency_fit, "resolvent": resolvent_fit}


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    changes = dict(TWO_SCALE) if args.model == "two-scale" else {}
    if args.method == "ienkf":  # it inflates the whole [x; θ] by `--inflation` only
        changes.pop("parameter_inflation", None)
    changes |= QUICK if args.quick else {}
    for name in (
        "cycles",
        "chunk",
        "method",
        "ensemble_size",
        "inflation",
        "localisation_radius",
        "parameter_update",
        "parameter_inflation",
        "parameter_noise_std",
        "prior",
        "prior_mean",
        "prior_std",
        "obs_every",
        "iterations",
        "steps_per_cycle",
    ):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    try:
        config = Config(seed=args.seed, **changes)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    K, leads = config.cycles, config.forecast_leads

    # Twin: truth on the attractor (long enough for forecasts from the last analyses),
    # noisy observations of the first K states.
    k_start, k_obs, k_state, k_parameters, k_da, k_lyapunov, k_prior = jax.random.split(
        jax.random.key(config.seed), 7
    )
    observation = every_kth(config.n, config.obs_every, GaussianError(config.obs_std))
    if config.model == "one-scale":
        truth_model = config.resolvent(Lorenz96(n=config.n, forcing=config.forcing))

        @eqx.filter_jit
        def twin():
            x_start = truth_model.dynamics.default_initial_state()
            x_start = x_start + 0.1 * jax.random.normal(k_start, (config.n,))
            x0 = hybridda.spin_up(truth_model, x_start, config.spin_up_cycles)
            truth_long = hybridda.simulate(truth_model, x0, K + leads)[1:]
            y = hybridda.synthesise_observations(observation, truth_long[:K], k_obs)
            return x0, truth_long, y

        x0, truth_long, y = twin()
    else:
        truth_model, x0, truth_long, y = two_scale_twin_run(config, observation, k_start, k_obs)
    truth = truth_long[:K]

    # The surrogate: monomial coefficients, all learnt, from the prior mean. One-scale:
    # scored against Lorenz-96's exact coefficients; two-scale: against the offline fit
    # to the true slow trajectory (no exact truth), `--prior perturbed-truth` perturbing
    # the truncated one-scale model's (Lorenz-96, F = 10).
    q = MonomialDynamics.number_of_monomials(config.radius)
    truncated_coefficients = MonomialDynamics.lorenz96(config.n, config.forcing, config.radius)
    truncated_coefficients = truncated_coefficients.coefficients
    if config.model == "one-scale":
        true_coefficients = truncated_coefficients
    else:
        offline_fits = fit_offline(config, truth)
        true_coefficients = offline_fits["resolvent"]
    if config.prior == "constant":
        prior_mean = jnp.full(q, config.prior_mean, dtype=float)
    else:
        prior_mean = truncated_coefficients + config.prior_std * jax.random.normal(k_prior, (q,))
    surrogate = MonomialDynamics(config.n, prior_mean, config.radius)
    model = AugmentedModel(config.resolvent(surrogate), where=lambda m: m.dynamics.coefficients)
    if config.method == "ienkf":
        method = build_filter(config, observation)
    else:
        method = ParameterAugmentation(
            build_filter(config, observation),
            parameter_inflation=multiplicative(config.parameter_inflation),
            parameter_noise_std=config.parameter_noise_std or None,
            local_parameter_update=config.parameter_update,
        )
    state_ensemble = hybridda.initial_ensemble(
        k_state, x0, config.ensemble_size, config.initial_spread
    )

    def init_state():
        Z = model.initial_ensemble(k_parameters, state_ensemble, config.prior_std)
        augmented = config.n + q
        return {
            "ensemble": Z,
            "forecast_mean": jnp.zeros((K, augmented)),
            "analysis_mean": jnp.zeros((K, augmented)),
            "forecast_spread": jnp.zeros(K),
            "analysis_spread": jnp.zeros(K),
            "parameter_spread": jnp.zeros(K),
        }

    @eqx.filter_jit
    def run_chunk(Z, y_chunk, first_cycle):
        trajectory = run_filter(
            config,
            model,
            observation,
            method,
            y_chunk,
            Z,
            k_da,
            first_cycle=first_cycle,
            store_ensembles=True,
        )
        forecast_states, _ = model.split(trajectory.forecast_ensemble)
        analysis_states, analysis_parameters = model.split(trajectory.analysis_ensemble)
        return (
            trajectory.final_ensemble,
            trajectory.forecast_mean,
            trajectory.analysis_mean,
            metrics.spread(forecast_states),
            metrics.spread(analysis_states),
            metrics.spread(analysis_parameters),
        )

    checkpoints = args.out / "checkpoints"
    state, done, checkpointer = resume_or_init(
        checkpoints,
        init_state,
        resume=args.resume,
        config=dataclasses.asdict(config),
        max_to_keep=2,
    )
    from tqdm.auto import tqdm

    starts = list(range(done, K, config.chunk))
    if args.stop_after_chunks is not None:
        starts = starts[: args.stop_after_chunks]
    progress = tqdm(
        starts,
        desc="online augmented EnKF",
        unit="chunk",
        initial=done // config.chunk,
        total=-(-K // config.chunk),
        disable=args.no_progress,
    )
    chunk_seconds = []
    with checkpointer:
        for first in progress:
            last = min(first + config.chunk, K)
            tic = time.perf_counter()
            out = run_chunk(state["ensemble"], y[first:last], jnp.asarray(first))
            out = jax.block_until_ready(out)
            chunk_seconds.append((last - first, time.perf_counter() - tic))
            Z, forecast_mean, analysis_mean, forecast_spread, analysis_spread, spread_p = out
            state = {
                "ensemble": Z,
                "forecast_mean": state["forecast_mean"].at[first:last].set(forecast_mean),
                "analysis_mean": state["analysis_mean"].at[first:last].set(analysis_mean),
                "forecast_spread": state["forecast_spread"].at[first:last].set(forecast_spread),
                "analysis_spread": state["analysis_spread"].at[first:last].set(analysis_spread),
                "parameter_spread": state["parameter_spread"].at[first:last].set(spread_p),
            }
            checkpointer.save(last, state, force=True)
            states, parameters = model.split(analysis_mean[-1])
            progress.set_postfix(
                coef_err=f"{float(_rms(parameters - true_coefficients)):.3g}",
                rmse_a=f"{float(metrics.rmse(truth[last - 1], states)):.3f}",
            )
            done = last
    if done < K:
        print(f"stopped after {done} of {K} cycles; continue with --resume")
        return None

    common = dict(
        config=config,
        state=state,
        model=model,
        truth=truth,
        truth_long=truth_long,
        observation=observation,
        y=y,
        state_ensemble=state_ensemble,
        prior_mean=prior_mean,
        keys=(k_da, k_lyapunov),
        x0=x0,
    )
    if config.model == "two-scale":
        results = _two_scale_diagnostics(
            fits=offline_fits, truncated=truncated_coefficients, **common
        )
    else:
        results = _diagnostics(
            truth_model=truth_model, true_coefficients=true_coefficients, **common
        )
    steady = [seconds / cycles for cycles, seconds in chunk_seconds[1:]] or [
        seconds / cycles for cycles, seconds in chunk_seconds
    ]
    results["seconds_per_cycle"] = float(np.median(steady)) if steady else None
    results["monomials"] = list(surrogate.monomial_names())

    series = results.pop("series")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    np.savez(args.out / "series.npz", **series)
    _write_netcdf(args.out / "trajectory.nc", config, state, model, truth, y)
    _figure(args.out / "bocquet2021_online_enkf.png", config, results, series)
    _print_table(config, results)
    return results


def run_filter(config, model, observation, method, y, init, key, first_cycle=0, **options):
    """`hybridda.assimilate`, or `assimilate_windows` for the IEnKF (augmented operator)."""
    t0 = first_cycle * config.cycle_length
    if config.method != "ienkf":
        return hybridda.assimilate(
            model, observation, method, y, init, key, t0=t0, first_cycle=first_cycle, **options
        )
    if isinstance(model, AugmentedModel):
        observation = AugmentedObservation(observation, model.parameter_size)
    return hybridda.assimilate_windows(
        model, observation, method, y, init, key, t0=t0, first_cycle=first_cycle, **options
    )


def _valid_times(forecasts: dict, cycle_length: float, exponent: float) -> dict:
    """Valid time (model and Lyapunov time) of each named normalised-RMSE curve."""
    valid = {}
    for name, normalised_rmse in forecasts.items():
        times = metrics.valid_time(normalised_rmse, cycle_length, exponent)
        valid[name] = {
            "model_time": float(times.model_time),
            "lyapunov_time": float(times.lyapunov_time),
            "exceeded": bool(times.exceeded),
            "normalised_rmse": [float(v) for v in normalised_rmse],
        }
    return valid


def _rms(values, axis=-1):
    return jnp.sqrt(jnp.mean(values**2, axis=axis))


def _diagnostics(
    config,
    state,
    model,
    truth_model,
    truth,
    truth_long,
    observation,
    y,
    state_ensemble,
    true_coefficients,
    prior_mean,
    keys,
    x0,
):
    """Errors over cycles, the true-model reference run and forecast skill."""
    k_da, k_lyapunov = keys
    K = config.cycles
    analysis_states, analysis_parameters = model.split(state["analysis_mean"])
    forecast_states, _ = model.split(state["forecast_mean"])
    rmse_analysis = metrics.rmse(truth, analysis_states)
    rmse_forecast = metrics.rmse(truth, forecast_states)
    parameter_error = _rms(analysis_parameters - true_coefficients[None, :])
    prior_error = float(_rms(prior_mean - true_coefficients))

    # The same filter with the true model, on the same observations and initial states.
    reference = eqx.filter_jit(run_filter)(
        config, truth_model, observation, build_filter(config, observation), y, state_ensemble, k_da
    )
    rmse_reference = metrics.rmse(truth, reference.analysis_mean)

    second_half = K // 2
    last_tenth = K - max(K // 10, 1)
    learnt = analysis_parameters[-1]
    learnt_model = model.with_parameters(learnt)

    # Forecasts from the analyses of the second half: learnt surrogate vs true model
    # (same initial states), and from the truth (the surrogate's own error only).
    starts = np.linspace(second_half, K - 1, config.forecast_starts).astype(int)
    climatology = metrics.climatological_std(truth)
    leads = config.forecast_leads
    initial = analysis_states[starts]

    @eqx.filter_jit
    def surrogate_skill(coefficients, initial_states):
        # One compiled forecast for every (coefficients, initial states) pair below.
        def one(theta, states):
            surrogate = model.with_parameters(theta)
            return metrics.forecast_skill(surrogate, truth_long, starts, leads, states, climatology)

        return jax.vmap(one)(coefficients, initial_states)

    surrogates = surrogate_skill(
        jnp.stack([learnt, prior_mean, learnt]),
        jnp.stack([initial, initial, truth_long[starts]]),
    )
    true_skill = eqx.filter_jit(metrics.forecast_skill)(
        truth_model, truth_long, starts, leads, initial, climatology
    )
    forecasts = {
        "learnt_surrogate": surrogates.normalised_rmse[0],
        "true_model": true_skill.normalised_rmse,
        "prior_surrogate": surrogates.normalised_rmse[1],
        "learnt_surrogate_from_truth": surrogates.normalised_rmse[2],
    }
    lyapunov = eqx.filter_jit(metrics.lyapunov_spectrum)
    exponent_true = float(
        lyapunov(truth_model, x0, config.lyapunov_cycles, count=1, key=k_lyapunov)[0]
    )
    exponent_learnt = float(
        lyapunov(learnt_model, x0, config.lyapunov_cycles, count=1, key=k_lyapunov)[0]
    )
    valid = _valid_times(forecasts, config.cycle_length, exponent_true)

    milestones = [k for k in (0, 10, 100, 1000, 3000, 10000, 20000, 50000) if k < K] + [K - 1]
    final_error = float(jnp.mean(parameter_error[last_tenth:]))
    rmse_online = float(jnp.mean(rmse_analysis[second_half:]))
    rmse_true = float(jnp.mean(rmse_reference[second_half:]))
    return {
        "cycles": K,
        "obs_std": config.obs_std,
        "parameter_error_prior": prior_error,
        "parameter_error_at": {str(k): float(parameter_error[k]) for k in milestones},
        "parameter_error_final": final_error,
        "parameter_error_decrease": prior_error / final_error,
        "parameter_spread_final": float(jnp.mean(state["parameter_spread"][last_tenth:])),
        "true_coefficients": [float(v) for v in true_coefficients],
        "learnt_coefficients": [float(v) for v in learnt],
        "max_abs_coefficient_error": float(jnp.max(jnp.abs(learnt - true_coefficients))),
        "rmse_analysis_online": rmse_online,
        "rmse_analysis_online_last_tenth": float(jnp.mean(rmse_analysis[last_tenth:])),
        "rmse_forecast_online": float(jnp.mean(rmse_forecast[second_half:])),
        "spread_analysis_online": float(jnp.mean(state["analysis_spread"][second_half:])),
        "rmse_analysis_true_model": rmse_true,
        "rmse_ratio_online_to_true_model": rmse_online / rmse_true,
        "averaging_window": [second_half, K],
        "lyapunov_exponent_true": exponent_true,
        "lyapunov_exponent_learnt": exponent_learnt,
        "valid_time": valid,
        "series": {
            "parameter_error": np.asarray(parameter_error),
            "parameter_spread": np.asarray(state["parameter_spread"]),
            "rmse_analysis": np.asarray(rmse_analysis),
            "rmse_analysis_true_model": np.asarray(rmse_reference),
            "parameter_mean": np.asarray(analysis_parameters),
        },
    }


def _two_scale_diagnostics(
    config,
    state,
    model,
    truth,
    truth_long,
    observation,
    y,
    state_ensemble,
    fits,
    truncated,
    prior_mean,
    keys,
    x0,
):
    """Two-scale truth: the online surrogate against the truncated model and the offline fit.

    No exact coefficients exist, so the coefficient errors are against the offline fit
    (`fit_offline`, resolvent); the references run the same filter with fixed
    coefficients on the same observations; forecasts start from the true slow states.
    """
    k_da, k_lyapunov = keys
    K = config.cycles
    offline = fits["resolvent"]
    analysis_states, analysis_parameters = model.split(state["analysis_mean"])
    forecast_states, _ = model.split(state["forecast_mean"])
    rmse_analysis = metrics.rmse(truth, analysis_states)
    parameter_error = _rms(analysis_parameters - offline[None, :])
    prior_error = float(_rms(prior_mean - offline))
    learnt = analysis_parameters[-1]

    # The same filter with the truncated model and with the offline fit (one vmapped run
    # per inflation: with fixed, imperfect coefficients each model has its own best).
    second_half = K // 2
    runs = eqx.filter_jit(_fixed_coefficient_runs)
    reference_names = ("truncated_model", "offline_fit")
    by_inflation, series_by_inflation = {}, {}
    for factor in sorted({config.inflation, *config.reference_inflations}):
        method = build_filter(dataclasses.replace(config, inflation=factor), observation)
        means = runs(
            config,
            model,
            observation,
            method,
            y,
            state_ensemble,
            k_da,
            jnp.stack([truncated, offline]),
        )
        series = list(np.asarray(jax.vmap(metrics.rmse, in_axes=(None, 0))(truth, means)))
        series_by_inflation[factor] = series
        by_inflation[factor] = {
            name: float(jnp.mean(values[second_half:]))
            for name, values in zip(reference_names, series, strict=True)
        }
    # NaN (a diverged run) never wins: `min` over the finite means only.
    tuned = {
        name: min(
            (factor for factor in by_inflation if np.isfinite(by_inflation[factor][name])),
            key=lambda factor, name=name: by_inflation[factor][name],
            default=config.inflation,
        )
        for name in reference_names
    }
    rmse_truncated = series_by_inflation[tuned["truncated_model"]][0]
    rmse_offline = series_by_inflation[tuned["offline_fit"]][1]

    last_tenth = K - max(K // 10, 1)
    coefficient_sets = {
        "learnt_surrogate": learnt,
        "truncated_model": truncated,
        "offline_fit": offline,
        "prior_surrogate": prior_mean,
    }
    starts = np.linspace(second_half, K - 1, config.forecast_starts).astype(int)
    # One compiled program: forecasts, one-cycle errors and λ_max of every surrogate.
    skill, one_cycle, exponents = eqx.filter_jit(_surrogate_skill)(
        model,
        truth_long,
        jnp.asarray(starts),
        config.forecast_leads,
        metrics.climatological_std(truth),
        jnp.stack(list(coefficient_sets.values())),
        x0,
        config.lyapunov_cycles,
        k_lyapunov,
    )
    skill, one_cycle = np.asarray(skill), np.asarray(one_cycle)
    exponents = dict(zip(coefficient_sets, np.asarray(exponents).tolist(), strict=True))
    # Lyapunov times in units of the truncated model's (Lorenz-96, F = 10) exponent: the
    # two-scale truth's leading exponent is that of its fast variables.
    unit = exponents["truncated_model"]
    valid = _valid_times(dict(zip(coefficient_sets, skill, strict=True)), config.cycle_length, unit)

    milestones = [k for k in (0, 10, 100, 1000, 3000, 10000, 20000, 50000) if k < K] + [K - 1]
    final_error = float(jnp.mean(parameter_error[last_tenth:]))
    rmse_online = float(jnp.mean(rmse_analysis[second_half:]))
    return {
        "model": config.model,
        "cycles": K,
        "obs_std": config.obs_std,
        "coefficient_reference": "offline fit: one-cycle least squares on the true slow "
        "trajectory (no exact truth for a two-scale model)",
        "parameter_error_prior": prior_error,
        "parameter_error_at": {str(k): float(parameter_error[k]) for k in milestones},
        "parameter_error_final": final_error,
        "parameter_error_decrease": prior_error / final_error,
        "parameter_spread_final": float(jnp.mean(state["parameter_spread"][last_tenth:])),
        "truncated_error": float(_rms(truncated - offline)),
        "learnt_mean_last_tenth_error": float(
            _rms(jnp.mean(analysis_parameters[last_tenth:], axis=0) - offline)
        ),
        "offline_fit_coefficients": [float(v) for v in offline],
        "offline_tendency_fit_coefficients": [float(v) for v in fits["tendency"]],
        "truncated_coefficients": [float(v) for v in truncated],
        "learnt_coefficients": [float(v) for v in learnt],
        "max_abs_coefficient_error": float(jnp.max(jnp.abs(learnt - offline))),
        "one_cycle_error": {
            name: float(value) for name, value in zip(coefficient_sets, one_cycle, strict=True)
        },
        "rmse_analysis_online": rmse_online,
        "rmse_analysis_online_last_tenth": float(jnp.mean(rmse_analysis[last_tenth:])),
        "rmse_forecast_online": float(jnp.mean(metrics.rmse(truth, forecast_states)[second_half:])),
        "spread_analysis_online": float(jnp.mean(state["analysis_spread"][second_half:])),
        # The references at the online filter's inflation, and at their own best one.
        "rmse_analysis_truncated_model": by_inflation[config.inflation]["truncated_model"],
        "rmse_analysis_offline_fit": by_inflation[config.inflation]["offline_fit"],
        "rmse_analysis_truncated_model_tuned": by_inflation[tuned["truncated_model"]][
            "truncated_model"
        ],
        "rmse_analysis_offline_fit_tuned": by_inflation[tuned["offline_fit"]]["offline_fit"],
        "inflation_tuned": tuned,
        "rmse_analysis_references_by_inflation": {
            str(factor): values for factor, values in by_inflation.items()
        },
        "averaging_window": [second_half, K],
        "lyapunov_exponent_truncated_model": exponents["truncated_model"],
        "lyapunov_exponent_offline_fit": exponents["offline_fit"],
        "lyapunov_exponent_learnt": exponents["learnt_surrogate"],
        "valid_time_from": "true slow states; Lyapunov times of the truncated model",
        "valid_time": valid,
        "series": {
            "parameter_error": np.asarray(parameter_error),
            "parameter_spread": np.asarray(state["parameter_spread"]),
            "rmse_analysis": np.asarray(rmse_analysis),
            "rmse_analysis_truncated_model": np.asarray(rmse_truncated),
            "rmse_analysis_offline_fit": np.asarray(rmse_offline),
            "parameter_mean": np.asarray(analysis_parameters),
        },
    }


def _fixed_coefficient_runs(config, model, observation, method, y, init, key, coefficients):
    """Analysis means of the filter with fixed surrogate coefficients, one run per row."""

    def one(theta):
        surrogate = model.with_parameters(theta)
        return run_filter(config, surrogate, observation, method, y, init, key).analysis_mean

    return jax.vmap(one)(coefficients)


def _surrogate_skill(
    model, truth, starts, leads, climatology, coefficients, x0, lyapunov_cycles, key
):
    """Per coefficient row: the normalised RMSE of forecasts from the true states, the
    RMS one-cycle error on the true trajectory and the leading Lyapunov exponent."""

    def one(theta):
        surrogate = model.with_parameters(theta)
        skill = metrics.forecast_skill(surrogate, truth, starts, leads, None, climatology)
        one_cycle = surrogate.ensemble(truth[:-1]) - truth[1:]
        exponent = metrics.lyapunov_spectrum(surrogate, x0, lyapunov_cycles, count=1, key=key)
        return skill.normalised_rmse, jnp.sqrt(jnp.mean(one_cycle**2)), exponent[0]

    return jax.vmap(one)(coefficients)


def _write_netcdf(path, config, state, model, truth, y):
    from hybridda.io import save_netcdf

    states_f, _ = model.split(state["forecast_mean"])
    states_a, parameters = model.split(state["analysis_mean"])
    times = (jnp.arange(config.cycles) + 1) * config.cycle_length
    trajectory = hybridda.Trajectory(
        times,
        states_f,
        states_a,
        state["forecast_spread"],
        state["analysis_spread"],
        model.split(state["ensemble"])[0],
    )
    dataset = trajectory.to_xarray(truth=truth, observations=y)
    dataset["parameter_mean"] = (("time", "parameter"), np.asarray(parameters))
    dataset["parameter_spread"] = ("time", np.asarray(state["parameter_spread"]))
    dataset.attrs.update({"experiment": "bocquet2021_online_enkf", "seed": config.seed})
    save_netcdf(dataset, path)


def _figure(path, config, results, series):
    import matplotlib.pyplot as plt

    two_scale = config.model == "two-scale"
    reference = "the offline fit" if two_scale else "the truth"
    cycles = np.arange(1, config.cycles + 1)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    ax = axes[0, 0]
    ax.loglog(cycles, series["parameter_error"], color="C0", alpha=0.35, lw=0.6)
    window = 50
    smooth = np.convolve(series["parameter_error"], np.ones(window) / window, mode="valid")
    ax.loglog(
        cycles[window - 1 :], smooth, color="C0", label=f"coefficient RMSE ({window}-cycle mean)"
    )
    ax.loglog(cycles, series["parameter_spread"], ":", color="C1", label="coefficient spread")
    ax.set_xlabel("cycle")
    ax.set_ylabel("RMS over the 18 coefficients")
    ax.legend()
    ax.set_title(f"coefficients: error against {reference}")

    ax = axes[0, 1]
    window = max(config.cycles // 200, 1)
    kernel = np.ones(window) / window
    if two_scale:
        # Each reference at its best inflation of the grid.
        tuned = results["inflation_tuned"]
        references = (
            (
                series["rmse_analysis_truncated_model"],
                f"truncated model (L96, F = 10), infl. {tuned['truncated_model']}",
            ),
            (
                series["rmse_analysis_offline_fit"],
                f"offline fit to the true trajectory, infl. {tuned['offline_fit']}",
            ),
        )
    else:
        references = ((series["rmse_analysis_true_model"], "EnKF with the true model"),)
    for values, label in ((series["rmse_analysis"], "online (learnt surrogate)"), *references):
        smooth = np.convolve(values, kernel, mode="valid")
        ax.semilogy(cycles[window - 1 :], smooth, label=label)
    ax.axhline(config.obs_std, color="k", linestyle="--", linewidth=1, label="obs std")
    ax.set_xlabel("cycle")
    ax.set_ylabel(f"analysis RMSE ({window}-cycle mean)")
    ax.legend()
    ax.set_title("state: analysis RMSE")

    ax = axes[1, 0]
    names = results["monomials"]
    if two_scale:
        # The five largest coefficients of the offline fit.
        targets = np.asarray(results["offline_fit_coefficients"])
        shown = np.argsort(-np.abs(targets))[:5]
    else:
        targets = np.asarray(results["true_coefficients"])
        shown = np.flatnonzero(targets)
    for index in shown:
        line = ax.semilogx(cycles, series["parameter_mean"][:, index], label=names[index])[0]
        ax.axhline(targets[index], color=line.get_color(), ls=":")
    ax.set_xlabel("cycle")
    ax.set_ylabel("analysis mean")
    ax.legend(fontsize=8)
    ax.set_title(
        "the largest coefficients (dotted: offline fit)"
        if two_scale
        else "the non-zero coefficients (dotted: truth)"
    )

    ax = axes[1, 1]
    leads = np.arange(config.forecast_leads + 1) * config.cycle_length
    leads = (
        leads
        * results["lyapunov_exponent_truncated_model" if two_scale else "lyapunov_exponent_true"]
    )
    for name, values in results["valid_time"].items():
        ax.plot(leads, values["normalised_rmse"], label=name.replace("_", " "))
    ax.axhline(0.5, color="k", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("lead (Lyapunov times" + (" of the truncated model)" if two_scale else ")"))
    ax.set_ylabel("RMSE / climatological std")
    ax.set_ylim(0, 1.6)
    ax.legend(fontsize=8)
    ax.set_title(
        "forecasts from the true slow states"
        if two_scale
        else "forecast skill of the final surrogate"
    )
    truth = "the slow variables of two-scale Lorenz-96" if two_scale else "Lorenz-96"
    fig.suptitle(
        f"Online learning of {truth} with an augmented {config.method.upper()} "
        f"(N={config.ensemble_size}, obs every {config.obs_every}, seed {config.seed})"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(config, results):
    if config.model == "two-scale":
        rows = _two_scale_rows(results)
    else:
        rows = _one_scale_rows(results)
    width = max(len(row[0]) for row in rows)
    print(f"\n{'quantity':<{width}}  {'published (BFM 2021)':<24}  ours")
    for quantity, published, ours in rows:
        print(f"{quantity:<{width}}  {published:<24}  {ours}")
    seconds = results["seconds_per_cycle"]
    if seconds is not None:
        print(f"{config.cycles} cycles, {1e3 * seconds:.2f} ms per cycle (compiled chunk)")


def _two_scale_rows(results):
    tuned = results["inflation_tuned"]
    valid = {name: value["lyapunov_time"] for name, value in results["valid_time"].items()}
    error = results["one_cycle_error"]
    return [
        (
            "coefficient RMSE vs offline fit: prior → final",
            "approaches the offline fit",
            f"{results['parameter_error_prior']:.3g} → {results['parameter_error_final']:.3g}, "
            f"time mean {results['learnt_mean_last_tenth_error']:.3g} (truncated model "
            f"{results['truncated_error']:.3g})",
        ),
        (
            "analysis RMSE: online / truncated / offline fit",
            "online ≈ offline < truncated",
            f"{results['rmse_analysis_online']:.3f} / "
            f"{results['rmse_analysis_truncated_model']:.3f} / "
            f"{results['rmse_analysis_offline_fit']:.3f}",
        ),
        (
            "  references at their best inflation",
            "—",
            f"truncated {results['rmse_analysis_truncated_model_tuned']:.3f} "
            f"({tuned['truncated_model']}), offline fit "
            f"{results['rmse_analysis_offline_fit_tuned']:.3f} ({tuned['offline_fit']})",
        ),
        (
            "valid time from truth (Λ trunc.): learnt / truncated / offline",
            "—",
            f"{valid['learnt_surrogate']:.2f} / {valid['truncated_model']:.2f} / "
            f"{valid['offline_fit']:.2f}",
        ),
        (
            "one-cycle error: learnt / truncated / offline",
            "—",
            f"{error['learnt_surrogate']:.4f} / {error['truncated_model']:.4f} / "
            f"{error['offline_fit']:.4f}",
        ),
    ]


def _one_scale_rows(results):
    valid = results["valid_time"]
    return [
        (
            "coefficient RMSE: prior → final",
            "converges to the truth",
            f"{results['parameter_error_prior']:.3g} → {results['parameter_error_final']:.3g} "
            f"(÷{results['parameter_error_decrease']:.0f})",
        ),
        (
            "analysis RMSE, online vs true model",
            "close to the true model's",
            f"{results['rmse_analysis_online']:.3f} vs {results['rmse_analysis_true_model']:.3f}",
        ),
        (
            "valid time (Lyapunov), learnt vs true",
            "—",
            f"{valid['learnt_surrogate']['lyapunov_time']:.2f} vs "
            f"{valid['true_model']['lyapunov_time']:.2f} (prior surrogate "
            f"{valid['prior_surrogate']['lyapunov_time']:.2f})",
        ),
        (
            "λ_max, learnt vs true",
            "—",
            f"{results['lyapunov_exponent_learnt']:.3f} vs {results['lyapunov_exponent_true']:.3f}",
        ),
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
