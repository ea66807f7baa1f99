"""Observation operators ``y = H(x) + ε`` and Gaussian observation-error models.

Generic operators act on the state vector (selections, random subsets, matrices); the
QG channel networks ([`QGPointObservation`][], [`RandomQGPointObservation`][],
[`QGSwathObservation`][]) observe streamfunction and wind diagnosed from the
[`hybridda.dynamics.QG`][] state.

A NaN entry in an observation vector means "not observed this cycle": every filter
masks it with static shapes, so missing values never trigger a recompilation.
Infinite values are an error.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._checks import as_float_array, concrete, require_positive, require_spd
from .dynamics.qg import QG

# --------------------------------------------------------------------------- errors


class AbstractObservationError(eqx.Module):
    """A zero-mean Gaussian observation-error model with covariance ``R`` (p × p)."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, obs_size: int) -> Float[Array, " p"]:
        """One draw of the observation error."""

    @abc.abstractmethod
    def whiten(
        self, innovation: Float[Array, "*batch p"], mask: Bool[Array, " p"]
    ) -> Float[Array, "*batch p"]:
        """``R^{-1/2} d`` over the observed entries (``mask``); zero where unobserved."""

    @abc.abstractmethod
    def covariance(self, obs_size: int) -> Float[Array, "p p"]:
        """The dense covariance ``R``."""

    def log_density(
        self, innovation: Float[Array, " p"], mask: Bool[Array, " p"]
    ) -> Float[Array, ""]:
        """Gaussian log-density of ``innovation`` over the observed entries."""
        return self.log_density_whitened(self.whiten(innovation, mask), mask)

    def log_density_whitened(
        self, white: Float[Array, " p"], mask: Bool[Array, " p"]
    ) -> Float[Array, ""]:
        """`log_density` of the innovation whose whitened form ``R^{-1/2} d`` is `white`
        (zero where unobserved), for callers that have whitened it already."""
        count = jnp.sum(mask)
        return (
            -0.5 * jnp.sum(white**2) - self._half_log_det(mask) - 0.5 * count * jnp.log(2 * jnp.pi)
        )

    @abc.abstractmethod
    def _half_log_det(self, mask: Bool[Array, " p"]) -> Float[Array, ""]:
        """``½ log det R`` over the observed entries."""


class GaussianError(AbstractObservationError):
    """Uncorrelated Gaussian errors: ``R = diag(std²)``.

    **Arguments:**

    - `std`: a scalar (the same for every observation) or one value per observation.
    """

    std: Float[Array, "*p"] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        require_positive("obs_error_std", self.std, "Observation-error std must be positive.")
        if self.std.ndim > 1:
            raise ValueError(f"`std` must be a scalar or a vector, got shape {self.std.shape}.")

    def _std(self, obs_size: int) -> Float[Array, " p"]:
        if self.std.ndim == 1 and self.std.shape[0] != obs_size:
            raise ValueError(
                f"`std` has {self.std.shape[0]} entries but there are {obs_size} observations."
            )
        return jnp.broadcast_to(self.std, (obs_size,))

    def sample(self, key, obs_size):
        return self._std(obs_size) * jax.random.normal(key, (obs_size,))

    def whiten(self, innovation, mask):
        std = jnp.broadcast_to(self._std(innovation.shape[-1]), innovation.shape)
        full_mask = jnp.broadcast_to(mask, innovation.shape)
        # Zero the missing (NaN) entries before dividing: where() hides a NaN in the
        # value but not in the gradient with respect to std.
        return jnp.where(full_mask, jnp.where(full_mask, innovation, 0.0) / std, 0.0)

    def covariance(self, obs_size):
        return jnp.diag(self._std(obs_size) ** 2)

    def _half_log_det(self, mask):
        return jnp.sum(jnp.where(mask, jnp.log(self._std(mask.shape[0])), 0.0))


