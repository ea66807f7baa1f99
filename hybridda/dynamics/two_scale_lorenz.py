"""Two-scale Lorenz (1996) model: slow variables X coupled to fast variables Y."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractDynamics
from .lorenz96 import lorenz96_advection


class TwoScaleLorenz96(AbstractDynamics):
    r"""Two-scale Lorenz-96 (Lorenz 1996, section 6; notation of Wilks 2005).

    $$\dot X_k = X_{k-1}(X_{k+1} - X_{k-2}) - X_k + F - \frac{hc}{b}\sum_{j} Y_{j,k}$$
    $$\dot Y_{j,k} = c b\, Y_{j+1,k}(Y_{j-1,k} - Y_{j+2,k}) - c Y_{j,k} + \frac{hc}{b} X_k$$

    The fast variables form one periodic ring of length ``n_slow * n_fast`` (``Y_{j,k}``
    with ``j`` fastest), so ``Y_{J,k}`` neighbours ``Y_{1,k+1}``. The state vector is
    ``[X_1..X_K, Y_{1,1}..Y_{J,K}]``, of size ``K (1 + J)``.

    **Arguments** (defaults: Lorenz 1996, K=36, J=10, F=10, h=1, b=c=10; Wilks 2005 uses
    K=8, J=32, F=18 or 20):

    - `n_slow` (K), `n_fast` (J per slow variable): static sizes.
    - `forcing` (F), `coupling` (h), `time_scale` (c), `amplitude_ratio` (b): arrays.

    !!! cite "References"
        Lorenz (1996), Predictability: a problem partly solved. Wilks (2005), Effects of
        stochastic parametrizations in the Lorenz '96 system, *QJRMS* 131, 389-407.
    """

    n_slow: int = eqx.field(static=True, default=36)
    n_fast: int = eqx.field(static=True, default=10)
    forcing: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=10.0)
    coupling: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    time_scale: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=10.0)
    amplitude_ratio: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=10.0)

    def __check_init__(self):
        if self.n_slow < 4:
            raise ValueError(f"`n_slow` must be >= 4, got {self.n_slow}.")
        if self.n_fast < 1:
            raise ValueError(f"`n_fast` must be >= 1, got {self.n_fast}.")

    @property
    def state_size(self) -> int:
        return self.n_slow * (1 + self.n_fast)

    def split(self, x: Float[Array, "... n"]):
        """Split a state into slow ``X`` of shape (K,) and fast ``Y`` of shape (K, J)."""
        slow = x[..., : self.n_slow]
        fast = x[..., self.n_slow :].reshape(*x.shape[:-1], self.n_slow, self.n_fast)
        return slow, fast

    def coupling_term(self, x: Float[Array, " n"]) -> Float[Array, " K"]:
        r"""The effect of the fast variables on the slow ones, $-\frac{hc}{b}\sum_j Y_{j,k}$."""
        _, fast = self.split(x)
        return -self.coupling * self.time_scale / self.amplitude_ratio * fast.sum(-1)

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        slow, fast = self.split(x)
        h, c, b = self.coupling, self.time_scale, self.amplitude_ratio
        dslow = lorenz96_advection(slow) - slow + self.forcing + self.coupling_term(x)
        y = fast.reshape(-1)
        # The fast ring runs the other way: Y_{j+1} (Y_{j-1} - Y_{j+2}).
        dfast = c * b * jnp.roll(y, -1) * (jnp.roll(y, 1) - jnp.roll(y, -2)) - c * y
        dfast = dfast + (h * c / b) * jnp.repeat(slow, self.n_fast)
        return jnp.concatenate([dslow, dfast])

    def coordinates(self) -> Float[Array, " n"]:
        slow = jnp.arange(self.n_slow, dtype=float)
        fast = (jnp.arange(self.n_slow * self.n_fast) + 0.5) / self.n_fast - 0.5
        return jnp.concatenate([slow, fast])

    def domain_length(self) -> float:
        return float(self.n_slow)

    def default_initial_state(self) -> Float[Array, " n"]:
        slow = (jnp.zeros(self.n_slow) + self.forcing).at[0].add(0.01)
        fast = 0.01 * jnp.sin(jnp.arange(self.n_slow * self.n_fast, dtype=float))
        return jnp.concatenate([slow, fast])
