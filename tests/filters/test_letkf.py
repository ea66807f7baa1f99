"""LETKF: global limit, locality, and a brute-force per-gridpoint NumPy LETKF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.filters import ETKF, LETKF, Localisation
from hybridda.observe import GaussianError, IndexObservation, every_kth, full_observation

from .helpers import (
    analyse,
    brute_force_letkf,
    gc_half_width,
    linear_gaussian_problem,
    ring_distance,
    sample_moments,
)

KEY = jax.random.key(30)
GLOBAL = Localisation(float("inf"))


def ring_ensemble(seed, state_size=12, members=6):
    rng = np.random.default_rng(seed)
    smooth = np.sin(2 * np.pi * np.arange(state_size) / state_size)
    return jnp.asarray(rng.standard_normal((members, state_size)) + 3 * smooth)


@pytest.mark.parametrize("kind", ["full-diag", "every-2nd-diag"])
def test_infinite_radius_equals_etkf_and_kalman_filter(kind):
    problem = linear_gaussian_problem(kind, seed=31)
    letkf = analyse(LETKF(GLOBAL), problem.E, problem.y, problem.observation, KEY)
    etkf = analyse(ETKF(), problem.E, problem.y, problem.observation, KEY)
    np.testing.assert_allclose(letkf, etkf, rtol=0, atol=1e-10)
    mean, cov = sample_moments(letkf)
    m_a, P_a = problem.kalman()
    np.testing.assert_allclose(mean, m_a, atol=1e-10)
    np.testing.assert_allclose(cov, P_a, atol=1e-10)


def test_infinite_radius_equals_etkf_with_few_members():
    E = ring_ensemble(32, state_size=12, members=4)
    observation = every_kth(12, 3, GaussianError(np.array([0.5, 1.0, 0.7, 2.0])))
    y = jnp.asarray([1.0, -2.0, 0.5, 3.0])
    letkf = analyse(LETKF(GLOBAL), E, y, observation, KEY)
    etkf = analyse(ETKF(), E, y, observation, KEY)
    np.testing.assert_allclose(letkf, etkf, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("radius", "indices", "std"),
    [(2.0, [0, 2, 3, 7, 10], 0.6), (1.0, list(range(12)), 1.0), (3.5, [5, 11], [0.4, 1.3])],
)
def test_equals_brute_force_per_gridpoint_letkf(radius, indices, std):
    E = ring_ensemble(33)
    rng = np.random.default_rng(34)
    y = jnp.asarray(rng.standard_normal(len(indices)) * 2)
    observation = IndexObservation(indices, 12, GaussianError(std))
    letkf = analyse(LETKF(Localisation(radius)), E, y, observation, KEY)
    expected = brute_force_letkf(E, y, np.array(indices), np.asarray(std), radius)
    np.testing.assert_allclose(letkf, expected, rtol=0, atol=1e-10)
    # localisation matters here: the global ETKF is different
    global_analysis = analyse(ETKF(), E, y, observation, KEY)
    assert np.abs(np.asarray(global_analysis) - expected).max() > 1e-3


def test_variables_beyond_the_taper_support_are_unchanged():
    n, radius = 40, 2.0
    E = ring_ensemble(35, state_size=n, members=7)
    indices = [0, 1, 2, 3, 4]
    observation = IndexObservation(indices, n, GaussianError(0.5))
    y = jnp.asarray([3.0, -3.0, 2.0, 1.0, -1.0])
    E_a = np.asarray(analyse(LETKF(Localisation(radius)), E, y, observation, KEY))
    support = 2 * gc_half_width(radius)
    distance = np.array([min(ring_distance(i, j, n) for j in indices) for i in range(n)])
    far = distance >= support
    assert far.sum() > 20
    # x̄ + T A with T = I for these points: unchanged up to round-off
    np.testing.assert_allclose(E_a[:, far], np.asarray(E)[:, far], rtol=0, atol=1e-12)
    near = distance < support - 0.5
    assert np.all(np.abs(E_a[:, near] - np.asarray(E)[:, near]).max(axis=0) > 1e-6)


def test_periodic_wraparound():
    # an observation at the last grid point updates the first one (distance 1 on the ring)
    n = 20
    E = ring_ensemble(36, state_size=n, members=5)
    observation = IndexObservation([n - 1], n, GaussianError(0.5))
    E_a = np.asarray(analyse(LETKF(Localisation(1.0)), E, jnp.asarray([5.0]), observation, KEY))
    assert np.abs(E_a[:, 0] - np.asarray(E)[:, 0]).max() > 1e-3
    np.testing.assert_allclose(E_a[:, n // 2], np.asarray(E)[:, n // 2], rtol=0, atol=1e-12)


def test_missing_values_equal_reduced_problem():
    E = ring_ensemble(37)
    observation = full_observation(12, GaussianError(0.8))
    rng = np.random.default_rng(37)
    y = jnp.asarray(rng.standard_normal(12))
    kept = np.ones(12, dtype=bool)
    kept[[1, 2, 6, 11]] = False
    y_nan = jnp.where(jnp.asarray(kept), y, jnp.nan)
    reduced = IndexObservation(np.flatnonzero(kept), 12, GaussianError(0.8))
    method = LETKF(Localisation(2.0))
    E_nan = analyse(method, E, y_nan, observation, KEY)
    E_reduced = analyse(method, E, y[kept], reduced, KEY)
    np.testing.assert_allclose(E_nan, E_reduced, rtol=0, atol=1e-11)
    expected = brute_force_letkf(E, y[kept], np.flatnonzero(kept), np.asarray(0.8), 2.0)
    np.testing.assert_allclose(E_nan, expected, rtol=0, atol=1e-10)


def test_single_member_is_rejected():
    observation = full_observation(4, GaussianError(1.0))
    with pytest.raises(ValueError, match="ensemble_size"):
        analyse(LETKF(Localisation(2.0)), jnp.ones((1, 4)), jnp.zeros(4), observation, KEY)


@pytest.mark.parametrize(
    ("radius", "indices", "missing"),
    [(2.0, [0, 2, 3, 7, 10], None), (1.0, list(range(12)), 4), (3.5, [5, 11], None)],
)
def test_local_domains_give_the_same_analysis(radius, indices, missing):
    E = ring_ensemble(35)
    rng = np.random.default_rng(36)
    y = rng.standard_normal(len(indices)) * 2
    if missing is not None:
        y[missing] = np.nan  # a missing observation in some domains
    observation = IndexObservation(indices, 12, GaussianError(0.8))
    localisation = Localisation(radius)
    domains = localisation.local_domains(observation)
    # Only the observations inside the taper's support: fewer than all p for small radii.
    support = 2 * gc_half_width(radius)
    gaps = np.abs(np.arange(12)[:, None] - np.asarray(indices)[None, :]) % 12
    distances = np.minimum(gaps, 12 - gaps)
    assert domains.indices.shape == (12, int(np.max(np.sum(distances < support, axis=1))))
    dense = analyse(LETKF(localisation), E, jnp.asarray(y), observation, KEY)
    local = analyse(LETKF(localisation, domains=domains), E, jnp.asarray(y), observation, KEY)
    np.testing.assert_allclose(local, dense, rtol=0, atol=1e-12)


def test_local_domains_reject_changing_networks_and_mismatched_sizes():
    from hybridda.observe import RandomSubsetObservation

    localisation = Localisation(2.0)
    network = RandomSubsetObservation(4, 12, GaussianError(1.0), jax.random.key(0))
    with pytest.raises(ValueError, match="change from cycle to cycle"):
        localisation.local_domains(network)
    domains = localisation.local_domains(every_kth(12, 2, GaussianError(1.0)))
    with pytest.raises(ValueError, match=r"built for 12 state variables and 6 observations"):
        analyse(
            LETKF(localisation, domains=domains),
            ring_ensemble(37),
            jnp.zeros(4),
            every_kth(12, 3, GaussianError(1.0)),
            KEY,
        )
