"""Variational cost functionals as modules: ``J(control) -> scalar`` and its pieces."""

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

from .._checks import as_float_array, require_spd
from ..observe import AbstractObservation, observed_mask


class ThreeDVarCost(eqx.Module):
    r"""The 3D-Var cost $J(x) = \tfrac12\|x - x_b\|^2_{B^{-1}} + \tfrac12\|y - H(x)\|^2_{R^{-1}}$.

    NaN entries of `y` are unobserved and do not contribute.

    **Arguments:**

    - `background`: ``x_b``; `background_covariance`: ``B`` (symmetric positive definite).
    - `observation`: the operator ``H`` with its error model ``R``; `y`: the observation.
    """

    background: Float[Array, " n"]
    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    observation: AbstractObservation
    y: Float[Array, " p"]

    def __check_init__(self):
        require_spd("background_covariance (B)", self.background_covariance)

    def background_term(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """``½ (x - x_b)ᵀ B⁻¹ (x - x_b)``."""
        factor = jnp.linalg.cholesky(self.background_covariance)
        white = jsl.solve_triangular(factor, x - self.background, lower=True)
        return 0.5 * jnp.sum(white**2)

    def observation_term(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """``½ (y - H x)ᵀ R⁻¹ (y - H x)`` over the observed entries."""
        mask = observed_mask(self.y)
        innovation = jnp.where(mask, self.y - self.observation(x), 0.0)
        return 0.5 * jnp.sum(self.observation.error.whiten(innovation, mask) ** 2)

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        return self.background_term(x) + self.observation_term(x)
