"""Differentiable losses of whole cycled DA runs.

[`cycled_loss`][] runs the same cycles as [`hybridda.assimilate`][] (forecast every
member, then the method's analysis, key ``fold_in(key, k)`` for cycle ``k``) and returns
one scalar: a time-averaged score of the run. It is a pure function of the model, the
observation operator and the method, so `jax.grad` / `eqx.filter_grad` give exact
gradients with respect to any of their floating-point leaves (the Lorenz-96 forcing, a
network's weights, an inflation factor, ``B``, the observation-error std), through every
forecast and every analysis of the run.

The per-cycle score is computed inside the loop, so a run only keeps what one cycle
needs; with ``checkpoint=B`` the backward pass also keeps only the ensembles at the
boundaries of blocks of ``B`` cycles plus the intermediates of one block, and with
``truncate=L`` gradients flow through windows of at most ``L`` cycles.
"""

import functools
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._method import AbstractAnalysisMethod, AbstractWindowMethod
from .cycle import (
    EnsembleModel,
    assimilate_windows,
    check_block_size,
    check_cycling_arguments,
    scan_in_blocks,
)
from .filters import AbstractEnsembleFilter, ParameterAugmentation
from .filters.evidence import ensemble_negative_log_likelihood, log_det_and_quadratic
from .observe import AbstractObservation, check_observations, observed_mask
from .variational import Var3D

LossKind = Literal["negative_log_likelihood", "innovation_rmse", "analysis_rmse", "forecast_rmse"]
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)
_NEEDS_TRUTH = ("analysis_rmse", "forecast_rmse")


