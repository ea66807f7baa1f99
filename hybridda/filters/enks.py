"""Fixed-lag ensemble Kalman smoother (EnKS) of any global ensemble filter, by lag augmentation."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._checks import as_float_array
from ..cycle import EnsembleModel, check_cycling_arguments
from ..observe import AbstractObservation, check_observations
from ._base import AbstractEnsembleFilter
from .augmented import AugmentedObservation
from .letkf import LETKF


class SmootherOutput(eqx.Module):
    """The output of [`ensemble_smoother`][] over ``K`` cycles (states at times ``0..K``).

    - `times`: ``t0 + j Δt`` for ``j = 0..K``.
    - `filter_mean`: the filter's analysis mean after cycle ``k`` (time index ``k+1``),
      shape ``(K, n)``, as [`hybridda.Trajectory`][]'s `analysis_mean`.
    - `transition_start`, `transition_end`: ``(K, N, n)``; row ``j`` holds the smoothed
      members of ``x_j`` and ``x_{j+1}`` *from the same analysis*, so that member ``i``
      is one sample of the pair under the smoothing posterior (what the M-step of EM
      needs: ``x^i_{j+1} - M(x^i_j)`` samples the model error).
    - `smoothed_mean`, `smoothed_spread`: mean and spread of the smoothed ensemble of
      each time ``0..K`` (``x_j`` with the observations up to cycle ``min(j + L, K)``).
    """

    times: Float[Array, " K1"]
    filter_mean: Float[Array, "K n"]
    transition_start: Float[Array, "K N n"]
    transition_end: Float[Array, "K N n"]
    smoothed_mean: Float[Array, "K1 n"]
    smoothed_spread: Float[Array, " K1"]


def ensemble_smoother(
    model: EnsembleModel,
    observation: AbstractObservation,
    method: AbstractEnsembleFilter,
    y_seq: Float[Array, "K p"],
    init: Float[Array, "N n"],
    key: PRNGKeyArray,
    *,
    lag: int,
    model_error_std: float | Float[Array, ""] | Float[Array, " n"] | None = None,
    t0: float | Float[Array, ""] = 0.0,
    first_cycle: int | Int[Array, ""] = 0,
) -> SmootherOutput:
    r"""Fixed-lag EnKS (Evensen and van Leeuwen 2000): the filter on ``[x_k, …, x_{k-L}]``.

    A global ensemble filter's analysis is a linear combination of its members (ETKF,
    EnKF-N, the perturbed-observation EnKF: ``E_a = W E_f`` in ensemble space), so
    running it on the lag-augmented state ``z_k = [x_k; x_{k-1}; …; x_{k-L}]``, with the
    observation seeing ``x_k`` only, applies the same ``W`` to the ``L`` past states:
    that is the ensemble Kalman smoother with lag ``L`` (`lag`), in one `lax.scan`,
    for any global filter. The filter's inflation (and EnKF-N's adaptive one) acts on
    the whole stacked state, so every lagged block, model-noise part included, is
    inflated again at each of the ``L`` analyses it stays in the window: with explicit
    model error (`model_error_std`, e.g. the E-step of EM) use a filter without
    inflation, or ``Q`` estimated from the pairs is biased upwards. Exact for a linear
    Gaussian model (equals the fixed-lag Kalman/RTS smoother; see the tests). Local
    filters (LETKF) are rejected: their weights differ by site and time.

    The forecast of cycle ``k`` is ``x^i ← M(x^i) + σ ξ^i`` with ``ξ^i ~ N(0, I)`` when
    `model_error_std` ``σ`` (scalar, or one per variable: ``Q = diag(σ²)``) is given,
    the stochastic model of weak-constraint DA; its key is ``fold_in(key, c)`` and the
    filter's ``fold_in(fold_in(key, c), 1)``, ``c`` the global cycle index.

    **Arguments:** as [`hybridda.assimilate`][] (`init` is the ensemble at time ``t0``),
    plus `lag` ``L`` ≥ 1 (cycles of future observations each smoothed state receives)
    and `model_error_std`.

    **Returns:** a [`SmootherOutput`][].

    !!! cite "References"
        Evensen and van Leeuwen (2000), An ensemble Kalman smoother for nonlinear
        dynamics, *MWR* 128, 1852-1867. Bocquet, Brajard, Carrassi and Bertino (2020),
        Bayesian inference of chaotic dynamics by merging data assimilation, machine
        learning and expectation-maximization, *Found. Data Sci.* 2, 55-80.
    """
    check_cycling_arguments(observation, method, y_seq, init)
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
        raise ValueError(f"`lag` (cycles of smoothing) must be an int >= 1, got {lag!r}.")
    if isinstance(method, LETKF):
        raise ValueError(
            "`ensemble_smoother` needs a global filter (ETKF, EnKF, EnKF-N): a local "
            "filter's weights differ by site, so they cannot be applied to past states."
        )
    y_seq = check_observations(y_seq, "y_seq")
    N, n = init.shape
    cycles = y_seq.shape[0]
    noise_std = None
    if model_error_std is not None:
        noise_std = jnp.broadcast_to(as_float_array(model_error_std), (n,))
    lagged_observation = AugmentedObservation(observation, lag * n)
    indices = first_cycle + jnp.arange(cycles)
    start_times = t0 + (indices - first_cycle) * model.cycle_length

    def step(Z, inputs):
        # Z: (N, L+1, n), the members of [x_k, x_{k-1}, ..., x_{k-L}].
        k, time, y = inputs
        cycle_key = jax.random.fold_in(key, k)
        forecast = model.ensemble(Z[:, 0], time)
        if noise_std is not None:
            noise = jax.random.normal(cycle_key, forecast.shape, forecast.dtype)
            forecast = forecast + noise_std[None, :] * noise
        Z = jnp.concatenate([forecast[:, None], Z[:, :-1]], axis=1)
        analysis = method.analysis(
            Z.reshape(N, -1),
            y,
            lagged_observation.at_cycle(k),
            jax.random.fold_in(cycle_key, 1),
        ).reshape(Z.shape)
        # The two oldest states: the transition that leaves the window now.
        return analysis, (analysis[:, 0].mean(axis=0), analysis[:, -1], analysis[:, -2])

    buffer = jnp.repeat(init[:, None], lag + 1, axis=1)
    final, (filter_mean, oldest, second) = jax.lax.scan(step, buffer, (indices, start_times, y_seq))
    # Row k of `oldest` is x_{k+1-L} after cycle k: rows k >= L - 1 are the transitions
    # j = 0..K-L; the last window holds the rest, x_{K-L}..x_K, oldest last.
    remaining = jnp.flip(final, axis=1).swapaxes(0, 1)  # (L+1, N, n): x_{K-L}..x_K
    start = jnp.concatenate([oldest[lag - 1 :], remaining[1:-1]])
    end = jnp.concatenate([second[lag - 1 :], remaining[2:]])
    if cycles < lag:
        # The window never filled: every transition comes from the final one.
        start, end = remaining[lag - cycles : -1], remaining[lag - cycles + 1 :]
    smoothed = jnp.concatenate([start, end[-1:]])
    spread = jnp.sqrt(jnp.mean(jnp.var(smoothed, axis=1, ddof=1), axis=-1))
    times = t0 + jnp.arange(cycles + 1) * model.cycle_length
    return SmootherOutput(times, filter_mean, start, end, smoothed.mean(axis=1), spread)
