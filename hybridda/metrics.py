"""Verification metrics for DA experiments, and diagnostics of a learnt surrogate.

Everything here is a pure function of arrays (or of a one-cycle model), so it can be
jitted (`eqx.filter_jit`) or vmapped by the caller.

- DA scores: [`rmse`][], [`spread`][], [`crps`][], [`rank_histogram`][], [`summary`][].
- Probability forecasts of a binary event: [`brier_score`][], [`reliability_diagram`][].
- Surrogate against truth: [`forecast_skill`][] (error against lead time) and
  [`valid_time`][] (when it crosses a threshold, in model and Lyapunov times);
  [`lyapunov_spectrum`][] of any one-cycle model; [`power_spectral_density`][] and
  [`attractor_histograms`][] to compare long free runs (the climate of the surrogate).
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Shaped

from ._checks import concrete, require_count, require_positive

# Metrics accept JAX or NumPy arrays (e.g. read back from netCDF).
ArrayIn = Array | np.ndarray
# A real scalar given as a Python number or a 0-d array.
Scalar = float | int | Float[ArrayIn, ""]
# One DA cycle of a model, e.g. a `hybridda.Resolvent` or a `hybridda.Surrogate`.
OneCycleModel = Callable[[Float[Array, " n"]], Float[Array, " n"]]


def rmse(truth: Float[ArrayIn, "*K n"], estimate: Float[ArrayIn, "*K n"]) -> Float[Array, "*K"]:
    """Root-mean-square error over the state variables (last axis), per time."""
    return jnp.sqrt(jnp.mean((estimate - truth) ** 2, axis=-1))


def spread(ensemble: Float[ArrayIn, "*K N n"]) -> Float[Array, "*K"]:
    """Ensemble spread ``sqrt(mean_i var_i)`` (unbiased variance over members)."""
    return jnp.sqrt(jnp.mean(jnp.var(ensemble, axis=-2, ddof=1), axis=-1))


def time_average(series: Float[ArrayIn, " K ..."], burn_in: int = 0) -> Float[Array, "..."]:
    """Mean over times after discarding the first `burn_in` cycles."""
    if not 0 <= burn_in < series.shape[0]:
        raise ValueError(f"`burn_in` must lie in [0, {series.shape[0]}), got {burn_in}.")
    return jnp.mean(series[burn_in:], axis=0)


def crps(ensemble: Float[ArrayIn, "*K N n"], truth: Float[ArrayIn, "*K n"]) -> Float[Array, "*K"]:
    """Continuous ranked probability score of the ensemble, averaged over variables.

    Empirical form ``E|X - x| - ½ E|X - X'|`` (Gneiting and Raftery 2007, eq. 21).
    """
    skill = jnp.mean(jnp.abs(ensemble - truth[..., None, :]), axis=-2)
    pairs = jnp.abs(ensemble[..., :, None, :] - ensemble[..., None, :, :])
    dispersion = 0.5 * jnp.mean(pairs, axis=(-3, -2))
    return jnp.mean(skill - dispersion, axis=-1)


def energy_score(
    ensemble: Float[ArrayIn, "*K N n"], truth: Float[ArrayIn, "*K n"]
) -> Float[Array, "*K"]:
    r"""Energy score of the ensemble: the multivariate CRPS over the whole state vector.

    Empirical form $\frac1N\sum_i \lVert x_i - y\rVert - \frac1{2N^2}\sum_{i,j}
    \lVert x_i - x_j\rVert$ (Gneiting and Raftery 2007, eq. 22 with β = 1; Gneiting et al.
    2008). For one variable it is the [`crps`][]. Unlike the CRPS of each variable, it
    also scores the joint structure (a field with the right marginals but the wrong
    spatial pattern scores worse). The pairwise distances come from the Gram matrix of
    the centred members, ``O(N² n)`` without an ``N × N × n`` temporary.
    """
    ensemble, truth = jnp.asarray(ensemble), jnp.asarray(truth)
    skill = jnp.mean(jnp.linalg.norm(ensemble - truth[..., None, :], axis=-1), axis=-1)
    centred = ensemble - jnp.mean(ensemble, axis=-2, keepdims=True)
    gram = centred @ jnp.swapaxes(centred, -1, -2)
    squared = jnp.diagonal(gram, axis1=-2, axis2=-1)
    distance2 = squared[..., :, None] + squared[..., None, :] - 2 * gram
    dispersion = 0.5 * jnp.mean(jnp.sqrt(jnp.maximum(distance2, 0.0)), axis=(-2, -1))
    return skill - dispersion


def rank_histogram(
    ensemble: Float[ArrayIn, "K N n"], truth: Float[ArrayIn, "K n"]
) -> Int[Array, " N+1"]:
    """Counts of the truth's rank among the members, over all times and variables.

    A flat histogram indicates a reliable ensemble (Anderson 1996; Hamill 2001). Ties
    (a member equal to the truth) count as the member lying above the truth; they only
    occur with discrete data.
    """
    members = ensemble.shape[-2]
    ranks = jnp.sum(ensemble < truth[..., None, :], axis=-2).reshape(-1)
    return jnp.bincount(ranks, length=members + 1)


def _check_probability_forecast(probability, outcome, binary: bool):
    """Shapes equal, forecast probabilities in [0, 1], outcomes 0/1 (or in [0, 1])."""
    probability, outcome = jnp.asarray(probability), jnp.asarray(outcome)
    if probability.shape != outcome.shape:
        raise ValueError(
            f"`probability` {probability.shape} and `outcome` {outcome.shape} must have the "
            "same shape (one forecast probability per outcome); broadcast them first."
        )
    known = concrete(probability)
    if known is not None and known.size and not (known.min() >= 0 and known.max() <= 1):
        raise ValueError(
            "`probability` must lie in [0, 1] (a forecast probability of the event), got "
            f"values from {known.min()!r} to {known.max()!r}."
        )
    known = concrete(outcome)
    if known is not None and known.size:
        values = known.astype(float)
        if binary and not np.all((values == 0) | (values == 1)):
            raise ValueError(
                "`outcome` must be binary (0/1 or bool: whether the event happened); for "
                "the frequency of the event over several truths, score each truth and average."
            )
        if not (values.min() >= 0 and values.max() <= 1):
            raise ValueError("`outcome` must lie in [0, 1] (an event frequency).")
    return probability, outcome.astype(probability.dtype)


def brier_score(
    probability: Float[ArrayIn, "*shape"],
    outcome: Shaped[ArrayIn, "*shape"],
    axis: int | tuple[int, ...] | None = None,
) -> Float[Array, "..."]:
    r"""Brier score ``mean (p − o)²`` of probability forecasts of a binary event (Brier 1950).

    `probability` ``p`` in [0, 1] and `outcome` ``o`` in {0, 1} (bool or numbers), of the
    same shape; the mean is over `axis` (default: all entries). 0 is perfect; a forecast
    of the event's frequency ``q`` scores ``q(1 − q)`` on average. For an ensemble of
    binary members forecasting ``p`` = the fraction of members with the event, the
    empirical CRPS of [`crps`][] equals this score (``E|X − o| − ½E|X − X'| = (p − o)²``).
    """
    probability, outcome = _check_probability_forecast(probability, outcome, binary=True)
    return jnp.mean((probability - outcome) ** 2, axis=axis)


class ReliabilityDiagram(NamedTuple):
    """The output of [`reliability_diagram`][]; bin ``k`` is ``[edges[k], edges[k+1])``
    (the last one closed).

    - `bin_edges`: ``(bins + 1,)`` from 0 to 1.
    - `forecast_probability`: the mean forecast probability in each bin (NaN if empty).
    - `observed_frequency`: the mean outcome in each bin (NaN if empty): on the
      diagonal for a reliable forecast.
    - `counts`: the number of forecasts in each bin.
    """

    bin_edges: Float[Array, " bins_plus_one"]
    forecast_probability: Float[Array, " bins"]
    observed_frequency: Float[Array, " bins"]
    counts: Int[Array, " bins"]

    def reliability(self) -> Float[Array, ""]:
        r"""The reliability term of the Brier score's decomposition (Murphy 1973) on these
        bins: $\sum_k n_k (\bar p_k − \bar o_k)^2 / \sum_k n_k$ (0: perfectly reliable)."""
        filled = self.counts > 0
        gaps = jnp.where(filled, self.forecast_probability - self.observed_frequency, 0.0)
        return jnp.sum(self.counts * gaps**2) / jnp.sum(self.counts)


def reliability_diagram(
    probability: Float[ArrayIn, "*shape"], outcome: Shaped[ArrayIn, "*shape"], bins: int = 10
) -> ReliabilityDiagram:
    """Reliability diagram of probability forecasts: observed frequency against forecast
    probability, in `bins` equal bins of [0, 1] (Wilks 2011, section 8.4.4).

    Forecast ``p`` falls in bin ``min(floor(p · bins), bins − 1)``. `outcome` is binary,
    or the frequency of the event in [0, 1] at that point (e.g. the fraction of an
    ensemble of truths): the observed frequency of a bin is the mean outcome over its
    forecasts either way. All entries of the arrays (of the same shape) are pooled.
    """
    require_count("bins", bins, "probability bins")
    probability, outcome = _check_probability_forecast(probability, outcome, binary=False)
    p, o = probability.reshape(-1), outcome.reshape(-1)
    index = jnp.clip(jnp.floor(p * bins).astype(jnp.int32), 0, bins - 1)
    counts = jnp.bincount(index, length=bins)
    sum_p = jnp.zeros(bins, p.dtype).at[index].add(p)
    sum_o = jnp.zeros(bins, p.dtype).at[index].add(o)
    safe = jnp.maximum(counts, 1)
    return ReliabilityDiagram(
        jnp.linspace(0.0, 1.0, bins + 1, dtype=p.dtype),
        jnp.where(counts > 0, sum_p / safe, jnp.nan),
        jnp.where(counts > 0, sum_o / safe, jnp.nan),
        counts,
    )


def summary(truth, trajectory, burn_in: int = 0) -> dict[str, float]:
    """Time-averaged analysis/forecast RMSE and spread after `burn_in` (DAPPER's ``rmse.a``)."""
    return {
        "rmse_analysis": float(time_average(rmse(truth, trajectory.analysis_mean), burn_in)),
        "rmse_forecast": float(time_average(rmse(truth, trajectory.forecast_mean), burn_in)),
        "spread_analysis": float(time_average(trajectory.analysis_spread, burn_in)),
        "spread_forecast": float(time_average(trajectory.forecast_spread, burn_in)),
    }


# ---------------------------------------------------------------------------------------
# Diagnostics of a learnt surrogate against the true model
# ---------------------------------------------------------------------------------------


class ForecastSkill(NamedTuple):
    """The output of [`forecast_skill`][]; entry ``k`` of a lead axis is lead ``k`` cycles.

    - `rmse`: RMSE against lead time, averaged over the start points, shape ``(L+1,)``.
    - `normalised_rmse`: `rmse` / `climatological_std`, shape ``(L+1,)``.
    - `rmse_per_start`: the RMSE of each forecast, shape ``(S, L+1)``.
    - `climatological_std`: the normaliser (a scalar).
    """

    rmse: Float[Array, " leads_plus_one"]
    normalised_rmse: Float[Array, " leads_plus_one"]
    rmse_per_start: Float[Array, "S leads_plus_one"]
    climatological_std: Float[Array, ""]


def climatological_std(truth: Float[ArrayIn, "K n"]) -> Float[Array, ""]:
    """``sqrt(mean_i var_t x_i)``: the time standard deviation of each variable, pooled.

    Each variable's own time mean is removed, so the value is the RMSE of forecasting the
    climatological mean; a forecast drawn at random from the climate has an RMSE of
    ``√2`` times this value.
    """
    return _pooled_std(jnp.asarray(truth))


def _pooled_std(truth):
    # Shared by `forecast_skill`, whose argument of the same name shadows the function.
    return jnp.sqrt(jnp.mean(jnp.var(truth, axis=0)))


def forecast_skill(
    model: OneCycleModel,
    truth: Float[ArrayIn, "K n"],
    starts: Int[ArrayIn, " S"],
    leads: int,
    initial_states: Float[ArrayIn, "S n"] | None = None,
    climatological_std: Scalar | None = None,
) -> ForecastSkill:
    r"""Forecast error of `model` against `truth` as a function of lead time.

    From each start cycle ``s`` a forecast runs `leads` cycles of `model` (`jax.vmap`
    over the starts, `lax.scan` over the leads) and is compared with ``truth[s + k]``
    at every lead ``k = 0..leads``. The RMSE of each forecast (over variables, as
    [`rmse`][]) is averaged over the starts and divided by the climatological
    standard deviation of the truth ([`climatological_std`][]): a normalised RMSE as
    in Brajard et al. (2020), ``≈ 1`` for the climatological mean, ``≈ √2`` for a
    random state of the climate. Feed it to [`valid_time`][].

    **Arguments:**

    - `model`: one DA cycle, ``x -> x``: a [`hybridda.Resolvent`][] (the true model,
      with perturbed or analysed initial states), a [`hybridda.Surrogate`][], any
      hybrid model or plain function. It is called with the state only, so it must be
      autonomous (every model in `hybridda.dynamics` is).
    - `truth`: the true trajectory, one row per cycle, shape ``(K, n)``.
    - `starts`: cycle indices of the initial times, shape ``(S,)``; each needs
      ``0 <= s`` and ``s + leads < K``.
    - `leads`: number of cycles to forecast (a Python int ≥ 1).
    - `initial_states`: optional ``(S, n)`` initial states instead of
      ``truth[starts]``, e.g. the analyses at those cycles; the error at lead 0 is then
      the initial error.
    - `climatological_std`: the normaliser; default [`climatological_std`][] of
      `truth`. Pass that of a longer run when `truth` is short.

    **Returns:** a [`ForecastSkill`][].

    !!! cite "Reference"
        Brajard, Carrassi, Bocquet and Bertino (2020), Combining data assimilation and
        machine learning to emulate a dynamical model from sparse and noisy
        observations: a case study with the Lorenz 96 model, *J. Comput. Sci.* 44,
        101171 (forecast skill as normalised RMSE against lead time).
    """
    truth = jnp.asarray(truth)
    starts = jnp.asarray(starts)
    if truth.ndim != 2:
        raise ValueError(f"`truth` must have shape (cycles, n), got {truth.shape}.")
    if starts.ndim != 1 or starts.shape[0] < 1:
        raise ValueError(
            f"`starts` must be a non-empty 1-d array of cycle indices, got shape {starts.shape}."
        )
    if isinstance(leads, bool) or not isinstance(leads, int) or leads < 1:
        raise ValueError(f"`leads` must be a Python int >= 1 (cycles to forecast), got {leads!r}.")
    cycles = truth.shape[0]
    known_starts = concrete(starts)
    fix = f"choose starts in [0, {cycles - leads}) or fewer `leads`, or pass a longer `truth`"
    if known_starts is not None:
        if known_starts.min() < 0 or known_starts.max() + leads >= cycles:
            raise ValueError(
                f"`starts` + `leads` must index `truth` (K={cycles}), but starts span "
                f"[{known_starts.min()}, {known_starts.max()}] with leads={leads}: {fix}."
            )
    else:
        starts = eqx.error_if(
            starts, (starts < 0) | (starts + leads >= cycles), f"`starts` out of range: {fix}."
        )
    if initial_states is None:
        initial_states = truth[starts]
    initial_states = jnp.asarray(initial_states)
    if initial_states.shape != (starts.shape[0], truth.shape[1]):
        raise ValueError(
            f"`initial_states` must have shape (len(starts), n) = "
            f"{(starts.shape[0], truth.shape[1])}, got {initial_states.shape}."
        )
    if climatological_std is None:
        normaliser = _pooled_std(truth)
    else:
        require_positive(
            "climatological_std", climatological_std, "Leave it None to use that of `truth`."
        )
        normaliser = jnp.asarray(climatological_std, dtype=truth.dtype)

    def step(states, lead):
        states = jax.vmap(model)(states)
        return states, rmse(truth[starts + lead], states)

    _, errors = jax.lax.scan(step, initial_states, jnp.arange(1, leads + 1))
    per_start = jnp.concatenate([rmse(truth[starts], initial_states)[None], errors]).T
    mean = jnp.mean(per_start, axis=0)
    return ForecastSkill(mean, mean / normaliser, per_start, normaliser)


class ValidTime(NamedTuple):
    """The output of [`valid_time`][] (arrays of the batch shape of the error).

    - `lead`: index of the first lead whose error exceeds the threshold (the last lead
      when none does).
    - `model_time`: ``lead · dt_cycle``, in model time units.
    - `lyapunov_time`: ``model_time · λ_max`` (``None`` without a Lyapunov exponent).
    - `exceeded`: ``False`` where the error never exceeds the threshold, so that the
      times are only lower bounds (the whole horizon).
    """

    lead: Int[Array, "*batch"]
    model_time: Float[Array, "*batch"]
    lyapunov_time: Float[Array, "*batch"] | None
    exceeded: Bool[Array, "*batch"]


def valid_time(
    normalised_error: Float[ArrayIn, "*batch leads_plus_one"],
    dt_cycle: Scalar,
    lyapunov_exponent: Scalar | None = None,
    threshold: Scalar = 0.5,
) -> ValidTime:
    r"""The first lead time at which the normalised forecast error exceeds `threshold`.

    Entry ``k`` of the last axis of `normalised_error` is the error after ``k`` cycles
    (``k = 0`` the initial error), as in [`ForecastSkill.normalised_rmse`][] or
    ``rmse_per_start / climatological_std`` for one valid time per forecast. The valid
    time is ``t = k* · dt_cycle`` with ``k*`` the first ``k`` where the error is above
    `threshold` (resolution one cycle); in Lyapunov times it is ``t · λ_max``. A NaN or
    infinite error (a diverged surrogate) counts as exceeding. If the error never
    exceeds `threshold`, the whole horizon ``L · dt_cycle`` is returned with
    ``exceeded=False``: a lower bound, run longer forecasts.

    **Arguments:**

    - `normalised_error`: forecast error divided by the climatological standard
      deviation, shape ``(..., L+1)``.
    - `dt_cycle`: model time per cycle (e.g. `Resolvent.cycle_length`), > 0.
    - `lyapunov_exponent`: the leading Lyapunov exponent λ_max of the true model
      (per model time unit, > 0), e.g. from [`lyapunov_spectrum`][]; ``None`` skips
      the Lyapunov times.
    - `threshold`: default 0.5: the forecast is valid while its RMSE is at most half
      the climatological standard deviation, the usual threshold on a normalised RMSE
      in the surrogate-forecasting literature (e.g. the valid prediction time of
      Vlachas et al. 2020, which normalises each variable by its own standard
      deviation: the same for homogeneous models such as Lorenz-96). Thresholds differ
      between papers: pass the value of the one you compare with.

    Some authors report the last lead still below the threshold instead, one cycle
    earlier than the time returned here.

    **Returns:** a [`ValidTime`][].

    !!! cite "References"
        Brajard et al. (2020), *J. Comput. Sci.* 44, 101171. Vlachas, Pathak, Hunt,
        Sapsis, Girvan, Ott and Koumoutsakos (2020), Backpropagation algorithms and
        reservoir computing in recurrent neural networks for the forecasting of complex
        spatiotemporal dynamics, *Neural Networks* 126, 191-217.
    """
    normalised_error = jnp.asarray(normalised_error)
    if normalised_error.ndim < 1 or normalised_error.shape[-1] < 1:
        raise ValueError(
            "`normalised_error` must have a last axis of lead times (lead 0 first), got "
            f"shape {normalised_error.shape}."
        )
    require_positive("dt_cycle", dt_cycle, "Pass the model time per cycle.")
    require_positive("threshold", threshold, "The usual value is 0.5.")
    if lyapunov_exponent is not None:
        require_positive(
            "lyapunov_exponent",
            lyapunov_exponent,
            "Lyapunov times need a chaotic model (λ_max > 0); pass None to skip them.",
        )
    # `not <=` rather than `>`: NaN compares false, and a NaN error is not a valid forecast.
    exceeds = ~(normalised_error <= threshold)
    exceeded = jnp.any(exceeds, axis=-1)
    lead = jnp.where(exceeded, jnp.argmax(exceeds, axis=-1), normalised_error.shape[-1] - 1)
    model_time = lead * jnp.asarray(dt_cycle, dtype=normalised_error.dtype)
    lyapunov_time = None if lyapunov_exponent is None else model_time * lyapunov_exponent
    return ValidTime(lead, model_time, lyapunov_time, exceeded)


def lyapunov_spectrum(
    model: OneCycleModel,
    x0: Float[ArrayIn, " n"],
    cycles: int,
    dt_cycle: Scalar | None = None,
    count: int | None = None,
    *,
    key: PRNGKeyArray,
    transient_cycles: int = 0,
) -> Float[Array, " count"]:
    r"""The leading `count` Lyapunov exponents of a one-cycle model, per model time unit.

    The standard QR method (Benettin et al. 1980; Shimada and Nagashima 1979): a
    random orthonormal basis of `count` tangent vectors is propagated with the
    tangent-linear model of each cycle (`jax.linearize`, `vmap`-ed over the basis),
    re-orthonormalised by a QR decomposition every cycle, and
    ``λ_i = Σ_cycles log|R_ii| / (cycles · dt_cycle)``. The first `transient_cycles`
    cycles are run but not averaged, so that the state reaches the attractor and the
    basis aligns with the Lyapunov vectors. The exponents come in decreasing order
    once the basis has aligned; the sum of the full spectrum is the mean rate of
    volume contraction, ``log|det M'(x)| / dt_cycle`` averaged over the orbit, for any
    averaging length (for a flow, the time average of the Jacobian's trace).

    Works for any differentiable model: a [`hybridda.Resolvent`][], a hybrid model or
    a network [`hybridda.Surrogate`][] (to check that a surrogate's error growth matches
    the truth's). Accuracy improves like ``1/√(cycles · dt_cycle)`` on a chaotic
    attractor; one `lax.scan` over cycles, so wrap the call in `eqx.filter_jit` when it
    is repeated.

    **Arguments:**

    - `model`: one DA cycle ``x -> x``, called with the state only (autonomous).
    - `x0`: initial state ``(n,)`` (ideally already on the attractor).
    - `cycles`: number of cycles averaged over (≥ 1).
    - `dt_cycle`: model time per cycle; default `model.cycle_length`.
    - `count`: number of leading exponents, ``1 <= count <= n``; default ``n``.
    - `key`: draws the initial tangent basis (a random one is not orthogonal to the
      leading Lyapunov vectors, with probability one).
    - `transient_cycles`: cycles to run before averaging (≥ 0).

    **Returns:** the exponents, shape ``(count,)``, in units of 1 / model time.

    !!! cite "References"
        Benettin, Galgani, Giorgilli and Strelcyn (1980), Lyapunov characteristic
        exponents for smooth dynamical systems and for Hamiltonian systems; a method for
        computing all of them, *Meccanica* 15, 9-30. Shimada and Nagashima (1979), A
        numerical approach to ergodic problem of dissipative dynamical systems, *Prog.
        Theor. Phys.* 61, 1605-1616.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"`x0` must be one state of shape (n,), got shape {x0.shape}.")
    size = x0.shape[0]
    count = size if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= size:
        raise ValueError(
            f"`count` must be an int in [1, n={size}] (or None for all), got {count!r}."
        )
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ValueError(f"`cycles` must be a Python int >= 1, got {cycles!r}.")
    if (
        isinstance(transient_cycles, bool)
        or not isinstance(transient_cycles, int)
        or transient_cycles < 0
    ):
        raise ValueError(f"`transient_cycles` must be a Python int >= 0, got {transient_cycles!r}.")
    if dt_cycle is None:
        if not hasattr(model, "cycle_length"):
            raise ValueError(
                f"`dt_cycle` is needed: {type(model).__name__} has no `cycle_length`; pass the "
                "model time covered by one call of `model`."
            )
        dt_cycle = model.cycle_length
    require_positive("dt_cycle", dt_cycle, "Pass the model time per cycle.")
    output_shape = jax.eval_shape(model, x0).shape
    if output_shape != x0.shape:
        raise ValueError(
            f"`model` must map a state of shape {x0.shape} to the same shape, got {output_shape}."
        )

    basis, _ = jnp.linalg.qr(jax.random.normal(key, (size, count), dtype=x0.dtype))

    def step(carry, cycle):
        state, basis, total = carry
        state, tangent_linear = jax.linearize(model, state)
        propagated = jax.vmap(tangent_linear, in_axes=1, out_axes=1)(basis)
        basis, upper = jnp.linalg.qr(propagated)
        growth = jnp.log(jnp.abs(jnp.diagonal(upper)))
        total = total + jnp.where(cycle >= transient_cycles, growth, 0.0)
        return (state, basis, total), None

    initial = (x0, basis, jnp.zeros(count, dtype=x0.dtype))
    (_, _, total), _ = jax.lax.scan(step, initial, jnp.arange(transient_cycles + cycles))
    return total / (cycles * jnp.asarray(dt_cycle, dtype=x0.dtype))


class PowerSpectrum(NamedTuple):
    """The output of [`power_spectral_density`][].

    - `frequencies`: ``rfftfreq(n, spacing)``, cycles per unit of `spacing`, ``(n//2+1,)``.
    - `density`: one-sided power spectral density at those frequencies.
    """

    frequencies: Float[Array, " frequencies"]
    density: Float[Array, " frequencies"]


def power_spectral_density(
    series: Float[ArrayIn, "..."], axis: int = -1, spacing: Scalar = 1.0
) -> PowerSpectrum:
    r"""One-sided power spectral density along `axis`, averaged over all other axes.

    ``density_k = c_k |X_k|² · spacing / n`` with ``X = rfft(series)`` along `axis`
    (``n`` points) and ``c_k = 2`` except at the mean and the Nyquist frequency
    (``c = 1``). It is a density in frequency: by Parseval's theorem
    ``Σ_k density_k · Δf`` (``Δf = 1 / (n · spacing)``) is the mean square of the
    series. With ``spacing = 1 / n`` the frequencies are integer wavenumbers (cycles
    per domain) and ``density_k`` is the mean-square power in wavenumber ``k``: a
    sinusoid of amplitude ``A`` and wavenumber ``k₀`` gives ``A²/2`` at ``k₀`` only.

    - Spatial spectrum of periodic fields (e.g. Lorenz-96, a trajectory ``(K, n)``):
      ``axis=-1``, averaged over time.
    - Temporal spectrum (as compared for surrogates by Brajard et al. 2020): ``axis=0`` and
      ``spacing=dt_cycle``, averaged over variables. A time series is not periodic:
      the FFT leaks power between frequencies; remove the mean and window the series
      first if that matters.

    **Arguments:**

    - `series`: the data, the transformed axis with ≥ 2 points.
    - `axis`: the axis to transform (space or time).
    - `spacing`: grid spacing (or time step) along `axis`, > 0.

    **Returns:** a [`PowerSpectrum`][].
    """
    series = jnp.asarray(series)
    if series.ndim == 0 or not -series.ndim <= axis < series.ndim:
        raise ValueError(f"`axis`={axis} is not an axis of `series` (shape {series.shape}).")
    require_positive("spacing", spacing, "Pass the grid spacing (or time step) along `axis`.")
    series = jnp.moveaxis(series, axis, -1)
    points = series.shape[-1]
    if points < 2:
        raise ValueError(f"`series` needs >= 2 points along `axis`={axis}, got {points}.")
    power = jnp.abs(jnp.fft.rfft(series, axis=-1)) ** 2
    power = jnp.mean(power.reshape(-1, power.shape[-1]), axis=0)
    # One-sided: every frequency but the mean (and Nyquist for even n) stands for ±k.
    weights = np.full(power.shape[-1], 2.0)
    weights[0] = 1.0
    if points % 2 == 0:
        weights[-1] = 1.0
    spacing = jnp.asarray(spacing, dtype=power.dtype)
    frequencies = jnp.fft.rfftfreq(points, 1.0).astype(power.dtype) / spacing
    return PowerSpectrum(
        frequencies, jnp.asarray(weights, dtype=power.dtype) * power * spacing / points
    )


class AttractorHistograms(NamedTuple):
    """The output of [`attractor_histograms`][].

    - `edges`: bin edges, ``(bins+1,)``.
    - `truth_density`, `other_density`: histogram densities (each integrates to 1 over
      the bins), ``(bins,)``.
    - `total_variation`: ``½ Σ |p_i - q_i|`` over bin probabilities, in [0, 1].
    - `hellinger`: ``sqrt(1 - Σ sqrt(p_i q_i))``, in [0, 1].
    - `wasserstein`: Wasserstein-1 distance of the raw (unbinned) samples, in the units
      of the state.
    """

    edges: Float[Array, " bins_plus_one"]
    truth_density: Float[Array, " bins"]
    other_density: Float[Array, " bins"]
    total_variation: Float[Array, ""]
    hellinger: Float[Array, ""]
    wasserstein: Float[Array, ""]


def attractor_histograms(
    truth_series: Float[ArrayIn, "..."],
    other_series: Float[ArrayIn, "..."],
    bins: int = 50,
    value_range: tuple[Scalar, Scalar] | None = None,
) -> AttractorHistograms:
    r"""Histograms of the state values of two long runs, and distances between them.

    Values are pooled over variables and times (any shapes; the two series may have
    different lengths), which suits homogeneous models such as Lorenz-96 where every
    variable has the same climate. The histograms are densities on common bins;
    total-variation and Hellinger distances compare the binned probabilities, the
    Wasserstein-1 distance ``∫ |F(x) - G(x)| dx`` the exact empirical distribution
    functions (no binning; as `scipy.stats.wasserstein_distance`).

    **Arguments:**

    - `truth_series`: values from the true model, e.g. a trajectory ``(K, n)``.
    - `other_series`: values from the surrogate, any shape.
    - `bins`: number of bins (≥ 1).
    - `value_range`: ``(low, high)`` of the bins (numpy's `range`); default the range
      of both series together. Values outside are left out of the histograms (as in
      `numpy.histogram`), not out of the Wasserstein distance.

    **Returns:** an [`AttractorHistograms`][]. Non-finite values (a diverged surrogate)
    raise an error, also under `jit`.
    """
    truth_values = jnp.ravel(jnp.asarray(truth_series))
    other_values = jnp.ravel(jnp.asarray(other_series))
    if truth_values.size == 0 or other_values.size == 0:
        raise ValueError("`truth_series` and `other_series` must both hold values.")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"`bins` must be a Python int >= 1, got {bins!r}.")
    truth_values = _require_finite("truth_series", truth_values)
    other_values = _require_finite("other_series", other_values)
    if value_range is None:
        low = jnp.minimum(truth_values.min(), other_values.min())
        high = jnp.maximum(truth_values.max(), other_values.max())
        # All values equal (e.g. a surrogate collapsed onto the truth's fixed point):
        # widen to unit width around them, as numpy does.
        low, high = jnp.where(low < high, low, low - 0.5), jnp.where(low < high, high, high + 0.5)
    else:
        low, high = value_range
        known_low, known_high = concrete(low), concrete(high)
        if known_low is not None and known_high is not None and not known_low < known_high:
            raise ValueError(
                f"`value_range` must be (low, high) with low < high, got {value_range}."
            )
    edges = jnp.linspace(low, high, bins + 1, dtype=truth_values.dtype)
    truth_counts, _ = jnp.histogram(truth_values, bins=edges)
    other_counts, _ = jnp.histogram(other_values, bins=edges)
    truth_probability = truth_counts / jnp.sum(truth_counts)
    other_probability = other_counts / jnp.sum(other_counts)
    widths = jnp.diff(edges)
    total_variation = 0.5 * jnp.sum(jnp.abs(truth_probability - other_probability))
    overlap = jnp.sum(jnp.sqrt(truth_probability * other_probability))
    hellinger = jnp.sqrt(jnp.maximum(1.0 - overlap, 0.0))
    return AttractorHistograms(
        edges,
        truth_probability / widths,
        other_probability / widths,
        total_variation,
        hellinger,
        wasserstein_1(truth_values, other_values),
    )


def wasserstein_1(
    samples: Float[ArrayIn, " M"], other_samples: Float[ArrayIn, " N"]
) -> Float[Array, ""]:
    r"""Wasserstein-1 distance of two 1-d empirical distributions, ``∫ |F(x) - G(x)| dx``.

    Exact for any sample sizes: both empirical CDFs are step functions, integrated
    between consecutive points of the pooled sorted samples (the algorithm of
    `scipy.stats.wasserstein_distance`). For equal sizes it equals
    ``mean |sort(a) - sort(b)|``.
    """
    samples, other_samples = jnp.sort(jnp.asarray(samples)), jnp.sort(jnp.asarray(other_samples))
    pooled = jnp.sort(jnp.concatenate([samples, other_samples]))

    def cdf(sorted_samples):
        # searchsorted counts in int32, which would divide to float32.
        counts = jnp.searchsorted(sorted_samples, pooled[:-1], side="right")
        return counts.astype(pooled.dtype) / sorted_samples.shape[0]

    return jnp.sum(jnp.abs(cdf(samples) - cdf(other_samples)) * jnp.diff(pooled))


def _require_finite(name: str, values):
    """Raise (at call time, or under jit when the value is used) on NaN or ±inf."""
    message = f"`{name}` has non-finite values (did the run diverge?); drop or fix them."
    known = concrete(values)
    if known is None:
        return eqx.error_if(values, ~jnp.all(jnp.isfinite(values)), message)
    if not np.all(np.isfinite(known)):
        raise ValueError(message)
    return values
