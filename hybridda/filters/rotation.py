"""Random mean-preserving rotations of the analysis anomalies (DAPPER's ``rot=True``).

A deterministic square-root filter keeps the ensemble in a fixed orientation relative
to its anomalies; in strongly non-linear regimes members can then collapse onto a few
outliers (non-Gaussian "clustering"). Rotating the analysis anomalies by a random
orthogonal matrix that maps the vector of ones to itself changes neither the mean nor
the covariance but spreads the members out again (Sakov and Oke 2008; Bocquet and Sakov
2014, whose iEnKS code DAPPER's ``genOG_1`` follows).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..observe import AbstractObservation
from ._base import AbstractEnsembleFilter


def mean_preserving_rotation(key: PRNGKeyArray, N: int, dtype=float) -> Float[Array, "N N"]:
    """A random orthogonal ``R`` (N × N) with ``R 1 = 1``, Haar-distributed on that group.

    ``R = H diag(1, Q) H`` with ``Q`` Haar-random in O(N-1) (QR of a Gaussian matrix with
    the signs of R's diagonal fixed; Mezzadri 2007) and ``H`` the Householder reflection
    that maps the first unit vector to ``1 / √N``.
    """
    if not isinstance(N, int) or N < 2:
        raise ValueError(f"A rotation of the members needs N >= 2 members, got {N!r}.")
    Q, R = jnp.linalg.qr(jax.random.normal(key, (N - 1, N - 1), dtype=dtype))
    Q = Q * jnp.where(jnp.diag(R) < 0, -1.0, 1.0)[None, :]
    v = jnp.zeros(N, dtype).at[0].set(1.0) - jnp.full(N, 1.0 / jnp.sqrt(N), dtype)
    H = jnp.eye(N, dtype=dtype) - 2.0 * jnp.outer(v, v) / jnp.dot(v, v)
    D = jnp.eye(N, dtype=dtype).at[1:, 1:].set(Q)
    return H @ D @ H


class Rotated(AbstractEnsembleFilter):
    """Any ensemble filter, its analysis anomalies then rotated at random (mean-preserving).

    ``E_a ← x̄_a + R (E_a - x̄_a)`` with a fresh [`mean_preserving_rotation`][] each cycle,
    drawn from the cycle's key: the analysis mean and covariance are unchanged, and
    the same key gives the same members. It wraps the filter's update, so the filter's
    own inflation runs as before (the rotation commutes with multiplicative inflation
    and RTPS; with RTPP the analysis part of the mix is the rotated one). DAPPER's
    ``EnKF('Sqrt', ..., rot=True)`` is ``Rotated(ETKF(...))``.

    **Arguments:**

    - `filter`: the ensemble filter to wrap (ETKF, EnKF-N, EnKF, LETKF, ...).
    """

    filter: AbstractEnsembleFilter

    def __check_init__(self):
        if not isinstance(self.filter, AbstractEnsembleFilter):
            raise TypeError(
                f"`filter` must be an ensemble filter such as ETKF(), got {type(self.filter)}."
            )

    @property
    def inflation(self):
        return self.filter.inflation

    @property
    def min_ensemble_size(self) -> int:
        return self.filter.min_ensemble_size

    def update(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        update_key, rotation_key = jax.random.split(key)
        E = self.filter.update(E, y, observation, update_key)
        mean = E.mean(axis=0)
        R = mean_preserving_rotation(rotation_key, E.shape[0], E.dtype)
        return mean[None, :] + R @ (E - mean[None, :])