class CorrelatedGaussianError(AbstractObservationError):
    """Gaussian errors with a full covariance ``R`` (symmetric positive definite).

    Missing observations are handled by whitening with the Cholesky factor of ``R``
    restricted to the observed entries (built with static shapes: unobserved rows and
    columns are replaced by those of the identity).
    """

    matrix: Float[Array, "p p"] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        require_spd("R (observation-error covariance)", self.matrix)

    def sample(self, key, obs_size):
        self._check_size(obs_size)
        return jnp.linalg.cholesky(self.matrix) @ jax.random.normal(key, (obs_size,))

    def _masked_cholesky(self, mask):
        both = mask[:, None] & mask[None, :]
        masked = jnp.where(both, self.matrix, jnp.eye(mask.shape[0]))
        return jnp.linalg.cholesky(masked)

    def whiten(self, innovation, mask):
        self._check_size(innovation.shape[-1])
        factor = self._masked_cholesky(mask)
        full_mask = jnp.broadcast_to(mask, innovation.shape)
        d = jnp.where(full_mask, innovation, 0.0)
        white = jsl.solve_triangular(factor, d.reshape(-1, d.shape[-1]).T, lower=True)
        return jnp.where(full_mask, white.T.reshape(d.shape), 0.0)

    def covariance(self, obs_size):
        self._check_size(obs_size)
        return self.matrix

    def _half_log_det(self, mask):
        return jnp.sum(jnp.log(jnp.diag(self._masked_cholesky(mask))))

    def _check_size(self, obs_size):
        if self.matrix.shape[0] != obs_size:
            raise ValueError(
                f"R is {self.matrix.shape[0]}×{self.matrix.shape[0]} but there are "
                f"{obs_size} observations."
            )


def gaussian_error(std=None, covariance=None) -> AbstractObservationError:
    """Scalar/vector std: [`GaussianError`][]; matrix: [`CorrelatedGaussianError`][]."""
    if (std is None) == (covariance is None):
        raise ValueError("Give exactly one of `std` (scalar or vector) or `covariance` (matrix).")
    return GaussianError(std) if covariance is None else CorrelatedGaussianError(covariance)


# ------------------------------------------------------------------------ operators


class AbstractObservation(eqx.Module):
    """An observation operator ``H`` and its error model.

    Subclasses define `__call__` (noise-free ``H(x)``) and `obs_size`. A network that
    changes from cycle to cycle overrides [`at_cycle`][] to return the operator in force
    at that cycle, with the same static shapes.
    """

    error: eqx.AbstractVar[AbstractObservationError]
    state_size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(self, x: Float[Array, " n"]) -> Float[Array, " p"]:
        """Noise-free observation of one state."""

    @property
    @abc.abstractmethod
    def obs_size(self) -> int:
        """Number of observations ``p`` per cycle."""

    def at_cycle(self, cycle: Int[Array, ""] | int) -> "AbstractObservation":
        """The operator in force at `cycle` (fixed networks return themselves)."""
        del cycle
        return self

    @abc.abstractmethod
    def locations(self, state_coordinates: Float[Array, " n *d"]) -> Float[Array, " p *d"]:
        """Position of each observation on the state's domain (for localisation).

        `state_coordinates` are the positions of the state variables, ``(n,)`` on a line or
        ring or ``(n, d)`` in ``d`` dimensions; the result has the same trailing shape.
        """

    def sample(self, x: Float[Array, " n"], key: PRNGKeyArray) -> Float[Array, " p"]:
        """A synthetic observation ``H(x) + ε``."""
        return self(x) + self.error.sample(key, self.obs_size)

    def linearise(self, x: Float[Array, " n"]) -> Float[Array, "p n"]:
        """The Jacobian ``H`` at ``x`` (exact for linear operators)."""
        return jax.jacfwd(self)(x)


