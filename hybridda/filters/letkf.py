"""Local ensemble transform Kalman filter."""

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter, ensemble_innovations
from ._util import ensemble_transform
from .inflation import AbstractInflation, NoInflation
from .localisation import Localisation


class LETKF(AbstractEnsembleFilter):
    """Local ETKF (Hunt et al. 2007): one ETKF analysis per state variable.

    Each state variable ``i`` has its own local domain: every observation, with
    ``R⁻¹`` tapered by ``ρ(distance(i, obs))`` (Gaspari-Cohn by default, periodic
    distances). Observations beyond the taper's support get zero weight, so shapes are
    static and all ``n`` local analyses run as one batched computation.

    **Arguments:**

    - `localisation`: a [`hybridda.filters.Localisation`][] (radius in grid units;
      ``radius=inf`` recovers the global ETKF exactly).
    - `inflation`: default none.

    Observation errors must be uncorrelated for the tapering of ``R⁻¹`` to be local.

    !!! cite "Reference"
        Hunt, Kostelich and Szunyogh (2007), *Physica D* 230, 112-126, section 2.3.
    """

    localisation: Localisation
    inflation: AbstractInflation = NoInflation()

    def update(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        del key
        stats = ensemble_innovations(E, y, observation)
        S, d = stats.obs_anomalies, stats.innovation
        N1 = E.shape[0] - 1
        rho = self.localisation.state_to_obs(observation)  # (n, p) taper of R⁻¹
        # Local C_i = S diag(ρ_i) Sᵀ + (N-1) I for every state variable i: (n, N, N).
        C = jnp.einsum("ap,ip,bp->iab", S, rho, S) + N1 * jnp.eye(E.shape[0])[None]
        projected = (rho * d[None, :]) @ S.T  # (n, N): S diag(ρ_i) d
        weights, T = ensemble_transform(C, projected, N1)  # (n, N), (n, N, N)
        # Member m, variable i: x̄_i + Σ_k (w_ik + T_imk) A_ki.
        increments = jnp.einsum("ik,ki->i", weights, stats.anomalies)[None, :] + jnp.einsum(
            "imk,ki->mi", T, stats.anomalies
        )
        return stats.mean[None, :] + increments
