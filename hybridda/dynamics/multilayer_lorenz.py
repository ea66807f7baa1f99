r"""Multi-layer Lorenz-96: rings of Lorenz-96 stacked vertically, coupled by diffusion.

A two-dimensional toy atmosphere (Farchi and Bocquet 2019, section 5; Malartic, Farchi
and Bocquet 2022, section 5): ``P`` layers ``z = 1..P`` of an ``n``-variable Lorenz-96
ring (the horizontal), each with its own forcing ``F_z``, and a vertical diffusion
between adjacent layers:

$$\dot x_{z,i} = (x_{z,i+1} - x_{z,i-2})\,x_{z,i-1} - x_{z,i} + F_{z,i}
  + Ω\,(x_{z+1,i} - 2 x_{z,i} + x_{z-1,i}),$$

``i`` periodic, and no flux through the bottom and the top (``x_{0,i} = x_{1,i}``,
``x_{P+1,i} = x_{P,i}``), so the coupling only exchanges between layers: it adds
``-Ω Σ (x_{z+1,i} - x_{z,i})²`` to the rate of change of ``½‖x‖²``, whose other terms are
those of Lorenz-96 (the advection conserves it). By default ``F_z`` decreases linearly
from 8 at the bottom (chaotic) to 4 at the top (weakly chaotic), so the error growth
varies with height, and a model with the wrong forcing profile has a height-dependent
error: the local parameters of Malartic et al. (2022). The state is stored layer by
layer: ``x[z * n + i]``.

Observed through satellite-like radiances ([`hybridda.observe.RadianceObservation`][]):
vertical weighted averages of each column, a non-local observation operator.

Our construction after the cited papers; the defaults (P = 32, n = 40, F 8 -> 4,
Ω = 1) follow them as far as their abstracts and our reading go, every value is an
argument.

!!! cite "References"
    Farchi and Bocquet (2019), On the efficiency of covariance localisation of the
    ensemble Kalman filter using augmented ensembles, *Front. Appl. Math. Stat.* 5, 3.
    Malartic, Farchi and Bocquet (2022), State, global and local parameter estimation
    using local ensemble Kalman filters: applications to online machine learning of
    chaotic dynamics, *Q. J. R. Meteorol. Soc.* 148, 2167-2193.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractDynamics
from .lorenz96 import lorenz96_advection


def linear_forcing_profile(layers: int, bottom: float = 8.0, top: float = 4.0):
    """``F_z`` from `bottom` (layer 0) to `top` (layer ``P - 1``), linear in ``z``."""
    return jnp.linspace(bottom, top, layers)


class MultiLayerLorenz96(AbstractDynamics):
    """``layers`` coupled Lorenz-96 rings of ``n`` variables (see the module docstring).

    **Arguments:**

    - `layers`: number of layers ``P`` ≥ 1 (static).
    - `n`: variables per layer (≥ 4, static).
    - `forcing`: ``F``: a scalar, one value per layer (shape ``(P,)``), or one per
      variable (``(P, n)``, local forcings); default 8 -> 4 linearly with height.
    - `coupling`: the vertical diffusion ``Ω`` ≥ 0 (default 1).
    """

    layers: int = eqx.field(static=True, default=32)
    n: int = eqx.field(static=True, default=40)
    forcing: Float[Array, "*"] | float | None = None
    coupling: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)

    def __post_init__(self):
        if self.forcing is None:
            self.forcing = linear_forcing_profile(self.layers)
        else:
            self.forcing = jnp.asarray(self.forcing, dtype=float)

    def __check_init__(self):
        if not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"`layers` must be an integer >= 1, got {self.layers!r}.")
        if not isinstance(self.n, int) or self.n < 4:
            raise ValueError(f"`n` (variables per layer) must be an integer >= 4, got {self.n!r}.")
        if self.forcing.shape not in ((), (self.layers,), (self.layers, self.n)):
            raise ValueError(
                f"`forcing` must be a scalar, one value per layer ({self.layers},) or one per "
                f"variable ({self.layers}, {self.n}), got shape {self.forcing.shape}."
            )
        if self.coupling.ndim != 0:
            raise ValueError(f"`coupling` must be a scalar, got shape {self.coupling.shape}.")

    @property
    def state_size(self) -> int:
        return self.layers * self.n

    def _forcing_field(self) -> Float[Array, "P n"]:
        forcing = self.forcing[:, None] if self.forcing.ndim == 1 else self.forcing
        return jnp.broadcast_to(forcing, (self.layers, self.n))

    def tendency(self, t, x: Float[Array, " state"], args=None) -> Float[Array, " state"]:
        field = x.reshape(self.layers, self.n)
        # No flux through the bottom and top: the ghost layers copy the boundary ones.
        padded = jnp.concatenate([field[:1], field, field[-1:]], axis=0)
        diffusion = padded[2:] - 2 * field + padded[:-2]
        rate = lorenz96_advection(field) - field + self._forcing_field()
        return (rate + self.coupling * diffusion).reshape(-1)

    def fields(self, x: Float[Array, "*batch state"]) -> Float[Array, "*batch P n"]:
        """States as ``(..., layers, n)`` arrays (layer ``z``, horizontal position ``i``)."""
        return x.reshape(*x.shape[:-1], self.layers, self.n)

    def coordinates(self) -> Float[Array, "state 2"]:
        """``(horizontal position i, layer z)`` of each variable, for 2-D localisation:
        use ``Localisation(radius, coordinates=model.coordinates(),
        domain_length=model.domain_length())``."""
        z, i = jnp.meshgrid(jnp.arange(self.layers), jnp.arange(self.n), indexing="ij")
        return jnp.stack([i.ravel(), z.ravel()], axis=1).astype(float)

    def domain_length(self) -> tuple[float, float]:
        """Periodic in the horizontal (``n``), not in the vertical."""
        return (float(self.n), float("inf"))

    def default_initial_state(self) -> Float[Array, " state"]:
        # Each layer at its equilibrium x = F, nudged on one variable per layer.
        field = self._forcing_field() + 0.01 * jnp.sin(jnp.arange(self.n, dtype=float))[None]
        return field.reshape(-1)