class IndexObservation(AbstractObservation):
    """Observe the state variables at fixed `indices` (``H`` selects entries).

    Build the usual networks with [`full_observation`][] and [`every_kth`][].
    """

    indices: Int[Array, " p"]
    state_size: int = eqx.field(static=True)
    error: AbstractObservationError

    def __init__(self, indices, state_size: int, error: AbstractObservationError):
        self.indices = jnp.asarray(indices, dtype=jnp.int32)
        self.state_size = int(state_size)
        self.error = error

    def __check_init__(self):
        if self.indices.ndim != 1 or self.indices.shape[0] == 0:
            raise ValueError(
                f"`indices` must be a non-empty vector, got shape {self.indices.shape}."
            )
        values = concrete(self.indices)
        if values is not None and (values.min() < 0 or values.max() >= self.state_size):
            raise ValueError(
                f"`indices` must lie in [0, {self.state_size}), got range "
                f"[{values.min()}, {values.max()}]."
            )

    @property
    def obs_size(self) -> int:
        return self.indices.shape[0]

    def __call__(self, x):
        return x[..., self.indices]

    def locations(self, state_coordinates):
        return state_coordinates[self.indices]


def full_observation(state_size: int, error: AbstractObservationError) -> IndexObservation:
    """Every variable observed (``H = I``)."""
    return IndexObservation(np.arange(state_size), state_size, error)


def every_kth(
    state_size: int, k: int, error: AbstractObservationError, offset: int = 0
) -> IndexObservation:
    """Every `k`-th variable, starting at `offset`."""
    if k < 1 or not 0 <= offset < state_size:
        raise ValueError(
            f"`k` (--obs-every) must be >= 1 and `offset` in [0, n), got k={k}, offset={offset}."
        )
    return IndexObservation(np.arange(offset, state_size, k), state_size, error)


class RandomSubsetObservation(AbstractObservation):
    """`obs_count` distinct variables drawn at random, redrawn every cycle.

    The draw at cycle ``k`` is a deterministic function of (`key`, ``k``), so the
    truth-observing step and the filter see the same network; shapes are static.
    """

    obs_count: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    error: AbstractObservationError
    key: PRNGKeyArray

    def __check_init__(self):
        if not 1 <= self.obs_count <= self.state_size:
            raise ValueError(
                f"`obs_count` must be in [1, {self.state_size}], got {self.obs_count}."
            )

    @property
    def obs_size(self) -> int:
        return self.obs_count

    def at_cycle(self, cycle) -> IndexObservation:
        key = jax.random.fold_in(self.key, cycle)
        chosen = jax.random.choice(key, self.state_size, (self.obs_count,), replace=False)
        return IndexObservation(jnp.sort(chosen), self.state_size, self.error)

    def __call__(self, x):
        raise TypeError(
            "RandomSubsetObservation changes every cycle: call `.at_cycle(k)` for the operator "
            "in force at cycle k."
        )

    def locations(self, state_coordinates):
        raise TypeError("Call `.at_cycle(k).locations(...)`: the network changes every cycle.")


class LinearObservation(AbstractObservation):
    """A general linear operator ``y = H x``.

    **Arguments:**

    - `matrix`: ``H`` of shape (p, n).
    - `error`: the observation-error model.
    - `obs_locations`: optional position of each observation, needed for localisation:
      shape ``(p,)``, or ``(p, d)`` for ``d``-dimensional coordinates.
    """

    matrix: Float[Array, "p n"] = eqx.field(converter=as_float_array)
    error: AbstractObservationError
    obs_locations: Float[Array, " p"] | Float[Array, "p d"] | None = None

    def __check_init__(self):
        if self.matrix.ndim != 2:
            raise ValueError(f"`matrix` (H) must be 2-D (p, n), got shape {self.matrix.shape}.")
        locations = self.obs_locations
        if locations is not None and (
            locations.ndim not in (1, 2) or locations.shape[0] != self.matrix.shape[0]
        ):
            raise ValueError(
                f"`obs_locations` must have shape ({self.matrix.shape[0]},) or "
                f"({self.matrix.shape[0]}, d), got {locations.shape}."
            )

    @property
    def state_size(self) -> int:
        return self.matrix.shape[1]

    @property
    def obs_size(self) -> int:
        return self.matrix.shape[0]

    def __call__(self, x):
        return x @ self.matrix.T

    def linearise(self, x):
        return self.matrix

    def locations(self, state_coordinates):
        if self.obs_locations is None:
            raise ValueError(
                "Localisation needs observation positions: pass `obs_locations` to "
                "LinearObservation."
            )
        return self.obs_locations


