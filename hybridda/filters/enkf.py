"""Stochastic ensemble Kalman filter with perturbed observations."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PRNGKeyArray

from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter, ensemble_innovations
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
        S, d, mask = stats.obs_anomalies, stats.innovation, stats.mask
        N, p = S.shape
        N1 = N - 1
        # Whitened perturbations ε ~ N(0, I), centred over members; zero where unobserved.
        perturbations = jax.random.normal(key, (N, p))
        perturbations = perturbations - perturbations.mean(axis=0, keepdims=True)
        perturbations = jnp.where(mask[None, :], perturbations, 0.0)
        # Innovation of each member, whitened: d - S_i - ε_i   (N, p)
        member_innovations = d[None, :] - S - perturbations
        if self.localisation is None:
            # C = Sᵀ S + (N-1) I   (p × p), symmetric positive definite.
            C = S.T @ S + N1 * jnp.eye(p)
            factor = jsl.cho_factor(C)
            increments = jsl.cho_solve(factor, member_innovations.T).T  # (N, p)
            return E + (increments @ S.T) @ stats.anomalies
        # With localisation the gain is (ρxy ∘ A^T S)(ρyy ∘ SᵀS + (N-1) I)⁻¹.
        rho_xy = self.localisation.state_to_obs(observation)  # (n, p)
        rho_yy = self.localisation.obs_to_obs(observation)  # (p, p)
        C = rho_yy * (S.T @ S) + N1 * jnp.eye(p)
        factor = jsl.cho_factor(C)
        increments = jsl.cho_solve(factor, member_innovations.T).T  # (N, p)
        gain_numerator = rho_xy * (stats.anomalies.T @ S)  # (n, p)
        return E + increments @ gain_numerator.T
