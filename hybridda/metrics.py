"""Verification metrics for DA experiments (pure functions of arrays)."""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

# Metrics accept JAX or NumPy arrays (e.g. read back from netCDF).
ArrayIn = Array | np.ndarray


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


def summary(truth, trajectory, burn_in: int = 0) -> dict[str, float]:
    """Time-averaged analysis/forecast RMSE and spread after `burn_in` (DAPPER's ``rmse.a``)."""
    return {
        "rmse_analysis": float(time_average(rmse(truth, trajectory.analysis_mean), burn_in)),
        "rmse_forecast": float(time_average(rmse(truth, trajectory.forecast_mean), burn_in)),
        "spread_analysis": float(time_average(trajectory.analysis_spread, burn_in)),
        "spread_forecast": float(time_average(trajectory.forecast_spread, burn_in)),
    }