def radiance_weights(layers: int, channels: int = 8, width: float | None = None):
    """Vertical weighting functions of `channels` satellite-like channels over `layers`.

    Channel ``c`` is a Gaussian bump in the layer index centred at height
    ``(c + ½) P / channels`` with std `width` (default ``P / channels``: neighbouring
    channels overlap, as real radiance weighting functions do), normalised to sum 1.
    Returns ``(channels, layers)``.
    """
    if not (isinstance(layers, int) and isinstance(channels, int) and 1 <= channels <= layers):
        raise ValueError(
            f"Need integers 1 <= channels <= layers, got channels={channels}, layers={layers}."
        )
    width = layers / channels if width is None else float(width)
    if not width > 0:
        raise ValueError(f"`width` (std of each weighting function, layers) must be > 0: {width}.")
    centres = (jnp.arange(channels) + 0.5) * layers / channels
    bumps = jnp.exp(-0.5 * ((jnp.arange(layers)[None, :] - centres[:, None]) / width) ** 2)
    return bumps / bumps.sum(axis=1, keepdims=True)


class RadianceObservation(AbstractObservation):
    r"""Satellite-like radiances of a layered model: vertical weighted averages.

    For a state stored layer by layer (``x[z * n + i]``, e.g.
    [`hybridda.dynamics.MultiLayerLorenz96`][]) the observation of channel ``c`` above
    column ``i`` is ``y_{c,i} = Σ_z W_{c,z} x_{z,i}``: non-local in the vertical, so it
    cannot be attributed to one grid point. Observations are ordered channel by channel,
    ``y[c * m + j]`` for the ``j``-th observed column.

    For localisation, an observation sits above its column at its channel's mean height
    ``Σ_z W_{c,z} z`` (the usual convention for radiances), from 2-D state coordinates
    ``(horizontal, layer)``.

    **Arguments:**

    - `weights`: ``W``, shape ``(channels, layers)`` (see [`radiance_weights`][]).
    - `n`: variables per layer (static).
    - `error`: the observation-error model (``channels × columns`` observations).
    - `columns`: the observed columns (default all ``n``).
    """

    weights: Float[Array, "c P"] = eqx.field(converter=as_float_array)
    n: int = eqx.field(static=True)
    error: AbstractObservationError
    columns: Int[Array, " m"] | None = None

    def __post_init__(self):
        columns = jnp.arange(self.n) if self.columns is None else self.columns
        self.columns = jnp.asarray(columns, dtype=jnp.int32)

    def __check_init__(self):
        if self.weights.ndim != 2:
            raise ValueError(
                f"`weights` must have shape (channels, layers), got {self.weights.shape}."
            )
        if self.columns.ndim != 1 or self.columns.shape[0] == 0:
            raise ValueError(f"`columns` must be a non-empty vector, got {self.columns.shape}.")
        values = concrete(self.columns)
        if values is not None and (values.min() < 0 or values.max() >= self.n):
            raise ValueError(
                f"`columns` must lie in [0, {self.n}), got [{values.min()}, {values.max()}]."
            )

    @property
    def layers(self) -> int:
        return self.weights.shape[1]

    @property
    def state_size(self) -> int:
        return self.layers * self.n

    @property
    def obs_size(self) -> int:
        return self.weights.shape[0] * self.columns.shape[0]

    def __call__(self, x):
        field = x.reshape(*x.shape[:-1], self.layers, self.n)[..., self.columns]
        return jnp.einsum("cz,...zm->...cm", self.weights, field).reshape(*x.shape[:-1], -1)

    def linearise(self, x):
        rows = jnp.einsum("cz,mi->cmzi", self.weights, jnp.eye(self.n)[self.columns])
        return rows.reshape(self.obs_size, self.state_size)

    def locations(self, state_coordinates):
        if state_coordinates.ndim != 2 or state_coordinates.shape[1] != 2:
            raise ValueError(
                "Radiances are located in 2-D (horizontal, layer): give state coordinates of "
                f"shape ({self.state_size}, 2), e.g. MultiLayerLorenz96.coordinates(), got "
                f"{state_coordinates.shape}."
            )
        grid = state_coordinates.reshape(self.layers, self.n, 2)
        horizontal = grid[0, self.columns, 0]  # (m,)
        height = self.weights @ grid[:, 0, 1]  # (c,) mean height of each channel
        channels, m = self.weights.shape[0], self.columns.shape[0]
        return jnp.stack(
            [
                jnp.broadcast_to(horizontal[None, :], (channels, m)).ravel(),
                jnp.broadcast_to(height[:, None], (channels, m)).ravel(),
            ],
            axis=1,
        )


