"""Bocquet, Brajard, Carrassi and Bertino (2020): surrogate, trajectory and model error by EM.

Reproduces the approach of *Bayesian inference of chaotic dynamics by merging data
assimilation, machine learning and expectation-maximization* (Found. Data Sci. 2,
55-80, 2020): the surrogate parameters ``θ``, the state trajectory and the model-error
covariance ``Q`` are estimated together from partial noisy observations by
expectation-maximisation, with the paper's practical approximations:

- **E-step**: a fixed-lag ensemble Kalman smoother (`hybridda.filters.ensemble_smoother`,
  ETKF without inflation by default) run with the current surrogate and stochastic
  model error ``N(0, Q)`` over the whole observation period;
- **M-step**: ``θ`` minimises the weak-constraint model term
  ``½ Σ ‖x_{k+1} - M_θ(x_k)‖²_{Q⁻¹}`` over the smoothed members
  (`hybridda.learn.TransitionFit` / `fit_transitions`, Gauss-Newton), then ``Q`` is the
  expected square of those residuals under the smoothed ensemble, squared mean plus
  unbiased spread per transition (`hybridda.learn.model_error_variance`): a scalar
  ``q`` for Lorenz-96, a diagonal for Lorenz-63.

Two twins, each with a surrogate of the right structure (so its parameters are
identifiable and its error has a known floor):

- Lorenz-96, n = 40, Δt = 0.05 (one RK4 step), every variable observed with std 1,
  N = 40; the surrogate is `hybridda.dynamics.MonomialDynamics` (18 local quadratic
  monomial coefficients shared by all sites, the "NN" of the paper);
- Lorenz-63, Δt = 0.05 (5 RK4 steps of 0.01), every variable observed with std 0.3;
  the surrogate is `hybridda.dynamics.QuadraticDynamics` (all 30 quadratic coefficients).

The truth has a stochastic model error of std σ_q per cycle (0.1), so the variance of
the residual between the truth and the best surrogate of the class is known: σ_q², and
we also measure it directly by fitting the surrogate to the true trajectory (the
"oracle" ``q``). The script shows ``Q`` converging to that value over the EM
iterations, the coefficients converging, the analysis and smoother RMSE, and the
Lyapunov spectrum of the learnt surrogate next to the true model's.

Each EM iteration is checkpointed (Orbax); ``--resume`` continues an interrupted run.

**Status.** Lorenz-63 (``--quick``, 500 cycles, 7 EM iterations, < 30 s): ``Q``
decreases at every iteration from 0.1 to 0.025 (oracle 0.0099), the surrogate's
one-cycle error on the true states falls from 0.34 to 0.026 (below σ_q = 0.1) and its
largest Lyapunov exponent is 0.92 vs 0.88. EM for a variance converges linearly and
slowly when each η_k is barely observed (with observation std 1 instead of 0.3, ``Q``
only reached 0.052 after 16 iterations). Lorenz-96 is slower (minutes) and is run
with ``--models l96``. The E-step uses the ETKF without inflation: an inflation on the
lag-stacked state also multiplies the model-noise part of each lagged block, and biased
``Q`` upwards (EnKF-N: 0.10 → 0.14 in 4 iterations). With every other variable observed
and N = 20, even the plain filter with the exact model diverges once the truth has
model noise (σ_q = 0.1), so the L96 twin observes every variable with N = 40.

Usage::

    python paper/bocquet2020_em.py --quick            # small L63 twin (< 30 s)
    python paper/bocquet2020_em.py --quick --models l96   # small L96 twin (minutes)
    python paper/bocquet2020_em.py                    # the full run
    python paper/bocquet2020_em.py --resume           # continue an interrupted run
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
from hybridda.dynamics import Lorenz63, Lorenz96, MonomialDynamics, QuadraticDynamics  # noqa: E402
from hybridda.filters import ETKF, EnKFN, ensemble_smoother, multiplicative  # noqa: E402
from hybridda.learn import TransitionFit, fit_transitions, model_error_variance  # noqa: E402
from hybridda.observe import GaussianError, every_kth  # noqa: E402

MODELS = ("l96", "l63")
METHODS = ("etkf", "enkf-n", "etkf-1.02")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of one twin (written to config.json)."""

    model: str = "l96"
    cycles: int = 5000
    obs_std: float = 1.0
    obs_every: int = 2
    truth_model_error_std: float = 0.1
    method: str = "etkf"
    ensemble_size: int = 20
    lag: int = 10
    em_iterations: int = 20
    initial_variance: float = 0.1
    initial_perturbation: float = 0.005
    gauss_newton_iterations: int = 4
    lyapunov_cycles: int = 5000
    lyapunov_count: int | None = None
    spin_up_cycles: int = 2000
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS or self.method not in METHODS:
            raise ValueError(f"`model` must be in {MODELS} and `method` in {METHODS}.")
        if self.ensemble_size < 2 or self.lag < 1 or self.em_iterations < 1:
            raise ValueError("Need `ensemble_size` >= 2, `lag` >= 1 and `em_iterations` >= 1.")
        if not (self.initial_variance > 0 and self.truth_model_error_std >= 0):
            raise ValueError("`initial_variance` must be > 0 and the truth's model error >= 0.")
        if self.cycles < 2 * self.lag:
            raise ValueError(f"`cycles` must be >= 2 x lag, got {self.cycles}.")

    @property
    def state_size(self) -> int:
        return 40 if self.model == "l96" else 3

    @property
    def diagonal(self) -> bool:
        """Lorenz-63: one variance per variable; Lorenz-96 (homogeneous): a scalar."""
        return self.model == "l63"


