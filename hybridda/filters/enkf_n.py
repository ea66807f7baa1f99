"""Finite-size ensemble Kalman filter (EnKF-N), dual form."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import as_float_array, require_positive
from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter, ensemble_innovations
from ._util import symmetric_eig, transform_from_eig
from .inflation import AbstractInflation, NoInflation


class EnKFN(AbstractEnsembleFilter):
    r"""Finite-size EnKF (Bocquet 2011; Bocquet, Raanes and Hannart 2015), dual form.

    The prior covariance is integrated out under a Jeffreys hyperprior, which yields an
    adaptive inflation. In the dual form one minimises over the inflation ``λ`` (written
    ``l1`` in DAPPER)

    $$\mathcal{D}(λ) = \sum_i \frac{u_i^2 / s_i^2}{λ^2 s_i^2 + N-1}
                      + \frac{ε_N}{λ^2} + c_L \log λ^2,$$

    with ``s_i²`` the eigenvalues of ``S Sᵀ`` and ``u = Vᵀ S d``, then runs the ETKF with
    anomalies inflated by ``λ``. ``ε_N = (N+1)/N`` and ``c_L = (N+g)/(N-1)`` are
    corrected towards 1 by the prior weight (Bocquet et al. 2015, eq. 36) and boosted by
    `hyperprior_boost` (DAPPER's ``xN``). The minimiser is Newton's method from
    ``λ = 1`` with a fixed number of iterations, on the eigenvalues of ``S Sᵀ``; its
    derivative comes from the implicit function theorem and that of the analysis from
    the Lyapunov-form derivative of ``C^{-1/2}``, so gradients are exact and finite
    even when eigenvalues repeat (fewer than N-1 observations).

    **Arguments:**

    - `hyperprior_boost`: ``xN`` > 0; 1 (default) is the agnostic Jeffreys prior, 2 suits
      weakly nonlinear, deterministic models better.
    - `nullity`: ``g`` (default 0).
    - `newton_iterations`: Newton steps for ``λ`` (default 20; quadratic convergence).
    - `inflation`: extra inflation, default none.

    !!! cite "References"
        Bocquet (2011), Ensemble Kalman filtering without the intrinsic need for
        inflation, *Nonlin. Processes Geophys.* 18, 735-750. Bocquet, Raanes and Hannart
        (2015), Expanding the validity of the ensemble Kalman filter without the
        intrinsic need for inflation, *NPG* 22, 645-662.
    """

    hyperprior_boost: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    nullity: int = eqx.field(static=True, default=0)
    newton_iterations: int = eqx.field(static=True, default=20)
    inflation: AbstractInflation = NoInflation()

    def __check_init__(self):
        require_positive("hyperprior_boost", self.hyperprior_boost, "Use 1 (Jeffreys) or 2.")
        if self.nullity < 0 or self.newton_iterations < 1:
            raise ValueError("`nullity` must be >= 0 and `newton_iterations` >= 1.")

    def inflation_factor(self, eigenvalues, projected, N: int) -> Float[Array, ""]:
        """The minimiser ``λ`` of the dual cost, from ``s² = eigenvalues`` and ``u = projected``."""
        return _minimise_dual(
            eigenvalues, projected, N, self.hyperprior_boost, self.nullity, self.newton_iterations
        )

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
        N = E.shape[0]
        N1 = N - 1
        SSt, Sd = S @ S.T, S @ d
        # Differentiating eigh divides by eigenvalue differences (NaN or wrong when fewer
        # than N-1 values are observed), so the decomposition enters without derivative:
        # λ and C^{-1/2} below are differentiated as functions of S Sᵀ and S d.
        eigenvalues, V = symmetric_eig(jax.lax.stop_gradient(SSt))
        l1 = _inflation(
            N, self.nullity, self.newton_iterations, self.hyperprior_boost, SSt, Sd, eigenvalues, V
        )
        # ETKF with anomalies (and observed anomalies) inflated by λ; C = λ² S Sᵀ + N1 I
        # has the eigenvectors of S Sᵀ.
        C = l1**2 * SSt + N1 * jnp.eye(N, dtype=S.dtype)
        C_eigenvalues = jax.lax.stop_gradient(l1) ** 2 * eigenvalues + N1
        weights, T = transform_from_eig(C, C_eigenvalues, V, l1 * Sd, N1)
        return stats.mean[None, :] + (weights[None, :] + T) @ (l1 * stats.anomalies)


def _hyperprior(prior_weight, N: int, boost, nullity: int):
    """``(ε_N, c_L)`` with the prior-mode correction (Bocquet et al. 2015, eq. 36)."""
    eN = (N + 1) / N
    cL = (N + nullity) / (N - 1)
    correction = jnp.sqrt((eN / cL) ** prior_weight)
    return eN / correction * boost, cL * correction * boost


def _dual_gradient(l1, weighted, eN, cL):
    """``D'(λ)`` from ``weighted = Σ u_i² / (λ² s_i² + N-1)²``."""
    return -2 * l1 * weighted - 2 * eN / l1**3 + 2 * cL / l1


def _dual_derivatives(l1, s2, u2, eN, cL, N1):
    """``D'(λ)``, ``D''(λ)`` and DAPPER's curvature (``D''`` less its first term)."""
    denominator = l1**2 * s2 + N1
    gradient = _dual_gradient(l1, jnp.sum(u2 / denominator**2), eN, cL)
    curvature = 8 * l1**2 * jnp.sum(s2 * u2 / denominator**3) + 6 * eN / l1**4 - 2 * cL / l1**2
    return gradient, curvature - 2 * jnp.sum(u2 / denominator**2), curvature


def _spectral_coefficients(eigenvalues, N: int, boost, nullity: int):
    s2 = jnp.maximum(eigenvalues, 0.0)
    prior_weight = jnp.mean(1.0 / (s2 + N - 1)) * (N - 1)  # ≈ 1 / (1 + HBHᵀ/R)
    return s2, *_hyperprior(prior_weight, N, boost, nullity)


def _minimise_dual(eigenvalues, projected, N: int, boost, nullity: int, iterations: int):
    """Newton's method for the dual cost from ``λ = 1``; see [`EnKFN`][]."""
    s2, eN, cL = _spectral_coefficients(eigenvalues, N, boost, nullity)
    u2 = projected**2  # = s_i² du_i², so no division by zero singular values

    def newton(_, l1):
        gradient, exact, curvature = _dual_derivatives(l1, s2, u2, eN, cL, N - 1)
        # DAPPER's Newton_m omits a term of the second derivative, which changes the path
        # (not the minimiser). Fall back to it where not convex.
        step = gradient / jnp.where(exact > 0, exact, curvature)
        # Guard: keep λ positive if a step overshoots (never met in practice).
        return jnp.where(l1 - step > 0, l1 - step, 0.5 * l1)

    return jax.lax.fori_loop(0, iterations, newton, jnp.ones_like(s2[0]))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _inflation(N: int, nullity: int, iterations: int, boost, SSt, Sd, eigenvalues, V):
    """``λ(boost, S Sᵀ, S d)``, from the eigen-decomposition of ``S Sᵀ`` (not differentiated).

    Its derivative is that of the implicit function theorem at the root of ``D'``:
    ``dλ = -dD'/D''``, with ``D'`` at fixed ``λ`` written with Cholesky solves in ``S Sᵀ``
    and ``S d`` (smooth whether eigenvalues repeat or not), which the forward pass does
    not pay for.
    """
    projected = jnp.swapaxes(V, -1, -2) @ Sd
    return _minimise_dual(eigenvalues, projected, N, boost, nullity, iterations)


@_inflation.defjvp
def _inflation_jvp(N, nullity, iterations, primals, tangents):
    boost, SSt, Sd, eigenvalues, V = primals
    l1 = _inflation(N, nullity, iterations, *primals)
    eye = jnp.eye(N, dtype=SSt.dtype)

    def dual_gradient(boost, SSt, Sd):
        # N1 mean(1 / (s² + N1)) = (N1 / N) tr (S Sᵀ + N1 I)⁻¹ = (N1 / N) ‖L⁻¹‖²_F
        cholesky = jnp.linalg.cholesky(SSt + (N - 1) * eye)
        inverse_factor = jax.scipy.linalg.solve_triangular(cholesky, eye, lower=True)
        prior_weight = (N - 1) / N * jnp.sum(inverse_factor**2)
        eN, cL = _hyperprior(prior_weight, N, boost, nullity)
        # Σ u² / (λ² s² + N1)² = ‖(λ² S Sᵀ + N1 I)⁻¹ S d‖²
        factor = jax.scipy.linalg.cho_factor(l1**2 * SSt + (N - 1) * eye, lower=True)
        weighted = jnp.sum(jax.scipy.linalg.cho_solve(factor, Sd) ** 2)
        return _dual_gradient(l1, weighted, eN, cL)

    _, tangent = jax.jvp(dual_gradient, (boost, SSt, Sd), tangents[:3])
    s2, eN, cL = _spectral_coefficients(eigenvalues, N, boost, nullity)
    projected = jnp.swapaxes(V, -1, -2) @ Sd
    _, second, _ = _dual_derivatives(l1, s2, projected**2, eN, cL, N - 1)
    return l1, -tangent / second