def observed_mask(y: Float[Array, " p"]) -> Bool[Array, " p"]:
    """Which entries of ``y`` are observed (not NaN)."""
    return ~jnp.isnan(y)


def check_observations(y: Float[Array, "*batch p"], name: str = "y") -> Float[Array, "*batch p"]:
    """Under `jit`: error if ``y`` holds ±inf (NaN is allowed: it marks a missing value)."""
    return eqx.error_if(
        y,
        jnp.any(jnp.isinf(y)),
        f"`{name}` contains ±inf; use NaN to mark a missing observation, fix the data otherwise.",
    )


# ------------------------------------------------------------- QG channel networks

QG_FIELDS = ("streamfunction", "u", "v")


def _as_names(value) -> tuple[str, ...]:
    # One name or a sequence of names; a static field, so a (hashable) tuple.
    return (value,) if isinstance(value, str) else tuple(value)


def _as_layers(value) -> tuple[int, ...]:
    return tuple(int(layer) for layer in value)


def _as_integer(value):
    # NumPy integers become ints; anything else is left for __check_init__ to reject
    # with a message that names the argument.
    if isinstance(value, np.integer) and not isinstance(value, np.bool_):
        return int(value)
    return value


def _as_index_array(value) -> Int[Array, "*shape"]:
    return jnp.asarray(value, dtype=jnp.int32)


def _check_fields(fields: tuple[str, ...]) -> None:
    if not fields or len(set(fields)) != len(fields) or not set(fields) <= set(QG_FIELDS):
        raise ValueError(
            f"`fields` must be distinct names from {QG_FIELDS} (at least one), got {fields}."
        )


def _check_layers(layers: tuple[int, ...]) -> None:
    if not layers or len(set(layers)) != len(layers) or not set(layers) <= {0, 1}:
        raise ValueError(
            "`observed_layers` must be distinct layers from (0, 1) (0: upper, 1: lower; at "
            f"least one), got {layers}."
        )


def _check_grid_count(name: str, value, low: int, high: int, meaning: str) -> None:
    integer = isinstance(value, int) and not isinstance(value, bool)
    if not integer or not low <= value <= high:
        raise ValueError(
            f"`{name}` ({meaning}) must be an integer in [{low}, {high}], got {value}."
        )


