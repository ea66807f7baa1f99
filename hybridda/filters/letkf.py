"""Local ensemble transform Kalman filter."""

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter, ensemble_innovations
from ._util import ensemble_transform
from .inflation import AbstractInflation, NoInflation
from .localisation import LocalDomains, Localisation


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
    - `domains`: optional [`hybridda.filters.LocalDomains`][] of a fixed observation
      network (``localisation.local_domains(observation)``): each local analysis then
      gathers the ``k`` observations within the taper's support instead of tapering all
      ``p``, so a cycle costs ``O(n k N²)`` (linear in ``n``) instead of ``O(n p N²)``.
      Same analysis (to round-off). Default ``None``: every observation, every cycle
      (works for networks that change from cycle to cycle).

    Observation errors must be uncorrelated for the tapering of ``R⁻¹`` to be local.

    !!! cite "Reference"
        Hunt, Kostelich and Szunyogh (2007), *Physica D* 230, 112-126, section 2.3.
    """

    localisation: Localisation
    inflation: AbstractInflation = NoInflation()
    domains: LocalDomains | None = None

    def update(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        del key
        stats = ensemble_innovations(E, y, observation)
        weights, T = self.local_transforms(stats.obs_anomalies, stats.innovation, observation)
        return apply_local_transforms(stats.mean, stats.anomalies, weights, T)

    def local_transforms(
        self,
        S: Float[Array, "N p"],
        d: Float[Array, " p"],
        observation: AbstractObservation,
    ) -> tuple[Float[Array, "n N"], Float[Array, "n N N"]]:
        """Mean weights ``w_i`` and transforms ``T_i`` of every local analysis, from the
        whitened observation anomalies `S` and innovation `d`."""
        if self.domains is None:
            return tapered_transforms(S, d, self.localisation.state_to_obs(observation))
        domains = self.domains
        if (domains.state_size, domains.obs_size) != (observation.state_size, S.shape[1]):
            raise ValueError(
                f"The LETKF's `domains` were built for {domains.state_size} state "
                f"variables and {domains.obs_size} observations, but this analysis has "
                f"{observation.state_size} and {S.shape[1]}: rebuild them with "
                "localisation.local_domains(observation)."
            )
        N1 = S.shape[0] - 1
        eye = jnp.eye(S.shape[0], dtype=S.dtype)[None]
        local_S = S[:, domains.indices]  # (N, n, k): the k observations of domain i
        rho = domains.taper
        C = jnp.einsum("aik,ik,bik->iab", local_S, rho, local_S) + N1 * eye
        projected = jnp.einsum("ik,aik->ia", rho * d[domains.indices], local_S)
        return ensemble_transform(C, projected, N1)  # (n, N), (n, N, N)


def tapered_transforms(
    S: Float[Array, "N p"], d: Float[Array, " p"], taper: Float[Array, "m p"]
) -> tuple[Float[Array, "m N"], Float[Array, "m N N"]]:
    """Weights and transforms of ``m`` local analyses, the ``j``-th with ``R⁻¹`` tapered by
    row ``j`` of `taper` (every observation; e.g. the domains of local parameters)."""
    N1 = S.shape[0] - 1
    eye = jnp.eye(S.shape[0], dtype=S.dtype)[None]
    # Local C_j = S diag(ρ_j) Sᵀ + (N-1) I for every domain j: (m, N, N).
    C = jnp.einsum("ap,jp,bp->jab", S, taper, S) + N1 * eye
    projected = (taper * d[None, :]) @ S.T  # (m, N): S diag(ρ_j) d
    return ensemble_transform(C, projected, N1)


def apply_local_transforms(
    mean: Float[Array, " n"],
    anomalies: Float[Array, "N n"],
    weights: Float[Array, "n N"],
    T: Float[Array, "n N N"],
) -> Float[Array, "N n"]:
    """The analysis ensemble from the local weights and transforms of every variable."""
    # Member m, variable i: x̄_i + Σ_k (w_ik + T_imk) A_ki.
    increments = jnp.einsum("ik,ki->i", weights, anomalies)[None, :] + jnp.einsum(
        "imk,ki->mi", T, anomalies
    )
    return mean[None, :] + increments
