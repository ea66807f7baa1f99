"""Stochastic ensemble Kalman filter with perturbed observations."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PRNGKeyArray

from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter, EnsembleInnovations, ensemble_innovations
from .inflation import AbstractInflation, NoInflation
from .localisation import Localisation


class EnKF(AbstractEnsembleFilter):
    """Stochastic EnKF (Burgers et al. 1998; Evensen 2009), perturbed observations.

    Each member assimilates ``y + εᵢ`` with ``εᵢ ~ N(0, R)`` (perturbations centred so
    the mean update equals the Kalman update of the mean). In whitened variables the
    gain is ``K = Aᵀ S (Sᵀ S + (N-1) I)⁻¹`` applied to ``d - Sᵢ - εᵢ``.

    **Arguments:**

    - `inflation`: default none.
    - `localisation`: optional covariance localisation (Schur product of the
      Gaspari-Cohn taper with ``P Hᵀ`` and ``H P Hᵀ``, Houtekamer and Mitchell 2001).
      Requires uncorrelated observation errors.
    """

    inflation: AbstractInflation = NoInflation()
    localisation: Localisation | None = None

    def update(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        stats = ensemble_innovations(E, y, observation)
        if self.localisation is None:
            return perturbed_observations_update(E, stats, key)
        return perturbed_observations_update(
            E,
            stats,
            key,
            state_to_obs=self.localisation.state_to_obs(observation),
            obs_to_obs=self.localisation.obs_to_obs(observation),
        )


def observation_perturbations(stats: EnsembleInnovations, key: PRNGKeyArray) -> Float[Array, "N p"]:
    """Whitened observation perturbations ``εᵢ ~ N(0, I)`` of the members, centred over the
    members and zero where unobserved: member ``i`` assimilates ``d - Sᵢ - εᵢ``."""
    S, mask = stats.obs_anomalies, stats.mask
    perturbations = jax.random.normal(key, S.shape, S.dtype)
    perturbations = perturbations - perturbations.mean(axis=0, keepdims=True)
    return jnp.where(mask[None, :], perturbations, 0.0)


def perturbed_observations_update(
    E: Float[Array, "N n"],
    stats: EnsembleInnovations,
    key: PRNGKeyArray,
    state_to_obs: Float[Array, "n p"] | None = None,
    obs_to_obs: Float[Array, "p p"] | None = None,
) -> Float[Array, "N n"]:
    """The stochastic EnKF analysis of `E` (whose statistics are `stats`), optionally
    with covariance localisation by the tapers `state_to_obs` (``ρxy``, one row per
    column of `E`) and `obs_to_obs` (``ρyy``), both or neither.

    Without tapers the gain is ``Aᵀ S (Sᵀ S + (N-1) I)⁻¹``; with them
    ``(ρxy ∘ Aᵀ S)(ρyy ∘ Sᵀ S + (N-1) I)⁻¹`` (Houtekamer and Mitchell 2001). The rows of
    ``ρxy`` need not come from distances: the augmented EnKF gives global parameters
    rows of ones ([`hybridda.filters.ParameterAugmentation`][]).
    """
    S = stats.obs_anomalies
    N, p = S.shape
    N1 = N - 1
    # Whitened innovation of each member: d - S_i - ε_i   (N, p)
    innovations = stats.innovation[None, :] - S - observation_perturbations(stats, key)
    if state_to_obs is None:
        # C = Sᵀ S + (N-1) I   (p × p), symmetric positive definite.
        C = S.T @ S + N1 * jnp.eye(p)
        factor = jsl.cho_factor(C)
        increments = jsl.cho_solve(factor, innovations.T).T  # (N, p)
        return E + (increments @ S.T) @ stats.anomalies
    C = obs_to_obs * (S.T @ S) + N1 * jnp.eye(p)
    factor = jsl.cho_factor(C)
    increments = jsl.cho_solve(factor, innovations.T).T  # (N, p)
    gain_numerator = state_to_obs * (stats.anomalies.T @ S)  # (n, p)
    return E + increments @ gain_numerator.T
