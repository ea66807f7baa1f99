"""3D-Var: the analysis is the BLUE, and the cost functional is what it says."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.observe import (
    AbstractObservation,
    AbstractObservationError,
    CorrelatedGaussianError,
    GaussianError,
    IndexObservation,
    LinearObservation,
)
from hybridda.variational import ThreeDVarCost, Var3D

from ..filters.helpers import analyse, random_spd

KEY = jax.random.key(60)
N_STATE = 5


def blue(x_b, B, H, R, y):
    """Best linear unbiased estimate x_b + B Hᵀ (H B Hᵀ + R)⁻¹ (y - H x_b)."""
    return x_b + B @ H.T @ np.linalg.solve(H @ B @ H.T + R, y - H @ x_b)


def linear_problem(seed, correlated=True):
    rng = np.random.default_rng(seed)
    x_b = rng.standard_normal(N_STATE)
    B = random_spd(rng, N_STATE)
    if correlated:
        H = rng.standard_normal((4, N_STATE))
        R = random_spd(rng, 4, jitter=0.2)
        observation = LinearObservation(H, CorrelatedGaussianError(R))
    else:
        indices = np.array([0, 1, 3])
        std = np.array([0.5, 1.0, 0.8])
        H, R = np.eye(N_STATE)[indices], np.diag(std**2)
        observation = IndexObservation(indices, N_STATE, GaussianError(std))
    y = H @ x_b + rng.standard_normal(H.shape[0]) * 2
    return x_b, B, H, R, observation, y


@pytest.mark.parametrize("correlated", [True, False])
def test_analysis_is_the_blue(correlated):
    x_b, B, H, R, observation, y = linear_problem(61, correlated)
    E_a = analyse(Var3D(B), jnp.asarray(x_b)[None, :], jnp.asarray(y), observation, KEY)
    assert E_a.shape == (1, N_STATE)
    np.testing.assert_allclose(E_a[0], blue(x_b, B, H, R, y), rtol=0, atol=1e-10)


def test_ensemble_rows_share_the_increment_of_their_mean():
    x_b, B, H, R, observation, y = linear_problem(62)
    rng = np.random.default_rng(62)
    E = jnp.asarray(x_b[None, :] + rng.standard_normal((3, N_STATE)))
    E_a = analyse(Var3D(B), E, jnp.asarray(y), observation, KEY)
    mean = np.asarray(E).mean(axis=0)
    increment = blue(mean, B, H, R, y) - mean
    np.testing.assert_allclose(E_a - E, np.broadcast_to(increment, E.shape), atol=1e-10)


def numpy_cost(x, x_b, B, H, R, y):
    dx, r = x - x_b, y - H @ x
    return 0.5 * dx @ np.linalg.solve(B, dx) + 0.5 * r @ np.linalg.solve(R, r)


def test_cost_and_gradient_match_numpy_and_vanish_at_the_analysis():
    x_b, B, H, R, observation, y = linear_problem(63)
    cost = ThreeDVarCost(jnp.asarray(x_b), B, observation, jnp.asarray(y))
    rng = np.random.default_rng(63)
    for _ in range(3):
        x = x_b + rng.standard_normal(N_STATE)
        np.testing.assert_allclose(cost(jnp.asarray(x)), numpy_cost(x, x_b, B, H, R, y), rtol=1e-12)
        gradient = np.linalg.solve(B, x - x_b) - H.T @ np.linalg.solve(R, y - H @ x)
        np.testing.assert_allclose(jax.grad(cost)(jnp.asarray(x)), gradient, rtol=1e-10)
    x_a = analyse(Var3D(B), jnp.asarray(x_b)[None, :], jnp.asarray(y), observation, KEY)[0]
    scale = np.linalg.norm(jax.grad(cost)(jnp.asarray(x_b)))
    assert np.linalg.norm(jax.grad(cost)(x_a)) < 1e-10 * scale
    # the minimum: any other point costs more
    for _ in range(3):
        assert cost(x_a + 1e-3 * jnp.asarray(rng.standard_normal(N_STATE))) > cost(x_a)


def test_missing_values_equal_reduced_problem():
    x_b, B, H, R, observation, y = linear_problem(64)
    kept = np.array([True, False, True, True])
    y_nan = jnp.where(jnp.asarray(kept), jnp.asarray(y), jnp.nan)
    reduced = LinearObservation(H[kept], CorrelatedGaussianError(R[np.ix_(kept, kept)]))
    E_b = jnp.asarray(x_b)[None, :]
    E_nan = analyse(Var3D(B), E_b, y_nan, observation, KEY)
    E_reduced = analyse(Var3D(B), E_b, jnp.asarray(y[kept]), reduced, KEY)
    np.testing.assert_allclose(E_nan, E_reduced, rtol=0, atol=1e-11)
    expected = blue(x_b, B, H[kept], R[np.ix_(kept, kept)], y[kept])
    np.testing.assert_allclose(E_nan[0], expected, atol=1e-10)
    # the cost ignores the missing entry too
    x = jnp.asarray(x_b + 0.3)
    full = ThreeDVarCost(jnp.asarray(x_b), B, observation, y_nan)
    part = ThreeDVarCost(jnp.asarray(x_b), B, reduced, jnp.asarray(y[kept]))
    np.testing.assert_allclose(full(x), part(x), rtol=1e-12)
    np.testing.assert_allclose(
        full(x), numpy_cost(np.asarray(x), x_b, B, H[kept], R[np.ix_(kept, kept)], y[kept])
    )


class SquaredObservation(AbstractObservation):
    """A nonlinear operator for the test: ``y = x[indices]²``."""

    indices: jnp.ndarray
    state_size: int = eqx.field(static=True)
    error: AbstractObservationError

    @property
    def obs_size(self) -> int:
        return self.indices.shape[0]

    def __call__(self, x):
        return x[self.indices] ** 2

    def locations(self, state_coordinates):
        return state_coordinates[self.indices]


def test_nonlinear_operator_is_linearised_at_the_background():
    # One Gauss-Newton step: the BLUE with H = ∂h/∂x (x_b) and innovation y - h(x_b).
    rng = np.random.default_rng(65)
    x_b = 1.0 + rng.uniform(size=N_STATE)
    B = random_spd(rng, N_STATE)
    indices = np.array([0, 2, 4])
    observation = SquaredObservation(jnp.asarray(indices), N_STATE, GaussianError(0.3))
    y = x_b[indices] ** 2 + 0.5
    H = np.zeros((3, N_STATE))
    H[np.arange(3), indices] = 2 * x_b[indices]
    increment = B @ H.T @ np.linalg.solve(H @ B @ H.T + 0.09 * np.eye(3), y - x_b[indices] ** 2)
    E_a = analyse(Var3D(B), jnp.asarray(x_b)[None, :], jnp.asarray(y), observation, KEY)
    np.testing.assert_allclose(E_a[0], x_b + increment, atol=1e-10)


# ------------------------------------------------------------------------ bad input


def test_non_positive_definite_matrices_are_rejected():
    not_pd = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3, -1
    not_symmetric = np.array([[2.0, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="background_covariance.*positive definite"):
        Var3D(not_pd)
    with pytest.raises(ValueError, match="symmetric"):
        Var3D(not_symmetric)
    observation = IndexObservation([0], 2, GaussianError(1.0))
    with pytest.raises(ValueError, match="background_covariance.*positive definite"):
        ThreeDVarCost(jnp.zeros(2), not_pd, observation, jnp.zeros(1))
    with pytest.raises(ValueError, match="R .*positive definite"):
        CorrelatedGaussianError(not_pd)


@pytest.mark.parametrize("std", [0.0, -1.0, [1.0, -0.5]])
def test_non_positive_obs_error_std_is_rejected(std):
    with pytest.raises(ValueError, match="obs_error_std"):
        GaussianError(std)


def test_mismatched_shapes_are_rejected():
    x_b, B, H, R, observation, y = linear_problem(67)
    with pytest.raises(ValueError, match="`E`"):
        analyse(Var3D(B), jnp.zeros((1, N_STATE + 1)), jnp.asarray(y), observation, KEY)
    with pytest.raises(ValueError, match="`y`"):
        analyse(Var3D(B), jnp.asarray(x_b)[None, :], jnp.asarray(y[:2]), observation, KEY)


def test_infinite_observation_raises_under_jit():
    x_b, B, H, R, observation, y = linear_problem(68)
    y_inf = jnp.asarray(y).at[0].set(-jnp.inf)
    with pytest.raises(eqx.EquinoxRuntimeError, match="contains ±inf"):
        analyse(Var3D(B), jnp.asarray(x_b)[None, :], y_inf, observation, KEY)