class QGPointObservation(AbstractObservation):
    r"""In-situ observations of the QG channel at points anywhere in it, not only grid points.

    Each point ``(x, y)`` of its layer is observed for every name in `fields`: the total
    streamfunction ``"streamfunction"`` $\psi$ and the total winds ``"u"`` $= -\psi_y$
    and ``"v"`` $= \psi_x$ (centred differences on the model grid, see
    [`hybridda.dynamics.QG.fields_with_walls`][]), bilinearly interpolated from the four
    surrounding grid values: periodic in x; in y between the walls, whose values are known
    ($\psi' = 0$, free slip). The output is field-major: every point for ``fields[0]``,
    then every point for ``fields[1]``, and so on. The operator is affine in the state
    (linear in the perturbation PV), and its tangent-linear and adjoint are JAX's.

    **Arguments:**

    - `model`: the [`hybridda.dynamics.QG`][] model whose state is observed (its grid,
      PV inversion and mean winds).
    - `positions`: shape (p, 2), the ``(x, y)`` of each point in model length units
      (1 = 1000 km); x is periodic (any real), y lies in ``[0, L_y]`` from the south wall.
    - `layers`: shape (p,), the layer of each point: 0 (upper) or 1 (lower).
    - `error`: the observation-error model for the ``len(fields) * p`` observations.
    - `fields`: names from ``("streamfunction", "u", "v")``; default the streamfunction.

    `locations` are the horizontal ``(x, y)`` of each observation, for 2-D localisation
    with ``Localisation(radius, coordinates=model.grid_coordinates(),
    domain_length=(L_x, math.inf))``. Positions outside the channel in y are an error
    when concrete; under `jit` they are clamped to the walls.
    """

    model: QG
    positions: Float[Array, "p 2"] = eqx.field(converter=as_float_array)
    layers: Int[Array, " p"] = eqx.field(converter=_as_index_array)
    error: AbstractObservationError
    fields: tuple[str, ...] = eqx.field(
        static=True, default=("streamfunction",), converter=_as_names
    )

    def __check_init__(self):
        _check_fields(self.fields)
        if self.positions.ndim != 2 or self.positions.shape[1] != 2 or not self.positions.size:
            raise ValueError(
                f"`positions` must have shape (p, 2), one (x, y) per point, got "
                f"{self.positions.shape}."
            )
        count = self.positions.shape[0]
        if self.layers.shape != (count,):
            raise ValueError(
                f"`layers` must have shape ({count},), one layer per point, got "
                f"{self.layers.shape}."
            )
        positions = concrete(self.positions)
        if positions is not None:
            length_y = self.model.lengths[1]
            if not np.all(np.isfinite(positions)):
                raise ValueError("`positions` must be finite.")
            if positions[:, 1].min() < 0 or positions[:, 1].max() > length_y:
                raise ValueError(
                    f"`positions` must have y in the channel, [0, L_y] = [0, {length_y}] "
                    f"from the south wall, got y in [{positions[:, 1].min()}, "
                    f"{positions[:, 1].max()}] (x is periodic: any value)."
                )
        layers = concrete(self.layers)
        if layers is not None and not np.all((layers == 0) | (layers == 1)):
            raise ValueError(
                f"`layers` must be 0 (upper) or 1 (lower), got {sorted(set(layers.tolist()))}."
            )

    @property
    def state_size(self) -> int:
        return self.model.state_size

    @property
    def obs_size(self) -> int:
        return len(self.fields) * self.positions.shape[0]

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, " p"]:
        grids = self.model.fields_with_walls(x)  # (field, layer, row 0..ny+1, column)
        dx, dy = self.model.grid_spacing
        nx, ny = self.model.nx, self.model.ny
        # Fractional grid indices: column i lies at x = (i + 1/2) dx, row j at y = j dy.
        column = self.positions[:, 0] / dx - 0.5
        row = jnp.clip(self.positions[:, 1] / dy, 0.0, ny + 1.0)
        west = jnp.floor(column)
        # A point on the north wall is the top edge of the cell above row ny.
        south = jnp.clip(jnp.floor(row), 0.0, float(ny))
        weight_x = (column - west)[None, :]
        weight_y = (row - south)[None, :]
        i0 = jnp.mod(west.astype(jnp.int32), nx)[None, :]
        i1 = jnp.mod(i0 + 1, nx)
        j0 = south.astype(jnp.int32)[None, :]
        j1 = j0 + 1
        field = np.asarray([QG_FIELDS.index(name) for name in self.fields])[:, None]
        layer = self.layers[None, :]

        def at(j, i):
            return grids[field, layer, j, i]  # (fields, points)

        values = (1.0 - weight_y) * ((1.0 - weight_x) * at(j0, i0) + weight_x * at(j0, i1)) + (
            weight_y * ((1.0 - weight_x) * at(j1, i0) + weight_x * at(j1, i1))
        )
        return values.reshape(-1)

    def locations(self, state_coordinates: Float[Array, " n *d"]) -> Float[Array, "p 2"]:
        del state_coordinates  # the points carry their own positions
        wrapped_x = jnp.mod(self.positions[:, 0], self.model.lengths[0])
        horizontal = jnp.stack([wrapped_x, self.positions[:, 1]], axis=-1)
        return jnp.tile(horizontal, (len(self.fields), 1))


