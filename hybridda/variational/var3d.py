"""3D-Var as a cycling method: static background covariance, one linear solve per cycle."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import as_float_array, require_spd
from .._method import AbstractAnalysisMethod
from ..observe import AbstractObservation, check_observations, observed_mask


class Var3D(AbstractAnalysisMethod):
    r"""3D-Var with a static background covariance ``B``.

    Minimises [`ThreeDVarCost`][hybridda.variational.ThreeDVarCost] around the forecast.
    For a linear ``H`` the minimiser solves, in observation space (the PSAS/dual form),

    $$(H B Hᵀ + R)\, z = y - H x_b,\qquad x_a = x_b + B Hᵀ z,$$

    with a Lineax Cholesky solve; nonlinear operators are linearised at ``x_b`` (one
    Gauss-Newton step). The same increment is applied to every row of ``E`` (3D-Var
    cycles a single state: ``N = 1``).

    **Arguments:**

    - `background_covariance`: ``B`` (n × n), e.g. `scale * climatological_covariance`.

    !!! cite "Reference"
        Lorenc (1986), Analysis methods for numerical weather prediction, *QJRMS* 112.
    """

    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        require_spd("background_covariance (B)", self.background_covariance)

    @property
    def min_ensemble_size(self) -> int:
        return 1

    def analysis(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        del key
        n = self.background_covariance.shape[0]
        if E.ndim != 2 or E.shape[1] != n:
            raise ValueError(f"`E` must have shape (N, {n}) to match B, got {E.shape}.")
        if y.shape != (observation.obs_size,):
            raise ValueError(f"`y` must have shape ({observation.obs_size},), got {y.shape}.")
        y = check_observations(y)
        mask = observed_mask(y)
        background = E.mean(axis=0)
        H = jnp.where(mask[:, None], observation.linearise(background), 0.0)  # (p, n)
        B = self.background_covariance
        R = observation.error.covariance(observation.obs_size)
        # Unobserved entries: identity rows/columns in R, zero rows in H, zero innovation.
        both = mask[:, None] & mask[None, :]
        R = jnp.where(both, R, jnp.eye(R.shape[0]))
        innovation = jnp.where(mask, y - observation(background), 0.0)
        BHt = B @ H.T
        operator = lx.MatrixLinearOperator(H @ BHt + R, lx.positive_semidefinite_tag)
        z = lx.linear_solve(operator, innovation, solver=lx.Cholesky()).value
        return E + (BHt @ z)[None, :]


__all__ = ["Var3D"]
