"""Random mean-preserving rotations: exact group properties; a rotated filter keeps the
analysis mean and covariance of the filter it wraps, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.filters import ETKF, EnKFN, Multiplicative, Rotated, mean_preserving_rotation
from hybridda.observe import GaussianError, every_kth
from tests.filters.helpers import sample_moments


@pytest.mark.parametrize("N", [2, 3, 10])
def test_rotation_is_orthogonal_and_keeps_the_ones_vector(N):
    R = np.asarray(mean_preserving_rotation(jax.random.key(N), N))
    np.testing.assert_allclose(R @ R.T, np.eye(N), atol=1e-13)
    np.testing.assert_allclose(R @ np.ones(N), np.ones(N), atol=1e-13)
    np.testing.assert_allclose(R.T @ np.ones(N), np.ones(N), atol=1e-13)


def test_rotations_are_haar_on_the_complement():
    # Haar on O(N-1) acting on the complement of 1: E[R] = projection onto span(1), i.e.
    # 11ᵀ/N (the average of a Haar-random orthogonal matrix is 0), within sampling error.
    N, draws = 4, 4000
    keys = jax.random.split(jax.random.key(0), draws)
    mean = np.asarray(jax.vmap(lambda k: mean_preserving_rotation(k, N))(keys)).mean(axis=0)
    np.testing.assert_allclose(mean, np.full((N, N), 1 / N), atol=4 / np.sqrt(draws))


@pytest.mark.parametrize("inner", [ETKF(inflation=Multiplicative(1.1)), EnKFN()])
def test_rotated_filter_keeps_mean_and_covariance_and_changes_members(inner):
    rng = np.random.default_rng(1)
    E = jnp.asarray(rng.standard_normal((8, 6)))
    observation = every_kth(6, 2, GaussianError(0.5))
    y = jnp.asarray(rng.standard_normal(3))
    key = jax.random.key(2)
    plain = inner.analysis(E, y, observation, key)
    rotated = Rotated(inner).analysis(E, y, observation, key)
    for a, b in zip(sample_moments(plain), sample_moments(rotated), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert np.max(np.abs(np.asarray(plain) - np.asarray(rotated))) > 1e-3
    again = Rotated(inner).analysis(E, y, observation, key)
    np.testing.assert_array_equal(np.asarray(rotated), np.asarray(again))  # same key


def test_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        mean_preserving_rotation(jax.random.key(0), 1)
    with pytest.raises(TypeError, match="filter"):  # (jaxtyping names it first in tests)
        Rotated("etkf")
