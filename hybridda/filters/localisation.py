"""Distance-based localisation: taper functions and the geometry they act on."""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._checks import concrete
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


def _axis_distance(difference: Array, period: float) -> Array:
    """``|difference|`` on a circle of length `period` (``inf``: the real line)."""
    d = jnp.abs(difference)
    if math.isinf(period):
        return d
    d = jnp.mod(d, period)
    return jnp.minimum(d, period - d)


def periodic_distance(
    a: Float[Array, " m"] | Float[Array, "m d"],
    b: Float[Array, " k"] | Float[Array, "k d"],
    period: float | tuple[float, ...],
) -> Float[Array, "m k"]:
    """Pairwise distances between points `a` and `b`.

    1-D points (vectors): distances on a circle of length `period` (``inf``: the real
    line). Points in ``d`` dimensions (rows of ``(m, d)`` arrays): the Euclidean
    distance, with `period` a tuple of one period per axis, ``inf`` for an axis that is
    not periodic (the QG channel: ``(L_x, inf)``).
    """
    if a.ndim == 1:
        if isinstance(period, tuple):
            raise ValueError(
                f"1-D coordinates take one scalar `domain_length`, got the tuple {period}."
            )
        return _axis_distance(a[:, None] - b[None, :], period)
    dimensions = a.shape[1]
    if b.ndim != 2 or b.shape[1] != dimensions:
        raise ValueError(f"Points of shape {a.shape} and {b.shape} do not have the same dimension.")
    if not isinstance(period, tuple) or len(period) != dimensions:
        raise ValueError(
            f"`domain_length` must give one period per coordinate axis ({dimensions}; inf "
            f"for a non-periodic axis, e.g. (L_x, inf) for a channel), got {period}."
        )
    squared = sum(
        _axis_distance(a[:, None, axis] - b[None, :, axis], length) ** 2
        for axis, length in enumerate(period)
    )
    # sqrt has an infinite derivative at 0 (coincident points): the double `where` keeps
    # gradients with respect to the coordinates finite there.
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _as_axes(value):
    # A static field, so a (hashable) tuple of ints; one int is one axis.
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        return (int(value),)
    return tuple(int(axis) for axis in value)


def _as_domain_length(value):
    # Floats, and one float per axis as a tuple: the field is static, so hashable.
    if value is None:
        return None
    if isinstance(value, tuple | list):
        return tuple(float(length) for length in value)
    return float(value)