def cycled_loss(
    model: EnsembleModel,
    observation: AbstractObservation,
    method: AbstractAnalysisMethod | AbstractWindowMethod,
    y_seq: Float[Array, "K p"],
    init: Float[Array, "N n"],
    key: PRNGKeyArray,
    *,
    kind: LossKind = "negative_log_likelihood",
    truth: Float[Array, "K n_state"] | None = None,
    burn_in: int = 0,
    checkpoint: int | None = None,
    truncate: int | None = None,
    t0: float | Float[Array, ""] = 0.0,
    first_cycle: int | Int[Array, ""] = 0,
) -> Float[Array, ""]:
    r"""A scalar loss of the cycled DA run `assimilate(model, observation, method, ...)`.

    The first six arguments are those of [`hybridda.assimilate`][]; the loss averages a
    per-cycle score over the cycles ``k ≥ burn_in``:

    - ``"negative_log_likelihood"`` (default; needs no truth): minus the log-density
      of each observation given the previous ones, in the Gaussian approximation of the
      forecast, ``y_k ~ N(H(x̄^f_k), H P^f_k Hᵀ + R)`` over the observed (non-NaN)
      entries. ``P^f`` is the forecast ensemble's sample covariance (after the filter's
      prior inflation, without localisation), evaluated in ensemble space
      (Sherman-Morrison-Woodbury, an N × N Cholesky factor); for 3D-Var (``N = 1``)
      it is the static ``B``. Summed over cycles this is minus the log-evidence of the
      observations under the model, ``-log p(y_1, ..., y_K)`` (Carrassi et al. 2017),
      a likelihood whose minimiser over model or filter parameters is a consistent
      estimator: the loss for parameter estimation from observations alone.
    - ``"innovation_rmse"`` (needs no truth): RMS over the observed entries of
      ``y_k - H(x̄^f_k)``, the forecast's misfit to the observations.
    - ``"analysis_rmse"`` / ``"forecast_rmse"``: RMSE of the analysis / forecast mean
      against `truth` (twin experiments; DAPPER's ``rmse.a`` / ``rmse.f``).

    Cycles where nothing is observed (all NaN) do not count in the two
    observation-space averages.

    **Differentiating.** Take gradients with respect to the modules themselves
    (Equinox style: every floating-point array leaf is a parameter)::

        grads = eqx.filter_grad(
            lambda parts: cycled_loss(parts[0], observation, parts[1], y, E0, key)
        )((model, method))
        grads[0].dynamics.forcing, grads[1].inflation.factor

    or through a function building the modules from any pytree of parameters::

        def loss(params):
            model = eqx.tree_at(lambda m: m.dynamics.forcing, base_model, params["F"])
            method = ETKF(inflation=Multiplicative(params["inflation"]))
            return cycled_loss(model, observation, method, y, E0, key)

        jax.grad(loss)({"F": 7.0, "inflation": 1.05})

    Static fields (``eqx.field(static=True)``, e.g. a
    [`hybridda.filters.Localisation`][] radius, the step size, ``N``) are not
    differentiable. Compile the loss (or its gradient) with `eqx.filter_jit`.

    **Arguments:**

    - `model`, `observation`, `method`, `y_seq`, `init`, `key`, `t0`, `first_cycle`:
      as for [`hybridda.assimilate`][] (the same cycles, the same keys).
    - `kind`: one of `LOSS_KINDS`, see above.
    - `truth`: true states ``(K, n)`` at the analysis times, for the RMSE-to-truth kinds.
      With [`hybridda.filters.ParameterAugmentation`][] (members ``[x; θ]``) every kind
      scores the state block ``x``: `truth` is ``(K, n)`` with ``n`` the observation's
      state size, and the likelihood uses the forecast covariance of ``x`` after the
      augmented method's prior inflations.
    - `burn_in`: cycles left out of the average (they still condition the later ones).
    - `checkpoint`: ``None`` or a block size ``B``: rematerialise blocks of ``B``
      cycles in the backward pass, as `checkpoint` of [`hybridda.assimilate`][]
      (same value; gradients equal to round-off; memory ≈ ``K/B`` ensembles plus one
      block's intermediates; about one more forward pass of compute).
    - `truncate`: ``None`` (exact gradient) or a window length ``L``: truncated
      backpropagation through time. The value is unchanged, but the ensemble entering
      each window of ``L`` cycles is held constant (`lax.stop_gradient`), so gradients
      only follow each parameter's effect over at most ``L`` cycles. Over hundreds of
      cycles of a chaotic model the exact gradient of this (exactly computed) loss is
      dominated by fine-scale wiggles of the loss surface and is useless for descent;
      windows a few times the filter's memory (e.g. ``L`` = 25-50 cycles for Lorenz-96)
      give a smooth gradient whose zero is close to the loss's minimiser (see
      ``experiments/learn_forcing.py``). Combines with `checkpoint` (blocks of ``B``
      cycles inside each window).

    **Window methods** (4D-Var, IEnKS; [`hybridda.cycle.assimilate_windows`][]) score
    one entry per window, at its end: the window-end analysis and background forecast
    against `truth`, or the forecast's misfit to that cycle's observation; a window
    counts when its end is at a cycle ``≥ burn_in``. Their forecast covariance is not
    formed, so ``"negative_log_likelihood"`` and `truncate` are for sequential methods;
    `checkpoint` counts windows.

    **Returns:** the scalar loss. A non-finite per-cycle score (a diverged run) raises
    an `eqx.EquinoxRuntimeError` naming the first such cycle, rather than returning NaN.

    !!! cite "Reference"
        Carrassi, Bocquet, Hannart and Ghil (2017), Estimating model evidence using data
        assimilation, *QJRMS* 143, 866-880 (the ensemble estimate of the likelihood).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"Unknown loss `kind` {kind!r}; choose one of {', '.join(LOSS_KINDS)}.")
    check_cycling_arguments(observation, method, y_seq, init)
    if isinstance(method, AbstractWindowMethod):
        return _windowed_loss(
            model, observation, method, y_seq, init, key, kind, truth, burn_in, checkpoint,
            truncate, t0, first_cycle,
        )  # fmt: skip
    cycles, state_size = y_seq.shape[0], init.shape[1]
    if isinstance(method, ParameterAugmentation):
        state_size = observation.state_size  # scores see x of the members [x; θ]
    _check_truth(kind, truth, cycles, state_size)
    if kind not in _NEEDS_TRUTH:
        truth = jnp.zeros((cycles, 0), dtype=init.dtype)  # unused; keeps one scan signature
    if kind == "negative_log_likelihood" and init.shape[0] < 2 and not isinstance(method, Var3D):
        raise ValueError(
            "The 'negative_log_likelihood' loss needs a forecast covariance: an ensemble "
            f"(N >= 2) or a method with a static B (Var3D); got N=1 with {type(method).__name__}."
        )
    if not isinstance(burn_in, int) or not 0 <= burn_in < cycles:
        raise ValueError(f"`burn_in` must be an integer in [0, {cycles}), got {burn_in!r}.")
    check_block_size("checkpoint", checkpoint, "cycles per rematerialised block")
    check_block_size("truncate", truncate, "cycles per window of backpropagation")
    y_seq = check_observations(y_seq, "y_seq")

    indices = first_cycle + jnp.arange(cycles)
    start_times = t0 + (indices - first_cycle) * model.cycle_length  # as in `assimilate`

    def step(E, inputs):
        k, time, y, truth_k = inputs  # k: global cycle index
        observation_k = observation.at_cycle(k)
        forecast = model.ensemble(E, time)
        key_k = jax.random.fold_in(key, k)
        if kind == "negative_log_likelihood" and isinstance(method, AbstractEnsembleFilter):
            # The filter's own evidence: its analysis matrices, not formed twice.
            analysis, nll = method.analysis_and_evidence(forecast, y, observation_k, key_k)
            return analysis, (nll, jnp.any(observed_mask(y)))
        analysis = method.analysis(forecast, y, observation_k, key_k)
        score = _score(kind, method, forecast, analysis, y, observation_k, truth_k)
        return analysis, score

    def run(E, inputs):
        if checkpoint is None:
            return jax.lax.scan(step, E, inputs)
        rematerialised = jax.checkpoint(functools.partial(jax.lax.scan, step), prevent_cse=False)
        return scan_in_blocks(rematerialised, E, inputs, checkpoint)

    inputs = (indices, start_times, y_seq, truth)
    if truncate is None:
        _, (scores, counted) = run(init, inputs)
    else:

        def window(E, inputs):
            return run(jax.lax.stop_gradient(E), inputs)

        _, (scores, counted) = scan_in_blocks(window, init, inputs, truncate)

    weights = jnp.where(counted & (jnp.arange(cycles) >= burn_in), 1.0, 0.0)
    loss = jnp.sum(weights * scores) / jnp.sum(weights)
    return _error_if_not_finite(loss, scores, kind, first_cycle)


def _check_truth(kind, truth, cycles, state_size):
    if kind not in _NEEDS_TRUTH:
        return
    if truth is None:
        raise ValueError(f"The {kind!r} loss needs `truth` (shape ({cycles}, n)).")
    if truth.shape != (cycles, state_size):
        raise ValueError(f"`truth` must have shape ({cycles}, {state_size}), got {truth.shape}.")


def _windowed_loss(
    model, observation, method, y_seq, init, key, kind, truth, burn_in, checkpoint, truncate,
    t0, first_cycle,
):  # fmt: skip
    """`cycled_loss` of a window method: one score per window, at its end."""
    cycles = y_seq.shape[0]
    if kind == "negative_log_likelihood":
        raise ValueError(
            f"{type(method).__name__} forms no forecast covariance: use kind="
            "'innovation_rmse' (no truth needed), 'analysis_rmse' or 'forecast_rmse'."
        )
    if truncate is not None:
        raise ValueError("`truncate` is for sequential methods; use `checkpoint` for windows.")
    _check_truth(kind, truth, cycles, init.shape[1])
    if not isinstance(burn_in, int) or not 0 <= burn_in < cycles:
        raise ValueError(f"`burn_in` must be an integer in [0, {cycles}), got {burn_in!r}.")
    trajectory = assimilate_windows(
        model, observation, method, y_seq, init, key, t0=t0, first_cycle=first_cycle,
        checkpoint=checkpoint,
    )  # fmt: skip
    windows = trajectory.times.shape[0]
    ends = method.window - 1 + method.stride * np.arange(windows)  # cycle of each window end
    y_ends = check_observations(y_seq, "y_seq")[ends]
    if kind == "innovation_rmse":

        def misfit(k, y, x):
            mask = observed_mask(y)
            residual = jnp.where(mask, y - observation.at_cycle(k)(x), 0.0)
            return _root(jnp.sum(residual**2) / jnp.maximum(jnp.sum(mask), 1)), jnp.any(mask)

        scores, counted = jax.vmap(misfit)(first_cycle + ends, y_ends, trajectory.forecast_mean)
    else:
        mean = trajectory.analysis_mean if kind == "analysis_rmse" else trajectory.forecast_mean
        scores = jax.vmap(_root)(jnp.mean((mean - truth[ends]) ** 2, axis=1))
        counted = jnp.ones(windows, dtype=bool)
    if ends[-1] < burn_in:
        raise ValueError(f"`burn_in` ({burn_in}) leaves no window end to score.")
    weights = jnp.where(counted & (ends >= burn_in), 1.0, 0.0)
    loss = jnp.sum(weights * scores) / jnp.sum(weights)
    return _error_if_not_finite(loss, scores, kind, first_cycle)


def _score(kind, method, forecast, analysis, y, observation, truth_k):
    """One cycle's score and whether it counts in the average."""
    if isinstance(method, ParameterAugmentation):
        # Members are [x; θ]: score the state block, with the forecast covariance of x
        # the augmented analysis uses (its prior inflations applied).
        n = observation.state_size
        analysis = analysis[:, :n]
        if kind == "negative_log_likelihood":
            forecast = method.prior_state_ensemble(forecast, n)
            return ensemble_negative_log_likelihood(forecast, y, observation), jnp.any(
                observed_mask(y)
            )
        forecast = forecast[:, :n]
    if kind == "analysis_rmse":
        return _root(jnp.mean((analysis.mean(axis=0) - truth_k) ** 2)), jnp.asarray(True)
    if kind == "forecast_rmse":
        return _root(jnp.mean((forecast.mean(axis=0) - truth_k) ** 2)), jnp.asarray(True)
    mask = observed_mask(y)
    observed = jnp.any(mask)
    if kind == "innovation_rmse":
        misfit = jnp.where(mask, y - observation(forecast.mean(axis=0)), 0.0)
        return _root(jnp.sum(misfit**2) / jnp.maximum(jnp.sum(mask), 1)), observed
    if forecast.shape[0] == 1:
        return _negative_log_likelihood_static(method, forecast[0], y, observation), observed
    # (Ensemble filters score their own evidence in `cycled_loss`'s step.)
    return ensemble_negative_log_likelihood(forecast, y, observation), observed