class RandomQGPointObservation(AbstractObservation):
    """`obs_count` in-situ points drawn uniformly over the QG channel, redrawn every cycle.

    The points at cycle ``k`` (x uniform in ``[0, L_x)``, y in ``[0, L_y)``, the layer
    uniform over `observed_layers`) are a deterministic function of (`key`, ``k``), as
    for [`RandomSubsetObservation`][]: the truth-observing step and the filter see the
    same network, with static shapes. [`at_cycle`][] returns the
    [`QGPointObservation`][] in force; a fixed random network is ``.at_cycle(0)``.

    **Arguments:**

    - `model`: the [`hybridda.dynamics.QG`][] model whose state is observed.
    - `obs_count`: number of points per cycle.
    - `error`: the observation-error model for the ``len(fields) * obs_count``
      observations.
    - `key`: the network's random key.
    - `fields`: names from ``("streamfunction", "u", "v")``; default the streamfunction.
    - `observed_layers`: the layers points are drawn from, default both (0: upper).
    """

    model: QG
    obs_count: int = eqx.field(static=True, converter=_as_integer)
    error: AbstractObservationError
    key: PRNGKeyArray
    fields: tuple[str, ...] = eqx.field(
        static=True, default=("streamfunction",), converter=_as_names
    )
    observed_layers: tuple[int, ...] = eqx.field(static=True, default=(0, 1), converter=_as_layers)

    def __check_init__(self):
        _check_fields(self.fields)
        _check_layers(self.observed_layers)
        if isinstance(self.obs_count, bool) or not (
            isinstance(self.obs_count, int) and self.obs_count >= 1
        ):
            raise ValueError(f"`obs_count` must be an integer >= 1, got {self.obs_count}.")

    @property
    def state_size(self) -> int:
        return self.model.state_size

    @property
    def obs_size(self) -> int:
        return len(self.fields) * self.obs_count

    def at_cycle(self, cycle) -> QGPointObservation:
        key_x, key_y, key_layer = jax.random.split(jax.random.fold_in(self.key, cycle), 3)
        length_x, length_y = self.model.lengths
        shape = (self.obs_count,)
        positions = jnp.stack(
            [
                jax.random.uniform(key_x, shape, maxval=length_x),
                jax.random.uniform(key_y, shape, maxval=length_y),
            ],
            axis=-1,
        )
        choice = jax.random.randint(key_layer, shape, 0, len(self.observed_layers))
        layers = jnp.asarray(self.observed_layers, dtype=jnp.int32)[choice]
        return QGPointObservation(self.model, positions, layers, self.error, self.fields)

    def __call__(self, x):
        raise TypeError(
            "RandomQGPointObservation changes every cycle: call `.at_cycle(k)` for the "
            "operator in force at cycle k."
        )

    def locations(self, state_coordinates):
        raise TypeError("Call `.at_cycle(k).locations(...)`: the network changes every cycle.")