class Localisation(eqx.Module):
    """Where the state lives and how fast correlations are tapered with distance.

    **Arguments:**

    - `radius`: localisation radius in grid units (``inf`` disables localisation), or
      in the units of `coordinates` when given.
    - `taper`: the correlation function, default [`GaspariCohn`][].
    - `coordinates`: position of each state variable, shape ``(n,)`` on a line or ring,
      or ``(n, d)`` in ``d`` dimensions; default ``0, 1, ..., n-1``.
    - `domain_length`: for 1-D coordinates the period of the domain; default ``n`` (a
      periodic ring), ``inf`` for a non-periodic domain. For ``(n, d)`` coordinates a
      tuple of one period per axis, ``inf`` for a non-periodic axis: the QG channel is
      ``Localisation(radius, coordinates=model.grid_coordinates(),
      domain_length=(L_x, math.inf))``. Distances are then Euclidean.

    - `axes`: for ``(n, d)`` coordinates, measure distances along these axes only
      (static); e.g. with ``MultiLayerLorenz96.coordinates()`` (horizontal, layer),
      ``axes=(0,)`` is the horizontal distance and ``axes=(1,)`` the vertical one, the
      two localisations of [`hybridda.filters.DomainCovarianceEnKF`][]. Default: all axes.

    The observation operator's `locations` must have the same dimension as the
    coordinates.
    """

    radius: float = eqx.field(static=True)
    taper: AbstractTaper = GaspariCohn()
    coordinates: Float[Array, " n"] | Float[Array, "n d"] | None = None
    domain_length: float | tuple[float, ...] | None = eqx.field(
        static=True, default=None, converter=_as_domain_length
    )
    axes: tuple[int, ...] | None = eqx.field(static=True, default=None, converter=_as_axes)

    def __check_init__(self):
        if not (isinstance(self.radius, int | float) and self.radius > 0):
            raise ValueError(
                f"`localisation_radius` must be a number > 0 (grid units; inf disables "
                f"localisation), got {self.radius}."
            )
        dimensions = 1 if self.coordinates is None else self.coordinates.ndim
        if dimensions not in (1, 2):
            raise ValueError(
                f"Localisation `coordinates` must have shape (n,) or (n, d), got "
                f"{self.coordinates.shape}."
            )
        if dimensions == 2:
            axes = self.coordinates.shape[1]
            if not isinstance(self.domain_length, tuple) or len(self.domain_length) != axes:
                raise ValueError(
                    f"`coordinates` of shape {self.coordinates.shape} need `domain_length` "
                    f"as a tuple of {axes} periods (inf for a non-periodic axis, e.g. "
                    f"(L_x, inf) for the QG channel), got {self.domain_length}."
                )
        elif isinstance(self.domain_length, tuple):
            raise ValueError(
                f"A tuple `domain_length` {self.domain_length} needs `coordinates` of shape "
                f"(n, {len(self.domain_length)}), one column per axis."
            )
        periods = self.domain_length if isinstance(self.domain_length, tuple) else ()
        if not all(length > 0 for length in periods):
            raise ValueError(
                f"Every period in `domain_length` must be > 0 (inf: not periodic), got "
                f"{self.domain_length}."
            )
        if self.axes is not None:
            if dimensions != 2 or not self.axes:
                raise ValueError(
                    f"`axes` {self.axes} selects coordinate axes: it needs `coordinates` of "
                    "shape (n, d) and at least one axis."
                )
            axes = self.coordinates.shape[1]
            if len(set(self.axes)) != len(self.axes) or not all(
                0 <= axis < axes for axis in self.axes
            ):
                raise ValueError(
                    f"`axes` must be distinct axes in [0, {axes}) of the coordinates, got "
                    f"{self.axes}."
                )

    def _geometry(self, state_size: int):
        coordinates = (
            jnp.arange(state_size, dtype=float) if self.coordinates is None else self.coordinates
        )
        if coordinates.shape[0] != state_size:
            raise ValueError(
                f"Localisation `coordinates` has shape {coordinates.shape}, the state has "
                f"{state_size} variables."
            )
        period = float(state_size) if self.domain_length is None else self.domain_length
        return coordinates, period

    def _locations(self, observation: AbstractObservation):
        _require_uncorrelated(observation)
        coordinates, period = self._geometry(observation.state_size)
        where = observation.locations(coordinates)
        if where.shape[1:] != coordinates.shape[1:]:
            raise ValueError(
                f"The observation locations have shape {where.shape} but the Localisation "
                f"`coordinates` have shape {coordinates.shape}: give coordinates of the same "
                "dimension (for QG observations: coordinates=model.grid_coordinates(), "
                "domain_length=(L_x, inf))."
            )
        return coordinates, where, period

    def _taper(self, a, b, period):
        if self.axes is not None:  # the distance along the selected axes only
            a, b = a[:, list(self.axes)], b[:, list(self.axes)]
            period = tuple(period[axis] for axis in self.axes)
        distance = periodic_distance(a, b, period)
        if math.isinf(self.radius):
            return jnp.ones_like(distance)
        return self.taper(distance, self.radius)

    def state_to_obs(self, observation: AbstractObservation) -> Float[Array, "n p"]:
        """Taper between every state variable and every observation."""
        coordinates, where, period = self._locations(observation)
        return self._taper(coordinates, where, period)

    def points_to_obs(
        self,
        points: Float[Array, " m"] | Float[Array, "m d"],
        observation: AbstractObservation,
    ) -> Float[Array, "m p"]:
        """Taper between arbitrary `points` (in the geometry of the state's
        `coordinates`, e.g. the positions of local parameters) and every observation."""
        coordinates, where, period = self._locations(observation)
        if points.shape[1:] != coordinates.shape[1:]:
            raise ValueError(
                f"`points` of shape {points.shape} must have the dimension of the "
                f"Localisation `coordinates` {coordinates.shape}."
            )
        return self._taper(points, where, period)

    def obs_to_obs(self, observation: AbstractObservation) -> Float[Array, "p p"]:
        """Taper between pairs of observations."""
        _, where, period = self._locations(observation)
        return self._taper(where, where, period)

    def local_domains(self, observation: AbstractObservation) -> "LocalDomains":
        """The [`LocalDomains`][] of a fixed observation network, for
        ``LETKF(localisation, domains=...)``.

        Computed once, eagerly (call it outside `jit`, with concrete coordinates and
        observation locations); its cost ``O(n p)`` is paid once instead of every cycle.
        Rejects networks that change from cycle to cycle (random subsets, moving
        swaths). With a taper of unbounded support (`Gaussian`) every domain holds all
        ``p`` observations: correct, but no faster.
        """
        if type(observation).at_cycle is not AbstractObservation.at_cycle:
            raise ValueError(
                f"{type(observation).__name__} can change from cycle to cycle (it defines "
                "`at_cycle`): local domains are for fixed networks; use the LETKF without "
                "`domains` (it tapers every observation each cycle)."
            )
        taper = concrete(self.state_to_obs(observation))
        if taper is None:
            raise ValueError(
                "`local_domains` needs concrete coordinates and observation locations: "
                "call it outside jit (once per observation network)."
            )
        # At least one entry per domain (taper 0 if nothing is near: no update).
        count = max(int(np.max(np.sum(taper > 0, axis=1))), 1)
        # The k largest tapers of each row (all the nonzero ones), padded with zeros.
        order = np.argsort(-taper, axis=1, kind="stable")[:, :count]
        return LocalDomains(
            indices=jnp.asarray(order, dtype=jnp.int32),
            taper=jnp.asarray(np.take_along_axis(taper, order, axis=1)),
            obs_size=observation.obs_size,
        )


def _require_uncorrelated(observation: AbstractObservation) -> None:
    # Tapering R⁻¹ (LETKF) or Schur products with whitened anomalies (EnKF) are only
    # local when R is diagonal.
    if not isinstance(observation.error, GaussianError):
        raise ValueError(
            "Localisation needs uncorrelated observation errors (GaussianError with a "
            f"scalar or per-observation std), got {type(observation.error).__name__}; "
            "decorrelate the observations first or use a global filter."
        )


class LocalDomains(eqx.Module):
    """The observations of each state variable's local domain, found once per network.

    Row ``i`` lists the (at most ``k``) observations with a nonzero taper for state
    variable ``i``, padded with taper 0. With them the LETKF's local analyses gather
    ``k`` observations each instead of tapering all ``p``: its cost per cycle is then
    ``O(n k N²)``, linear in the state size ``n``, instead of ``O(n p N²)``.

    Build with [`Localisation.local_domains`][] for a fixed observation network (one
    whose `at_cycle` returns itself); the arrays are ordinary leaves, so a filter that
    holds them can be jitted and passed around like any module.
    """

    indices: Int[Array, "n k"]
    taper: Float[Array, "n k"]
    obs_size: int = eqx.field(static=True)

    @property
    def state_size(self) -> int:
        return self.indices.shape[0]
