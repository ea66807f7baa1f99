"""Lorenz (1996) one-scale model on a periodic ring."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractDynamics


def lorenz96_advection(x: Float[Array, "... n"]) -> Float[Array, "... n"]:
    r"""The quadratic term $(x_{i+1} - x_{i-2})\,x_{i-1}$ on a periodic ring (last axis)."""
    # One padded copy [x_{n-2}, x_{n-1}, x_0, ..., x_{n-1}, x_0] and three slices of it,
    # rather than three `jnp.roll`s (each a concatenation): measured on 24 × 40 ensembles,
    # the RK4 cycle runs 1.4× faster and its gradient 1.8× faster.
    n = x.shape[-1]
    padded = jnp.concatenate([x[..., -2:], x, x[..., :1]], axis=-1)  # padded[j] = x_{j-2}
    return (padded[..., 3:] - padded[..., :n]) * padded[..., 1 : n + 1]


class Lorenz96(AbstractDynamics):
    r"""Lorenz-96: $\dot x_i = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F$, $i$ periodic.

    **Arguments:**

    - `n`: number of variables (≥ 4), static.
    - `forcing`: the forcing $F$ (default 8, the chaotic regime used in DA benchmarks);
      a scalar or one value per variable, stored as an array so it can be learnt.

    !!! cite "Reference"
        Lorenz, E. N. (1996). Predictability: a problem partly solved. *Proc. ECMWF
        Seminar on Predictability*, vol. 1. Lorenz and Emanuel (1998), *J. Atmos. Sci.*
    """

    n: int = eqx.field(static=True, default=40)
    forcing: Float[Array, "*"] = eqx.field(converter=jnp.asarray, default=8.0)

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 4:
            raise ValueError(f"Lorenz96 needs `n` >= 4 variables (an integer), got n={self.n}.")
        if self.forcing.ndim > 1 or (self.forcing.ndim == 1 and self.forcing.shape[0] != self.n):
            raise ValueError(
                f"`forcing` must be a scalar or have shape ({self.n},), got {self.forcing.shape}."
            )

    @property
    def state_size(self) -> int:
        return self.n

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        return lorenz96_advection(x) - x + self.forcing

    def default_initial_state(self) -> Float[Array, " n"]:
        # The unstable equilibrium x = F, nudged on one variable (Lorenz and Emanuel 1998).
        return jnp.full((self.n,), 8.0).at[self.n // 2].add(0.01)