class QGSwathObservation(AbstractObservation):
    """A satellite-like swath over the QG channel that moves every cycle.

    At cycle ``k`` the swath is the `width` grid columns ``(start + k * shift + i) mod
    nx``, ``i = 0 .. width - 1`` (it wraps around the periodic channel), and every
    interior row; each grid point there is observed in each of `observed_layers`, for
    every name in `fields` (the grid values of [`QGPointObservation`][]'s fields). The
    number of observations never changes: ``len(fields) * len(observed_layers) * ny *
    width``, in the order field, layer, row, then column from the swath's first column.
    [`at_cycle`][] returns the [`QGPointObservation`][] in force.

    **Arguments:**

    - `model`: the [`hybridda.dynamics.QG`][] model whose state is observed.
    - `width`: number of adjacent grid columns observed, in ``[1, nx]``.
    - `shift`: columns the swath moves east per cycle (negative: west; 0: fixed).
    - `error`: the observation-error model.
    - `start`: first column at cycle 0, in ``[0, nx)``; default 0.
    - `fields`: names from ``("streamfunction", "u", "v")``; default the streamfunction.
    - `observed_layers`: default the upper layer only, ``(0,)``.
    """

    model: QG
    width: int = eqx.field(static=True, converter=_as_integer)
    shift: int = eqx.field(static=True, converter=_as_integer)
    error: AbstractObservationError
    start: int = eqx.field(static=True, default=0, converter=_as_integer)
    fields: tuple[str, ...] = eqx.field(
        static=True, default=("streamfunction",), converter=_as_names
    )
    observed_layers: tuple[int, ...] = eqx.field(static=True, default=(0,), converter=_as_layers)

    def __check_init__(self):
        _check_fields(self.fields)
        _check_layers(self.observed_layers)
        nx = self.model.nx
        _check_grid_count("width", self.width, 1, nx, "grid columns in the swath, at most nx")
        _check_grid_count("start", self.start, 0, nx - 1, "first column at cycle 0")
        if isinstance(self.shift, bool) or not isinstance(self.shift, int):
            raise ValueError(
                f"`shift` (grid columns moved per cycle) must be an integer, got {self.shift}."
            )

    @property
    def state_size(self) -> int:
        return self.model.state_size

    @property
    def obs_size(self) -> int:
        return len(self.fields) * len(self.observed_layers) * self.model.ny * self.width

    def columns(self, cycle: Int[Array, ""] | int) -> Int[Array, " width"]:
        """The grid columns observed at `cycle`, from the swath's first column."""
        first = self.start + jnp.asarray(cycle) * self.shift
        return jnp.mod(first + jnp.arange(self.width), self.model.nx)

    def at_cycle(self, cycle) -> QGPointObservation:
        dx, dy = self.model.grid_spacing
        shape = (len(self.observed_layers), self.model.ny, self.width)
        x = (self.columns(cycle) + 0.5) * dx
        y = (jnp.arange(self.model.ny) + 1.0) * dy
        positions = jnp.stack(
            [
                jnp.broadcast_to(x[None, None, :], shape).reshape(-1),
                jnp.broadcast_to(y[None, :, None], shape).reshape(-1),
            ],
            axis=-1,
        )
        layers = np.broadcast_to(np.asarray(self.observed_layers)[:, None, None], shape)
        return QGPointObservation(
            self.model, positions, layers.reshape(-1), self.error, self.fields
        )

    def __call__(self, x):
        raise TypeError(
            "QGSwathObservation moves every cycle: call `.at_cycle(k)` for the operator in "
            "force at cycle k."
        )

    def locations(self, state_coordinates):
        raise TypeError("Call `.at_cycle(k).locations(...)`: the swath moves every cycle.")