FULL = {
    "l96": {"obs_every": 1, "ensemble_size": 40},
    "l63": {
        "model": "l63",
        "obs_every": 1,
        "obs_std": 0.3,
        "cycles": 5000,
        "lag": 5,
        "initial_perturbation": 0.02,
        "lyapunov_cycles": 20000,
    },
}
QUICK = {
    "l96": {
        "obs_every": 1,
        "ensemble_size": 40,
        "cycles": 600,
        "lag": 5,
        "em_iterations": 5,
        "lyapunov_cycles": 1000,
        "spin_up_cycles": 500,
    },
    "l63": {
        "model": "l63",
        "obs_every": 1,
        "obs_std": 0.3,
        "cycles": 500,
        "lag": 5,
        "em_iterations": 7,
        "initial_perturbation": 0.02,
        "lyapunov_cycles": 2000,
        "spin_up_cycles": 500,
    },
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, noise and ensemble seed")
    parser.add_argument("--out", type=Path, default=Path("runs/bocquet2020_em"))
    parser.add_argument("--quick", action="store_true", help="small twins (< 30 s)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, help="twins to run (default: both; --quick: l63)"
    )
    parser.add_argument("--method", choices=METHODS, help="E-step filter (default enkf-n)")
    parser.add_argument("--cycles", type=int, help="observation cycles")
    parser.add_argument("--em-iterations", type=int, help="EM iterations")
    parser.add_argument("--stop-after", type=int, help="stop after this many EM iterations")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def build_twin(config: Config):
    """Truth (with stochastic model error), observations, and the surrogate template."""
    n = config.state_size
    if config.model == "l96":
        truth_model = hybridda.Resolvent(Lorenz96(n), 0.05)
        true_surrogate = hybridda.Resolvent(MonomialDynamics.lorenz96(n), 0.05)
    else:
        truth_model = hybridda.Resolvent(Lorenz63(), 0.01, steps_per_cycle=5)
        true_surrogate = hybridda.Resolvent(QuadraticDynamics.lorenz63(), 0.01, steps_per_cycle=5)
    key = jax.random.key(config.seed)
    k_start, k_noise, k_obs = jax.random.split(key, 3)
    x0 = hybridda.spin_up(
        truth_model, 3.0 + jax.random.normal(k_start, (n,)), config.spin_up_cycles
    )
    std = config.truth_model_error_std

    @jax.jit
    def run(x0):
        def step(x, k):
            x = truth_model(x) + std * jax.random.normal(jax.random.fold_in(k_noise, k), (n,))
            return x, x

        return jnp.concatenate([x0[None], jax.lax.scan(step, x0, jnp.arange(config.cycles))[1]])

    truth = run(x0)
    observation = every_kth(n, config.obs_every, GaussianError(config.obs_std))
    y = hybridda.synthesise_observations(observation, truth[1:], k_obs)
    return truth_model, true_surrogate, truth, observation, y


def _where(model):
    return model.dynamics.coefficients


def _filter(config: Config):
    # The default E-step has no inflation: on the lag-stacked state an inflation also
    # multiplies the model-noise part of every lagged block (L times before a pair leaves
    # the window), which biases the M-step's Q upwards (EnKF-N: q rose 0.10 -> 0.14).
    if config.method == "enkf-n":
        return EnKFN()
    return ETKF(inflation=multiplicative(1.02)) if config.method == "etkf-1.02" else ETKF()


@eqx.filter_jit
def _m_step(surrogate, states, next_states, variance, iterations, diagonal):
    # `states`: (K, N, n) smoothed pairs (Q from their means and unbiased spread), or
    # (K, n) for the oracle fit to the true trajectory.
    n = states.shape[-1]
    flat, flat_next = states.reshape(-1, n), next_states.reshape(-1, n)
    cost = TransitionFit(surrogate, _where, flat, flat_next, variance)
    theta, _ = fit_transitions(cost, iterations=iterations)
    fitted = cost.with_parameters(theta)
    return theta, model_error_variance(fitted, states, next_states, diagonal=diagonal)


def run_twin(config: Config, args, directory: Path) -> dict:
    n = config.state_size
    truth_model, true_surrogate, truth, observation, y = build_twin(config)
    true_theta = _where(true_surrogate)
    key = jax.random.key(config.seed + 1)
    k_theta, k_init, k_da, k_lyapunov = jax.random.split(key, 4)
    # The best surrogate of the class: fitted to the true trajectory (the "oracle").
    oracle_theta, oracle_q = _m_step(
        true_surrogate, truth[:-1], truth[1:], 1.0, config.gauss_newton_iterations, config.diagonal
    )
    theta0 = true_theta + config.initial_perturbation * jax.random.normal(k_theta, true_theta.shape)
    q0 = jnp.full((n,) if config.diagonal else (), config.initial_variance)
    initial_ensemble = hybridda.initial_ensemble(k_init, truth[0], config.ensemble_size, 1.0)
    E = config.em_iterations
    method = _filter(config)

    @eqx.filter_jit
    def e_step(theta, q, key):
        surrogate = eqx.tree_at(_where, true_surrogate, theta)
        return ensemble_smoother(
            surrogate,
            observation,
            method,
            y,
            initial_ensemble,
            key,
            lag=config.lag,
            model_error_std=jnp.sqrt(q),
        )

    def init_state():
        return {
            "theta": theta0,
            "variance": q0,
            "variance_history": jnp.zeros((E + 1, *q0.shape)).at[0].set(q0),
            "theta_history": jnp.zeros((E + 1, *theta0.shape)).at[0].set(theta0),
            "rmse_filter": jnp.zeros(E),
            "rmse_smoother": jnp.zeros(E),
            "variance_of_means": jnp.zeros((E, *q0.shape)),
        }

    state, done, checkpointer = resume_or_init(
        directory / "checkpoints",
        init_state,
        resume=args.resume,
        config=dataclasses.asdict(config),
        max_to_keep=2,
    )
    from tqdm.auto import tqdm

    stop = E if args.stop_after is None else min(E, args.stop_after)
    progress = tqdm(
        range(done, stop),
        desc=f"EM {config.model}",
        unit="it",
        initial=done,
        total=E,
        disable=args.no_progress,
    )
    tic = time.perf_counter()
    with checkpointer:
        for iteration in progress:
            out = e_step(state["theta"], state["variance"], jax.random.fold_in(k_da, iteration))
            theta, q = _m_step(
                eqx.tree_at(_where, true_surrogate, state["theta"]),
                out.transition_start,
                out.transition_end,
                state["variance"],
                config.gauss_newton_iterations,
                config.diagonal,
            )
            surrogate = eqx.tree_at(_where, true_surrogate, theta)
            of_means = model_error_variance(
                surrogate, out.smoothed_mean[:-1], out.smoothed_mean[1:], diagonal=config.diagonal
            )
            state = {
                "theta": theta,
                "variance": q,
                "variance_history": state["variance_history"].at[iteration + 1].set(q),
                "theta_history": state["theta_history"].at[iteration + 1].set(theta),
                "rmse_filter": state["rmse_filter"]
                .at[iteration]
                .set(jnp.mean(metrics.rmse(truth[1:], out.filter_mean))),
                "rmse_smoother": state["rmse_smoother"]
                .at[iteration]
                .set(jnp.mean(metrics.rmse(truth, out.smoothed_mean))),
                "variance_of_means": state["variance_of_means"].at[iteration].set(of_means),
            }
            checkpointer.save(iteration + 1, state, force=True)
            progress.set_postfix(
                q=f"{float(jnp.mean(q)):.4g}",
                rmse_s=f"{float(state['rmse_smoother'][iteration]):.3f}",
            )
            done = iteration + 1
    seconds = time.perf_counter() - tic
    if done < E:
        print(f"{config.model}: stopped after {done} of {E} EM iterations; continue with --resume")
        return None

    learnt = eqx.tree_at(_where, true_surrogate, state["theta"])
    count = config.lyapunov_count
    lyapunov = eqx.filter_jit(metrics.lyapunov_spectrum)
    kwargs = dict(cycles=config.lyapunov_cycles, count=count, key=k_lyapunov)
    # The true model as a surrogate with the exact coefficients (equal to the truth's
    # tendency to round-off): the same structure as `learnt`, so one compilation.
    exponents_true = lyapunov(true_surrogate, truth[-1], **kwargs, transient_cycles=200)
    exponents_learnt = lyapunov(learnt, truth[-1], **kwargs, transient_cycles=200)
    exponents_oracle_q = None

    # The surrogate's one-cycle error on the true states, RMS of M_θ(x) - M(x): the
    # coefficients are poorly conditioned (30 for Lorenz-63, nearly collinear monomials
    # on the attractor), so their RMS error says little; this says what matters.
    @eqx.filter_jit
    def surrogate_error(theta):
        model = eqx.tree_at(_where, true_surrogate, theta)
        difference = model.ensemble(truth[:-1], 0.0) - true_surrogate.ensemble(truth[:-1], 0.0)
        return jnp.sqrt(jnp.mean(difference**2))

    surrogate_errors = [float(surrogate_error(theta)) for theta in state["theta_history"]]
    coefficient_error = jnp.sqrt(
        jnp.mean(
            (state["theta_history"] - true_theta[None]) ** 2, axis=range(1, true_theta.ndim + 1)
        )
    )
    true_variance = config.truth_model_error_std**2

    def as_list(values):
        return np.asarray(values).tolist()

    del exponents_oracle_q
    return {
        "model": config.model,
        "true_variance": true_variance,
        "oracle_variance": as_list(oracle_q),
        "oracle_coefficient_error": float(jnp.sqrt(jnp.mean((oracle_theta - true_theta) ** 2))),
        "variance_per_iteration": as_list(state["variance_history"]),
        "variance_of_smoothed_means_per_iteration": as_list(state["variance_of_means"]),
        "final_variance": as_list(state["variance"]),
        "final_variance_ratio": float(jnp.mean(state["variance"]) / jnp.mean(oracle_q)),
        "coefficient_error_per_iteration": as_list(coefficient_error),
        "surrogate_error_per_iteration": surrogate_errors,
        "rmse_filter_per_iteration": as_list(state["rmse_filter"]),
        "rmse_smoother_per_iteration": as_list(state["rmse_smoother"]),
        "obs_std": config.obs_std,
        "lyapunov_true": as_list(exponents_true),
        "lyapunov_learnt": as_list(exponents_learnt),
        "true_coefficients": as_list(true_theta),
        "learnt_coefficients": as_list(state["theta"]),
        "em_seconds": seconds,
    }


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    configs = {}
    models = args.models or (["l63"] if args.quick else list(MODELS))
    for name in models:
        changes = dict(base[name])
        for option in ("method", "cycles", "em_iterations"):
            if getattr(args, option) is not None:
                changes[option] = getattr(args, option)
        try:
            configs[name] = Config(seed=args.seed, **changes)
        except ValueError as error:
            raise SystemExit(str(error)) from error
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, config in configs.items():
        result = run_twin(config, args, args.out / name)
        if result is None:
            return None
        results[name] = result
    (args.out / "config.json").write_text(
        json.dumps({name: dataclasses.asdict(c) for name, c in configs.items()}, indent=2)
    )
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    _figure(args.out / "bocquet2020_em.png", results)
    _print_table(results)
    return results


def _figure(path, results):
    import matplotlib.pyplot as plt

    rows = len(results)
    fig, axes = plt.subplots(
        rows, 3, figsize=(14, 4 * rows), constrained_layout=True, squeeze=False
    )
    for row, (name, result) in enumerate(results.items()):
        ax = axes[row, 0]
        q = np.asarray(result["variance_per_iteration"])
        q = q.mean(axis=1) if q.ndim == 2 else q
        means = np.asarray(result["variance_of_smoothed_means_per_iteration"])
        means = means.mean(axis=1) if means.ndim == 2 else means
        ax.semilogy(np.arange(len(q)), q, "o-", label="EM estimate (smoothed members)")
        ax.semilogy(np.arange(1, len(q)), means, "x:", label="from smoothed means only")
        ax.axhline(result["true_variance"], color="k", ls="--", label="truth σ_q²")
        ax.axhline(
            np.mean(result["oracle_variance"]), color="C3", ls=":", label="oracle (best fit)"
        )
        ax.set_xlabel("EM iteration")
        ax.set_ylabel("model-error variance q (mean over variables)")
        ax.set_title(f"{name.upper()}: Q estimate")
        ax.legend(fontsize=8)

        ax = axes[row, 1]
        ax.semilogy(result["coefficient_error_per_iteration"], "o-", label="coefficient RMSE")
        ax.semilogy(
            result["surrogate_error_per_iteration"], "d-", label="one-cycle surrogate error"
        )
        ax.axhline(result["true_variance"] ** 0.5, color="k", ls="--", label="σ_q")
        ax.semilogy(
            np.arange(1, len(q)), result["rmse_smoother_per_iteration"], "s-", label="smoother RMSE"
        )
        ax.semilogy(
            np.arange(1, len(q)), result["rmse_filter_per_iteration"], "^-", label="filter RMSE"
        )
        ax.set_xlabel("EM iteration")
        ax.set_title(f"{name.upper()}: parameters and state")
        ax.legend(fontsize=8)

        ax = axes[row, 2]
        index = np.arange(1, len(result["lyapunov_true"]) + 1)
        ax.plot(index, result["lyapunov_true"], "k-o", ms=3, label="true model")
        ax.plot(index, result["lyapunov_learnt"], "C1--x", ms=4, label="learnt surrogate")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("index")
        ax.set_ylabel("Lyapunov exponent")
        ax.set_title(f"{name.upper()}: Lyapunov spectrum")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print_table(results):
    print(
        f"\n{'model':<5} {'q truth':>8} {'q oracle':>9} {'q EM (it 0 → last)':>26} "
        f"{'coef err':>16} {'M_θ - M err':>16} {'rmse_s':>7} {'λ1 true/learnt':>16}"
    )
    for name, r in results.items():
        q = np.asarray(r["variance_per_iteration"])
        q = q.mean(axis=1) if q.ndim == 2 else q
        err = r["coefficient_error_per_iteration"]
        model_err = r["surrogate_error_per_iteration"]
        print(
            f"{name:<5} {r['true_variance']:>8.4f} {np.mean(r['oracle_variance']):>9.4f} "
            f"{q[0]:>12.4f} → {q[-1]:<11.4f} {err[0]:>7.3f} → {err[-1]:<6.4f} "
            f"{model_err[0]:>7.3f} → {model_err[-1]:<6.4f} "
            f"{r['rmse_smoother_per_iteration'][-1]:>7.3f} "
            f"{r['lyapunov_true'][0]:>7.3f}/{r['lyapunov_learnt'][0]:<7.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
