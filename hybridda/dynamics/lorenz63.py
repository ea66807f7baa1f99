"""Lorenz (1963) three-variable convection model."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractDynamics


class Lorenz63(AbstractDynamics):
    r"""Lorenz-63: $\dot x = \sigma(y-x)$, $\dot y = x(\rho-z)-y$, $\dot z = xy-\beta z$.

    **Arguments:**

    - `sigma`, `rho`, `beta`: the classical parameters (10, 28, 8/3 by default),
      stored as arrays so they can be learnt.

    !!! cite "Reference"
        Lorenz, E. N. (1963). Deterministic nonperiodic flow. *J. Atmos. Sci.*, 20, 130-141.
    """

    sigma: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=10.0)
    rho: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=28.0)
    beta: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=8.0 / 3.0)

    @property
    def state_size(self) -> int:
        return 3

    def tendency(self, t, x: Float[Array, " 3"], args=None) -> Float[Array, " 3"]:
        x1, x2, x3 = x[0], x[1], x[2]
        return jnp.stack(
            [self.sigma * (x2 - x1), x1 * (self.rho - x3) - x2, x1 * x2 - self.beta * x3]
        )

    def domain_length(self) -> float:
        return float("inf")

    def default_initial_state(self) -> Float[Array, " 3"]:
        return jnp.array([1.509, -1.531, 25.46])
