"""Distance-based localisation: taper functions and the geometry they act on."""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..observe import AbstractObservation, GaussianError

# Gaspari-Cohn half-width per unit of `radius`: the taper then has the curvature at 0 of
# a Gaussian exp(-d²/2 radius²) (Gaspari and Cohn 1999, eq. 4.10; DAPPER rounds it to
# 1.82). At distance = radius it is 0.635 (the Gaussian: exp(-1/2) = 0.607).
_GC_SCALE = math.sqrt(10.0 / 3.0)


class AbstractTaper(eqx.Module):
    """A correlation function ``ρ(distance; radius)`` with ``ρ(0) = 1``."""

    @abc.abstractmethod
    def __call__(self, distance: Float[Array, "*s"], radius: float) -> Float[Array, "*s"]:
        """Taper coefficients in [0, 1]."""


class GaspariCohn(AbstractTaper):
    """Gaspari and Cohn (1999, eq. 4.10) fifth-order piecewise rational function.

    Compact support ``2 c`` with half-width ``c = radius √(10/3)``, so that near 0 it
    matches the Gaussian ``exp(-d² / 2 radius²)`` (the convention of DAPPER, whose
    ``loc_rad`` is this `radius`); at ``distance = radius`` the taper is 0.635.
    """

    def __call__(self, distance, radius):
        r = distance / (radius * _GC_SCALE)
        inner = 1 + r**2 * (-(r**3) / 4 + r**2 / 2) + r**3 * (5 / 8) - r**2 * (5 / 3)
        safe = jnp.where(r > 0, r, 1.0)
        outer = (
            r**2 * (r**3 / 12 - r**2 / 2)
            + r**3 * (5 / 8)
            + r**2 * (5 / 3)
            - 5 * r
            + 4
            - (2 / 3) / safe
        )
        taper = jnp.where(r <= 1, inner, jnp.where(r <= 2, outer, 0.0))
        return jnp.clip(taper, 0.0, 1.0)  # round-off near the support's edge: -5e-16


class Gaussian(AbstractTaper):
    """``exp(-d² / (2 radius²))`` (no compact support)."""

    def __call__(self, distance, radius):
        return jnp.exp(-0.5 * (distance / radius) ** 2)


class Step(AbstractTaper):
    """1 within `radius`, 0 beyond."""

    def __call__(self, distance, radius):
        return jnp.where(distance <= radius, 1.0, 0.0)


def periodic_distance(
    a: Float[Array, " m"], b: Float[Array, " k"], period: float
) -> Float[Array, "m k"]:
    """Pairwise distances on a circle of length `period` (``inf``: the real line)."""
    d = jnp.abs(a[:, None] - b[None, :])
    if math.isinf(period):
        return d
    d = jnp.mod(d, period)
    return jnp.minimum(d, period - d)


class Localisation(eqx.Module):
    """Where the state lives and how fast correlations are tapered with distance.

    **Arguments:**

    - `radius`: localisation radius in grid units (``inf`` disables localisation).
    - `taper`: the correlation function, default [`GaspariCohn`][].
    - `coordinates`: position of each state variable; default ``0, 1, ..., n-1``.
    - `domain_length`: period of the domain; default ``n`` (a periodic ring), ``inf``
      for a non-periodic domain.
    """

    radius: float = eqx.field(static=True)
    taper: AbstractTaper = GaspariCohn()
    coordinates: Float[Array, " n"] | None = None
    domain_length: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not (isinstance(self.radius, int | float) and self.radius > 0):
            raise ValueError(
                f"`localisation_radius` must be a number > 0 (grid units; inf disables "
                f"localisation), got {self.radius}."
            )

    def _geometry(self, state_size: int):
        coordinates = (
            jnp.arange(state_size, dtype=float) if self.coordinates is None else self.coordinates
        )
        if coordinates.shape != (state_size,):
            raise ValueError(
                f"Localisation `coordinates` has shape {coordinates.shape}, the state has "
                f"{state_size} variables."
            )
        period = float(state_size) if self.domain_length is None else self.domain_length
        return coordinates, period

    def _taper(self, distance):
        if math.isinf(self.radius):
            return jnp.ones_like(distance)
        return self.taper(distance, self.radius)

    def state_to_obs(self, observation: AbstractObservation) -> Float[Array, "n p"]:
        """Taper between every state variable and every observation."""
        _require_uncorrelated(observation)
        coordinates, period = self._geometry(observation.state_size)
        where = observation.locations(coordinates)
        return self._taper(periodic_distance(coordinates, where, period))

    def obs_to_obs(self, observation: AbstractObservation) -> Float[Array, "p p"]:
        """Taper between pairs of observations."""
        _require_uncorrelated(observation)
        coordinates, period = self._geometry(observation.state_size)
        where = observation.locations(coordinates)
        return self._taper(periodic_distance(where, where, period))


def _require_uncorrelated(observation: AbstractObservation) -> None:
    # Tapering R⁻¹ (LETKF) or Schur products with whitened anomalies (EnKF) are only
    # local when R is diagonal.
    if not isinstance(observation.error, GaussianError):
        raise ValueError(
            "Localisation needs uncorrelated observation errors (GaussianError with a "
            f"scalar or per-observation std), got {type(observation.error).__name__}; "
            "decorrelate the observations first or use a global filter."
        )
