"""Observation operators ``y = H(x) + ε`` and Gaussian observation-error models.

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
        white = self.whiten(innovation, mask)
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
    def locations(self, state_coordinates: Float[Array, " n"]) -> Float[Array, " p"]:
        """Position of each observation on the state's domain (for localisation)."""

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
    - `obs_locations`: optional position of each observation, needed for localisation.
    """

    matrix: Float[Array, "p n"] = eqx.field(converter=as_float_array)
    error: AbstractObservationError
    obs_locations: Float[Array, " p"] | None = None

    def __check_init__(self):
        if self.matrix.ndim != 2:
            raise ValueError(f"`matrix` (H) must be 2-D (p, n), got shape {self.matrix.shape}.")
        if self.obs_locations is not None and self.obs_locations.shape != (self.matrix.shape[0],):
            raise ValueError(
                f"`obs_locations` must have shape ({self.matrix.shape[0]},), "
                f"got {self.obs_locations.shape}."
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
