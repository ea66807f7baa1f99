"""Domain and covariance localisation at once: a local EnKF for non-local observations.

Satellite radiances are vertical averages of a column: they have a horizontal position
but no height, so domain localisation (which needs every observation to sit near the
variables it updates) suits the horizontal and covariance localisation the vertical.
Farchi and Bocquet (2019, section 5) combine the two in a deterministic filter with
augmented ensembles; Malartic, Farchi and Bocquet (2022, section 5) use it for the
multi-layer Lorenz-96 with radiances. [`DomainCovarianceEnKF`][] is the stochastic
(perturbed-observations) version of that combination.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import concrete
from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter, EnsembleInnovations, ensemble_innovations
from .enkf import observation_perturbations
from .inflation import AbstractInflation, NoInflation
from .localisation import Localisation


class DomainCovarianceEnKF(AbstractEnsembleFilter):
    r"""Stochastic EnKF with domain localisation and covariance localisation at once.

    Every state variable ``i`` is analysed in its own local domain, as in the LETKF:
    with every observation, ``R⁻¹`` tapered by ``ρᵈ_i`` (the `domain` localisation,
    e.g. the horizontal distance to the observation's column). Inside the domain the
    covariances are localised by Schur products (the `covariance` localisation, e.g.
    the vertical distance between a layer and a radiance channel's mean height, and
    between two channels). With ``S̃_i = S diag(√ρᵈ_i)`` the observation anomalies
    whitened by the domain's ``R / ρᵈ_i`` and the same whitened perturbations
    ``ε_m ~ N(0, I)`` in every domain, member ``m`` gets

    $$x_{m,i} ← x_{m,i} + (ρᶜ_i ∘ A_iᵀ S̃_i)\,(ρᶜ_{yy} ∘ S̃_iᵀ S̃_i + (N-1) I)^{-1}\,
      (√ρᵈ_i ∘ (d - S_m) - ε_m).$$

    With an infinite `domain` radius this is [`hybridda.filters.EnKF`][] with
    ``localisation=covariance`` (same key, same perturbations); with an infinite
    `covariance` radius it is a stochastic local EnKF (domain localisation only).

    Each domain solves one ``p × p`` system with every observation (tapers of zero
    leave an observation out). Variables with the same coordinates along the domain's
    axes (the layers of one column) share their domain, so that system is solved once
    per distinct domain (`domain_groups`, found at construction from the coordinates):
    a cycle costs ``O(d p³)`` for ``d`` distinct domains (the columns), for the small
    rings of the paper experiments, not for large networks. The analyses of a column's
    variables are those of one column analysis with vertical covariance localisation,
    as in Farchi and Bocquet (2019). Build a new filter, rather than `eqx.tree_at`,
    to change the domain's coordinates: the groups are not recomputed (a changed
    `axes` or number of variables is detected and falls back to one solve per variable).

    **Arguments:**

    - `domain`: the [`hybridda.filters.Localisation`][] of the local domains, e.g.
      ``Localisation(3.0, coordinates=model.coordinates(),
      domain_length=model.domain_length(), axes=(0,))`` (horizontal).
    - `covariance`: the localisation of the covariances inside a domain, e.g. the same
      with ``axes=(1,)`` (vertical, in layers).
    - `inflation`: default none.

    Observation errors must be uncorrelated.

    !!! cite "References"
        Farchi and Bocquet (2019), On the efficiency of covariance localisation of the
        ensemble Kalman filter using augmented ensembles, *Front. Appl. Math. Stat.* 5,
        3, section 5. Malartic, Farchi and Bocquet (2022), *Q. J. R. Meteorol. Soc.*
        148, 2167-2193, section 5.
    """

    domain: Localisation
    covariance: Localisation
    inflation: AbstractInflation = NoInflation()
    domain_groups: tuple[tuple[int, ...], tuple[int, ...]] | None = eqx.field(
        static=True, init=False
    )
    _groups_axes: tuple[int, ...] | None = eqx.field(static=True, init=False)

    def __post_init__(self):
        # Variables with the same coordinates along the domain's axes (the layers of
        # one column) share their domain: one p × p solve per distinct domain.
        self.domain_groups = shared_domains(self.domain)
        self._groups_axes = self.domain.axes

    def current_domain_groups(self):
        """`domain_groups` if they still describe `domain` (same `axes`, same number of
        variables), else ``None``: after an `eqx.tree_at` that swapped the domain."""
        groups = self.domain_groups
        coordinates = self.domain.coordinates
        if (
            groups is None
            or self.domain.axes != self._groups_axes
            or coordinates is None
            or coordinates.shape[0] != len(groups[1])
        ):
            return None
        return groups

    def update(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        stats = ensemble_innovations(E, y, observation)
        return domain_covariance_update(
            E,
            stats,
            key,
            domain_taper=self.domain.state_to_obs(observation),
            covariance_taper=self.covariance.state_to_obs(observation),
            obs_to_obs=self.covariance.obs_to_obs(observation),
            averaged_domains=observation.state_size,
            domain_groups=self.current_domain_groups(),
        )


def shared_domains(localisation: Localisation):
    """``(first, inverse)``: the state variables with distinct local domains (`first`,
    indices) and the domain of each variable (`inverse`, indices into `first`), from
    their coordinates along the localisation's `axes`; ``None`` when every domain is
    distinct or the coordinates are not known at construction (traced)."""
    coordinates = None if localisation.coordinates is None else concrete(localisation.coordinates)
    if coordinates is None or coordinates.ndim != 2:
        return None
    axes = localisation.axes if localisation.axes is not None else range(coordinates.shape[1])
    _, first, inverse = np.unique(
        coordinates[:, list(axes)], axis=0, return_index=True, return_inverse=True
    )
    if len(first) == len(coordinates):
        return None
    return tuple(int(i) for i in first), tuple(int(i) for i in inverse.ravel())


def domain_covariance_update(
    E: Float[Array, "N columns"],
    stats: EnsembleInnovations,
    key: PRNGKeyArray,
    domain_taper: Float[Array, "m p"],
    covariance_taper: Float[Array, "m p"],
    obs_to_obs: Float[Array, "p p"],
    averaged_domains: int,
    global_covariance_taper: Float[Array, "g p"] | None = None,
    domain_groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> Float[Array, "N columns"]:
    """[`DomainCovarianceEnKF`][]'s analysis of `E`, whose first ``m`` columns are
    local (row ``j`` of the tapers is column ``j``'s domain and covariance taper) and
    whose other ``g`` columns are global: those get the mean of their increments over
    the first `averaged_domains` domains (the rule of the augmented LETKF for global
    parameters, applied to the stochastic update), with their covariances tapered by
    the rows of `global_covariance_taper` (default none: no taper). `domain_groups`
    (from [`shared_domains`][]) says which of the first rows share a domain, so that
    each distinct domain is solved once; the rows after those it covers are solved
    one by one."""
    S, anomalies = stats.obs_anomalies, stats.anomalies
    N, p = S.shape
    m = domain_taper.shape[0]
    perturbations = observation_perturbations(stats, key)
    innovations = stats.innovation[None, :] - S  # (N, p): d - S_m
    eye = jnp.eye(p, dtype=S.dtype)

    def gain_factor(root):  # G_j = C_j⁻¹ (√ρᵈ_j ∘ (d - S_m) - ε_m)ᵀ, (p, N)
        local_S = S * root[None, :]
        C = obs_to_obs * (local_S.T @ local_S) + (N - 1) * eye
        local_innovations = innovations * root[None, :] - perturbations
        return jsl.cho_solve(jsl.cho_factor(C), local_innovations.T)

    root = jnp.sqrt(domain_taper)  # (m, p)
    if domain_groups is None:
        G = jax.vmap(gain_factor)(root)  # (m, p, N)
    else:
        first, inverse = (np.asarray(indices) for indices in domain_groups)
        G = jax.vmap(gain_factor)(root[first])[inverse]
        if m > len(inverse):
            G = jnp.concatenate([G, jax.vmap(gain_factor)(root[len(inverse) :])])
    cross = anomalies.T @ S  # (columns, p): Aᵀ S
    numerator = covariance_taper * root * cross[:m]  # (m, p): ρᶜ_j ∘ A_jᵀ S̃_j
    local_increments = jnp.einsum("jp,jpa->aj", numerator, G)  # (N, m)
    if E.shape[1] == m:
        return E + local_increments
    k = averaged_domains
    global_cross = cross[m:]
    if global_covariance_taper is not None:
        global_cross = global_covariance_taper * global_cross
    global_increments = jnp.einsum("gp,jp,jpa->ag", global_cross, root[:k], G[:k]) / k
    return E + jnp.concatenate([local_increments, global_increments], axis=1)
