"""Stochastic (perturbed-observation) EnKF against the exact and localised Kalman updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.filters import EnKF, Localisation
from hybridda.observe import GaussianError, IndexObservation, every_kth, full_observation

from .helpers import (
    analyse,
    gaspari_cohn,
    gc_half_width,
    kalman_update,
    linear_gaussian_problem,
    relative_error,
    ring_distance,
    sample_moments,
)

KEY = jax.random.key(10)


@pytest.mark.parametrize("kind", ["full-diag", "every-2nd-diag", "linear-correlated"])
def test_mean_update_is_the_kalman_update(kind):
    # The perturbations are centred over members, so with a prior ensemble holding (m, P)
    # exactly the analysis mean is the Kalman mean for every draw and every N.
    problem = linear_gaussian_problem(kind, seed=11, members=7)
    m_a, _ = problem.kalman()
    for seed in range(3):
        E_a = analyse(EnKF(), problem.E, problem.y, problem.observation, jax.random.key(seed))
        np.testing.assert_allclose(np.asarray(E_a).mean(axis=0), m_a, rtol=0, atol=1e-10)


def _covariance_errors(kind, members, seeds=4):
    problem = linear_gaussian_problem(kind, seed=12, members=members)
    _, P_a = problem.kalman()
    keys = jax.random.split(jax.random.key(members), seeds)
    E_a = jax.vmap(lambda key: analyse(EnKF(), problem.E, problem.y, problem.observation, key))(
        keys
    )
    return np.array([relative_error(sample_moments(E)[1], P_a) for E in E_a])


@pytest.mark.parametrize("kind", ["every-2nd-diag", "linear-correlated"])
def test_covariance_converges_to_kalman_filter(kind):
    # Sampling error of the perturbed observations: O(1/sqrt(N)), a factor of 10 from
    # N=50 to N=5000. Wrongly scaled perturbations (e.g. R instead of R^{1/2}, or
    # ignoring the correlations of R) leave an O(1) bias that does not shrink.
    small = _covariance_errors(kind, 50).mean()
    large = _covariance_errors(kind, 5000).mean()
    assert large < 0.06, large
    assert small / large > 4, (small, large)


def test_missing_values_leave_the_mean_of_the_reduced_problem():
    problem = linear_gaussian_problem("full-diag", seed=13, members=8)
    kept = np.array([True, False, True, True, False])
    y_nan = jnp.where(jnp.asarray(kept), problem.y, jnp.nan)
    reduced = IndexObservation(
        np.flatnonzero(kept), 5, GaussianError(np.sqrt(np.diag(problem.R))[kept])
    )
    E_nan = analyse(EnKF(), problem.E, y_nan, problem.observation, KEY)
    E_reduced = analyse(EnKF(), problem.E, problem.y[kept], reduced, KEY)
    m_a, _ = kalman_update(
        problem.mean,
        problem.covariance,
        problem.H[kept],
        problem.R[np.ix_(kept, kept)],
        np.asarray(problem.y)[kept],
    )
    np.testing.assert_allclose(np.asarray(E_nan).mean(axis=0), m_a, atol=1e-10)
    np.testing.assert_allclose(np.asarray(E_reduced).mean(axis=0), m_a, atol=1e-10)
    assert np.all(np.isfinite(np.asarray(E_nan)))


def test_all_missing_leaves_ensemble_unchanged():
    problem = linear_gaussian_problem("every-2nd-diag", seed=14)
    y = jnp.full(problem.y.shape, jnp.nan)
    E_a = analyse(EnKF(), problem.E, y, problem.observation, KEY)
    np.testing.assert_allclose(E_a, problem.E, rtol=0, atol=1e-12)


def _ring_problem(seed, state_size=10, members=6):
    rng = np.random.default_rng(seed)
    E = jnp.asarray(rng.standard_normal((members, state_size)) + np.sin(np.arange(state_size)))
    observation = every_kth(state_size, 2, GaussianError(0.8))
    y = jnp.asarray(rng.standard_normal(observation.obs_size))
    return E, y, observation


def test_infinite_radius_equals_no_localisation():
    E, y, observation = _ring_problem(15)
    plain = analyse(EnKF(), E, y, observation, KEY)
    localised = analyse(EnKF(localisation=Localisation(float("inf"))), E, y, observation, KEY)
    np.testing.assert_allclose(localised, plain, rtol=0, atol=1e-12)


def test_localised_mean_is_the_localised_kalman_update():
    # Mean of the Houtekamer-Mitchell update: x̄ + (ρxy∘PHᵀ)(ρyy∘HPHᵀ + R)⁻¹(y - Hx̄),
    # independent of the (centred) perturbations.
    E, y, observation = _ring_problem(16, state_size=10, members=6)
    radius, n = 1.5, 10
    indices = np.asarray(observation.indices)
    mean, P = sample_moments(E)
    H = np.eye(n)[indices]
    R = 0.64 * np.eye(indices.size)
    c = gc_half_width(radius)
    rho_xy = np.array(
        [[gaspari_cohn(ring_distance(i, j, n), c) for j in indices] for i in range(n)]
    )
    rho_yy = rho_xy[indices]
    gain = (rho_xy * (P @ H.T)) @ np.linalg.inv(rho_yy * (H @ P @ H.T) + R)
    expected = mean + gain @ (np.asarray(y) - H @ mean)
    E_a = analyse(EnKF(localisation=Localisation(radius)), E, y, observation, KEY)
    np.testing.assert_allclose(np.asarray(E_a).mean(axis=0), expected, rtol=0, atol=1e-10)
    # not the global update: localisation matters with N = 6 < n = 10
    global_mean = np.asarray(analyse(EnKF(), E, y, observation, KEY)).mean(axis=0)
    assert np.abs(global_mean - expected).max() > 1e-3


def test_variables_beyond_the_taper_support_are_unchanged():
    n, radius = 20, 1.0
    rng = np.random.default_rng(17)
    E = jnp.asarray(rng.standard_normal((5, n)))
    observation = IndexObservation([0, 1], n, GaussianError(0.5))
    y = jnp.asarray([2.0, -2.0])
    E_a = np.asarray(analyse(EnKF(localisation=Localisation(radius)), E, y, observation, KEY))
    support = 2 * gc_half_width(radius)
    distance = np.array([min(ring_distance(i, 0, n), ring_distance(i, 1, n)) for i in range(n)])
    far = distance > support
    assert far.sum() >= 10
    np.testing.assert_allclose(E_a[:, far], np.asarray(E)[:, far], rtol=0, atol=1e-12)
    assert np.abs(E_a[:, ~far] - np.asarray(E)[:, ~far]).max() > 1e-3


def test_single_member_is_rejected():
    observation = full_observation(3, GaussianError(1.0))
    with pytest.raises(ValueError, match="ensemble_size"):
        analyse(EnKF(), jnp.ones((1, 3)), jnp.zeros(3), observation, KEY)
