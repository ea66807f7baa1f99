"""The observation likelihood of an ensemble forecast (the filter's evidence).

``y ~ N(H(x̄^f), H P^f Hᵀ + R)`` over the observed entries, with ``P^f`` the forecast
ensemble's sample covariance, evaluated in ensemble space. Summed over cycles, minus
its log is minus the log-evidence of the observations under the model (Carrassi et al.
2017), the loss of [`hybridda.cycled_loss`][] for parameter estimation. Filters that form
the same ensemble-space matrices in their analysis (the ETKF) return it from
[`AbstractEnsembleFilter.analysis_and_evidence`][hybridda.filters.AbstractEnsembleFilter]
without recomputing them.
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float

from ..observe import AbstractObservation
from ._base import ensemble_innovations


def ensemble_negative_log_likelihood(
    E: Float[Array, "N n"], y: Float[Array, " p"], observation: AbstractObservation
) -> Float[Array, ""]:
    """``-log N(y; H(x̄), H P Hᵀ + R)`` over the observed entries of `y`, ``P`` the sample
    covariance of `E` (Sherman-Morrison-Woodbury: one N × N Cholesky factor)."""
    stats = ensemble_innovations(E, y, observation)
    S, d = stats.obs_anomalies, stats.innovation
    N = E.shape[0]
    C = S @ S.T + (N - 1) * jnp.eye(N)  # the ETKF's ensemble-space matrix
    log_det, quadratic = log_det_and_quadratic(C, S @ d)
    return negative_log_likelihood_from(observation, d, stats.mask, log_det, quadratic, N)


def negative_log_likelihood_from(
    observation: AbstractObservation,
    d: Float[Array, " p"],
    mask: Bool[Array, " p"],
    log_det_C: Float[Array, ""],
    quadratic: Float[Array, ""],
    members: int,
) -> Float[Array, ""]:
    r"""The ensemble likelihood from its ensemble-space pieces.

    With whitened observation anomalies ``S`` (N × p), whitened innovation ``d`` and
    ``C = S Sᵀ + (N-1) I``, the whitened predictive covariance is ``I + SᵀS/(N-1)``, and

    - ``dᵀ(I + SᵀS/(N-1))⁻¹d = dᵀd - bᵀC⁻¹b`` with ``b = S d`` (Woodbury): `quadratic`
      is ``bᵀC⁻¹b``;
    - ``log det(I + SᵀS/(N-1)) = log det C - N log(N-1)`` (Sylvester).
    """
    # -log N(d; 0, R) over the observed entries, corrected to the predictive covariance.
    observed_only = -observation.error.log_density_whitened(d, mask)
    log_det_ratio = log_det_C - members * jnp.log(members - 1.0)
    correction = jnp.where(jnp.any(mask), log_det_ratio, 0.0)
    return observed_only - 0.5 * quadratic + 0.5 * correction


@jax.custom_jvp
def log_det_and_quadratic(C: Float[Array, "m m"], b: Float[Array, " m"]):
    """``(log det C, bᵀ C⁻¹ b)`` for symmetric positive-definite `C`, by Cholesky."""
    L = jnp.linalg.cholesky(C)
    white = jsl.solve_triangular(L, b, lower=True)
    return 2 * jnp.sum(jnp.log(jnp.diag(L))), jnp.sum(white**2)


@log_det_and_quadratic.defjvp
def _log_det_and_quadratic_jvp(primals, tangents):
    # d log det C = tr(C⁻¹ dC) and d(bᵀC⁻¹b) = 2 uᵀdb - uᵀ dC u, u = C⁻¹b. With C⁻¹ formed
    # once from the Cholesky factor, both are elementwise in the tangents, so reverse
    # mode transposes no triangular solves (autodiff's Cholesky rule has several per
    # cycle; the 100-cycle ETKF NLL gradient measured 1-13 % faster, on a loaded machine).
    (C, b), (dC, db) = primals, tangents
    L = jnp.linalg.cholesky(C)
    white = jsl.solve_triangular(L, b, lower=True)
    inverse = jsl.cho_solve((L, True), jnp.eye(C.shape[-1], dtype=C.dtype))
    inverse = 0.5 * (inverse + inverse.T)
    u = inverse @ b
    primal_out = (2 * jnp.sum(jnp.log(jnp.diag(L))), jnp.sum(white**2))
    return primal_out, (jnp.sum(inverse * dC), 2 * jnp.dot(u, db) - jnp.dot(u, dC @ u))


@jax.custom_jvp
def log_det_given_inverse(C: Float[Array, "m m"], C_inverse: Float[Array, "m m"]):
    """``log det C`` for SPD `C` (Cholesky), differentiated as ``tr(C⁻¹ dC)`` with the
    inverse the caller already has (it must equal ``C⁻¹``; its own tangent does not
    enter, since ``log det C`` does not depend on it; higher derivatives follow it)."""
    return 2 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(C))))


@log_det_given_inverse.defjvp
def _log_det_given_inverse_jvp(primals, tangents):
    (C, C_inverse), (dC, _) = primals, tangents
    return log_det_given_inverse(C, C_inverse), jnp.sum(C_inverse * dC)