def _root(mean_square):
    """``√mean_square`` with the zero subgradient at 0 (where ``√`` has an infinite slope:
    a forecast started exactly at the truth, a cycle without observations)."""
    zero = mean_square == 0  # (not `> 0`: a NaN must stay a NaN)
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, mean_square)))


def _negative_log_likelihood_static(method: Var3D, x, y, observation):
    # y ~ N(H(x_b), H B Hᵀ + R) over the observed entries (H linearised at x_b); the
    # unobserved rows and columns are those of the identity (no contribution), as in Var3D.
    mask = observed_mask(y)
    H = jnp.where(mask[:, None], observation.linearise(x), 0.0)
    R = observation.error.covariance(observation.obs_size)
    R = jnp.where(mask[:, None] & mask[None, :], R, jnp.eye(R.shape[0]))
    covariance = H @ method.background_covariance @ H.T + R
    innovation = jnp.where(mask, y - observation(x), 0.0)
    log_det, quadratic = log_det_and_quadratic(covariance, innovation)
    return 0.5 * (quadratic + log_det + jnp.sum(mask) * jnp.log(2 * jnp.pi))


def _error_if_not_finite(loss, scores, kind, first_cycle):
    """`loss`, raising when a score is not finite, in the forward and the backward pass."""

    def where(k):
        if isinstance(first_cycle, int) and first_cycle != 0:
            return f"cycle {k} of `y_seq` (global cycle {first_cycle + k})"
        return f"cycle {k} of `y_seq`"

    messages = tuple(
        f"The cycled {kind} loss is not finite: its score at {where(k)} is the first "
        "non-finite one, so the run diverged there. Check the parameters (forcing, "
        "inflation, B, network weights), the step size and the initial ensemble."
        for k in range(scores.shape[0])
    )
    bad = ~jnp.isfinite(scores)
    return _checked(messages, loss, jnp.any(bad), jnp.argmax(bad))


# Under `jax.grad` the loss value itself is unused, so an `error_if` on it alone would be
# removed as dead code. The derivative is therefore multiplied by a checked 1: reverse
# mode needs that factor to transpose the product, so the check runs there too.
@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _checked(messages, loss, failed, index):
    return eqx.branched_error_if(loss, failed, index, messages)


@_checked.defjvp
def _checked_jvp(messages, primals, tangents):
    loss, failed, index = primals
    checked_one = eqx.branched_error_if(jnp.ones_like(loss), failed, index, messages)
    return _checked(messages, loss, failed, index), tangents[0] * checked_one
