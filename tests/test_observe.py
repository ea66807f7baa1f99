"""Observation operators and Gaussian error models against NumPy/SciPy oracles."""

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.observe import (
    CorrelatedGaussianError,
    GaussianError,
    IndexObservation,
    LinearObservation,
    RandomSubsetObservation,
    check_observations,
    every_kth,
    full_observation,
    gaussian_error,
    observed_mask,
)

UNIT = GaussianError(1.0)


# Jitted entry points: one compilation per shape instead of one per primitive.
@eqx.filter_jit
def whiten(error, innovation, mask):
    return error.whiten(innovation, mask)


@eqx.filter_jit
def log_density(error, innovation, mask):
    return error.log_density(innovation, mask)


def random_spd(size, seed):
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(size, size))
    return factor @ factor.T + 0.5 * np.eye(size)


def random_mask(size, seed):
    mask = np.random.default_rng(seed).random(size) < 0.6
    mask[seed % size] = True  # at least one observed entry
    return mask


# ---------------------------------------------------------------- operators


def test_full_observation_is_identity():
    x = jnp.arange(7.0) ** 2
    observation = full_observation(7, UNIT)
    assert observation.obs_size == 7
    np.testing.assert_array_equal(observation(x), x)
    np.testing.assert_array_equal(observation.linearise(x), np.eye(7))


@pytest.mark.parametrize("k, offset", [(1, 0), (3, 0), (3, 1), (4, 3), (10, 9)])
def test_every_kth_selects_entries(k, offset):
    n = 10
    x = np.random.default_rng(k).normal(size=n)
    observation = every_kth(n, k, UNIT, offset=offset)
    np.testing.assert_array_equal(observation.indices, np.arange(n)[offset::k])
    np.testing.assert_array_equal(observation(jnp.asarray(x)), x[offset::k])
    assert observation.obs_size == len(x[offset::k])


def test_index_observation_selects_entries_and_batches():
    rng = np.random.default_rng(0)
    indices = [4, 1, 7, 7]
    observation = IndexObservation(indices, 9, UNIT)
    x = rng.normal(size=9)
    np.testing.assert_array_equal(observation(jnp.asarray(x)), x[indices])
    ensemble = rng.normal(size=(5, 9))
    np.testing.assert_array_equal(observation(jnp.asarray(ensemble)), ensemble[:, indices])
    np.testing.assert_array_equal(observation.linearise(jnp.asarray(x)), np.eye(9)[indices])
    coordinates = jnp.arange(9.0) * 0.5
    np.testing.assert_array_equal(observation.locations(coordinates), 0.5 * np.array(indices))


def test_linear_observation_is_matrix_product():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(3, 6))
    observation = LinearObservation(matrix, UNIT, obs_locations=jnp.array([0.0, 2.0, 4.0]))
    x = rng.normal(size=6)
    np.testing.assert_allclose(observation(jnp.asarray(x)), matrix @ x, rtol=1e-14)
    ensemble = rng.normal(size=(4, 6))
    np.testing.assert_allclose(observation(jnp.asarray(ensemble)), ensemble @ matrix.T, rtol=1e-14)
    np.testing.assert_array_equal(observation.linearise(jnp.asarray(x)), matrix)
    assert (observation.obs_size, observation.state_size) == (3, 6)
    np.testing.assert_array_equal(observation.locations(jnp.arange(6.0)), [0.0, 2.0, 4.0])


def test_linear_observation_without_locations_cannot_localise():
    observation = LinearObservation(np.ones((2, 4)), UNIT)
    with pytest.raises(ValueError, match="obs_locations"):
        observation.locations(jnp.arange(4.0))


def test_sample_is_operator_plus_error_draw():
    observation = every_kth(8, 2, GaussianError(0.3))
    x = jnp.arange(8.0)
    key = jax.random.key(3)
    noise = observation.sample(x, key) - observation(x)
    np.testing.assert_allclose(noise, 0.3 * jax.random.normal(key, (4,)), rtol=1e-12)


# --------------------------------------------------------- random networks


N_VARIABLES, N_OBSERVED = 20, 10  # one shape for every random-network test: fewer compilations


@eqx.filter_jit
def indices_at(network, cycle):
    return network.at_cycle(cycle).indices


def test_random_subset_draws_distinct_sorted_indices():
    network = RandomSubsetObservation(N_OBSERVED, N_VARIABLES, UNIT, jax.random.key(0))
    draws = []
    for cycle in range(6):
        indices = np.asarray(indices_at(network, jnp.asarray(cycle)))
        assert indices.shape == (N_OBSERVED,)
        assert np.all(np.diff(indices) > 0)  # sorted and distinct
        assert indices.min() >= 0 and indices.max() < N_VARIABLES
        draws.append(indices)
    # Same (key, cycle): same network.
    np.testing.assert_array_equal(indices_at(network, jnp.asarray(4)), draws[4])
    again = RandomSubsetObservation(N_OBSERVED, N_VARIABLES, UNIT, jax.random.key(0))
    np.testing.assert_array_equal(indices_at(again, jnp.asarray(2)), draws[2])
    # Different cycles, and a different key, give different networks.
    for first in range(6):
        for second in range(first + 1, 6):
            assert not np.array_equal(draws[first], draws[second])
    other = RandomSubsetObservation(N_OBSERVED, N_VARIABLES, UNIT, jax.random.key(1))
    assert not np.array_equal(indices_at(other, jnp.asarray(0)), draws[0])


def test_random_subset_eager_jit_and_vmap_agree():
    network = RandomSubsetObservation(N_OBSERVED, N_VARIABLES, UNIT, jax.random.key(4))
    x = jnp.arange(float(N_VARIABLES)) * 3.0
    eager = network.at_cycle(3)
    assert isinstance(eager, IndexObservation)
    np.testing.assert_array_equal(eager(x), x[eager.indices])
    jitted = jax.jit(lambda cycle: network.at_cycle(cycle)(x))(3)
    np.testing.assert_array_equal(jitted, x[eager.indices])
    mapped = jax.vmap(lambda cycle: network.at_cycle(cycle).indices)(jnp.arange(6))
    assert mapped.shape == (6, N_OBSERVED)
    np.testing.assert_array_equal(mapped[3], eager.indices)
    for cycle in range(6):
        np.testing.assert_array_equal(mapped[cycle], indices_at(network, jnp.asarray(cycle)))


def test_random_subset_is_uniform_over_variables():
    # Each variable is chosen with probability obs_count / n per cycle.
    cycles = 4000
    network = RandomSubsetObservation(N_OBSERVED, N_VARIABLES, UNIT, jax.random.key(5))
    indices = jax.vmap(lambda cycle: network.at_cycle(cycle).indices)(jnp.arange(cycles))
    frequency = np.bincount(np.asarray(indices).reshape(-1), minlength=N_VARIABLES)
    p = N_OBSERVED / N_VARIABLES
    standard_deviation = np.sqrt(cycles * p * (1 - p))
    assert np.all(np.abs(frequency - cycles * p) < 5 * standard_deviation), frequency


def test_random_subset_all_variables():
    network = RandomSubsetObservation(6, 6, UNIT, jax.random.key(6))
    np.testing.assert_array_equal(network.at_cycle(3).indices, np.arange(6))


def test_random_subset_has_no_fixed_operator():
    network = RandomSubsetObservation(2, 6, UNIT, jax.random.key(7))
    assert network.obs_size == 2
    with pytest.raises(TypeError, match="at_cycle"):
        network(jnp.zeros(6))
    with pytest.raises(TypeError, match="at_cycle"):
        network.locations(jnp.zeros(6))


# ------------------------------------------------------- uncorrelated errors


@pytest.mark.parametrize("vector_std", [False, True])
def test_gaussian_whiten_divides_by_std_and_zeroes_missing(vector_std):
    rng = np.random.default_rng(8)
    p = 6
    std = rng.uniform(0.2, 3.0, size=p) if vector_std else 0.7
    innovation = rng.normal(size=p)
    mask = random_mask(p, seed=8)
    innovation_with_nan = np.where(mask, innovation, np.nan)
    white = whiten(GaussianError(std), jnp.asarray(innovation_with_nan), jnp.asarray(mask))
    np.testing.assert_allclose(white, np.where(mask, innovation / std, 0.0), rtol=1e-14)
    # A batch of innovations is whitened row by row.
    batch = rng.normal(size=(3, p))
    batch_white = whiten(GaussianError(std), jnp.asarray(batch), jnp.asarray(mask))
    np.testing.assert_allclose(batch_white, np.where(mask[None, :], batch / std, 0.0), rtol=1e-14)


def test_gaussian_covariance_and_log_density():
    rng = np.random.default_rng(9)
    p = 6
    std = rng.uniform(0.2, 3.0, size=p)
    error = GaussianError(std)
    np.testing.assert_allclose(error.covariance(p), np.diag(std**2), rtol=1e-14)
    innovation = rng.normal(size=p)
    mask = random_mask(p, seed=9)
    expected = scipy.stats.multivariate_normal.logpdf(
        innovation[mask], mean=np.zeros(mask.sum()), cov=np.diag(std[mask] ** 2)
    )
    result = log_density(error, jnp.asarray(innovation), jnp.asarray(mask))
    np.testing.assert_allclose(result, expected, rtol=1e-12)


@pytest.mark.parametrize("missing", [False, True], ids=["all-observed", "nan-missing"])
@pytest.mark.parametrize("vector_std", [True, False], ids=["vector-std", "scalar-std"])
def test_gaussian_log_density_gradient_with_respect_to_std(vector_std, missing):
    # std is a learnable array leaf. d/dσ_i [-d_i² / (2 σ_i²) - log σ_i] = d_i² / σ_i³ - 1 / σ_i
    # on observed entries; a missing (NaN) entry must contribute nothing, not NaN.
    p = 6
    rng = np.random.default_rng(12)
    std = rng.uniform(0.5, 2.0, size=p) if vector_std else np.asarray(1.3)
    innovation = rng.normal(size=p)
    mask = random_mask(p, seed=12) if missing else np.ones(p, dtype=bool)
    assert missing == (not mask.all())
    innovation_with_nan = jnp.asarray(np.where(mask, innovation, np.nan))

    def scalar(error):
        return error.log_density(innovation_with_nan, jnp.asarray(mask))

    gradient = np.asarray(eqx.filter_jit(eqx.filter_grad(scalar))(GaussianError(std)).std)
    sigma = np.broadcast_to(std, (p,))
    per_entry = np.where(mask, innovation**2 / sigma**3 - 1.0 / sigma, 0.0)
    expected = per_entry if vector_std else per_entry.sum()
    assert np.all(np.isfinite(gradient)), gradient
    np.testing.assert_allclose(gradient, expected, rtol=1e-12, atol=1e-14)


def test_gaussian_sample_statistics():
    draws = 20000
    std = jnp.array([0.5, 1.0, 2.0, 0.1, 3.0, 1.5])
    keys = jax.random.split(jax.random.key(10), draws)
    samples = np.asarray(jax.vmap(lambda key: GaussianError(std).sample(key, 6))(keys))
    # Sample variance of a Gaussian has relative standard error sqrt(2 / draws) ≈ 0.01.
    np.testing.assert_allclose(samples.var(axis=0), std**2, rtol=5 * np.sqrt(2 / draws))
    assert np.all(np.abs(samples.mean(axis=0)) < 5 * std / np.sqrt(draws))


def test_gaussian_std_size_mismatch_raises():
    with pytest.raises(ValueError, match="`std` has 3 entries"):
        GaussianError(jnp.ones(3)).covariance(4)


# --------------------------------------------------------- correlated errors


@pytest.mark.parametrize("seed", range(6))
def test_correlated_whiten_gives_mahalanobis_norm_on_observed_subset(seed):
    p = 6
    R = random_spd(p, seed)
    rng = np.random.default_rng(100 + seed)
    innovation = rng.normal(size=p)
    mask = random_mask(p, seed) if seed else np.ones(p, dtype=bool)
    observed_R = R[np.ix_(mask, mask)]
    observed_d = innovation[mask]
    # Unobserved entries carry NaN: they must not leak into the result.
    innovation_with_nan = np.where(mask, innovation, np.nan)

    white = np.asarray(
        whiten(CorrelatedGaussianError(R), jnp.asarray(innovation_with_nan), jnp.asarray(mask))
    )
    assert np.all(np.isfinite(white))
    np.testing.assert_array_equal(white[~mask], 0.0)
    mahalanobis = observed_d @ np.linalg.solve(observed_R, observed_d)
    np.testing.assert_allclose(np.sum(white**2), mahalanobis, rtol=1e-11)
    # The observed entries are L⁻¹ d_obs with L the Cholesky factor of R_obs.
    factor = np.linalg.cholesky(observed_R)
    np.testing.assert_allclose(
        white[mask], scipy.linalg.solve_triangular(factor, observed_d, lower=True), rtol=1e-11
    )


def test_correlated_whiten_batches_rows():
    p = 6
    R = random_spd(p, 20)
    mask = jnp.asarray(random_mask(p, 21))
    batch = jnp.asarray(np.random.default_rng(22).normal(size=(4, p)))
    error = CorrelatedGaussianError(R)
    batched = whiten(error, batch, mask)
    assert batched.shape == (4, p)
    for row in range(4):
        np.testing.assert_allclose(batched[row], whiten(error, batch[row], mask), rtol=1e-13)


@pytest.mark.parametrize("seed", range(4))
def test_correlated_log_density_matches_scipy(seed):
    p = 6
    R = random_spd(p, 30 + seed)
    innovation = np.random.default_rng(40 + seed).normal(size=p)
    mask = random_mask(p, seed) if seed else np.ones(p, dtype=bool)
    expected = scipy.stats.multivariate_normal.logpdf(
        innovation[mask], mean=np.zeros(mask.sum()), cov=R[np.ix_(mask, mask)]
    )
    innovation_with_nan = np.where(mask, innovation, np.nan)
    result = log_density(
        CorrelatedGaussianError(R), jnp.asarray(innovation_with_nan), jnp.asarray(mask)
    )
    np.testing.assert_allclose(result, expected, rtol=1e-11)


def test_log_density_gradient_is_minus_precision_times_innovation():
    # d/dd log N(d; 0, R_obs) = -R_obs⁻¹ d_obs; unobserved (NaN) entries get zero gradient.
    p = 6
    R = random_spd(p, 70)
    mask = random_mask(p, 71)
    innovation = np.random.default_rng(72).normal(size=p)
    innovation_with_nan = jnp.asarray(np.where(mask, innovation, np.nan))
    gradient = np.asarray(
        eqx.filter_jit(jax.grad(log_density, argnums=1))(
            CorrelatedGaussianError(R), innovation_with_nan, jnp.asarray(mask)
        )
    )
    expected = np.zeros(p)
    expected[mask] = -np.linalg.solve(R[np.ix_(mask, mask)], innovation[mask])
    np.testing.assert_allclose(gradient, expected, rtol=1e-11, atol=1e-13)


def test_correlated_log_density_derivative_along_symmetric_direction():
    # d/dε log N(d; 0, R + ε S) at ε = 0 equals ½ tr((R_o⁻¹ d dᵀ R_o⁻¹ - R_o⁻¹) S_oo) over
    # the observed block, for any symmetric direction S; unobserved entries carry NaN.
    p = 6
    R = random_spd(p, 80)
    rng = np.random.default_rng(81)
    direction = rng.normal(size=(p, p))
    direction = direction + direction.T
    mask = random_mask(p, 82)
    innovation = rng.normal(size=p)
    innovation_with_nan = jnp.asarray(np.where(mask, innovation, np.nan))

    def scalar(error):
        return error.log_density(innovation_with_nan, jnp.asarray(mask))

    gradient = eqx.filter_jit(eqx.filter_grad(scalar))(CorrelatedGaussianError(R)).matrix
    directional = float(jnp.sum(gradient * direction))

    observed_precision = np.linalg.inv(R[np.ix_(mask, mask)])
    weighted = observed_precision @ innovation[mask]
    expected = 0.5 * np.trace(
        (np.outer(weighted, weighted) - observed_precision) @ direction[np.ix_(mask, mask)]
    )
    np.testing.assert_allclose(directional, expected, rtol=1e-10)


def test_correlated_sample_has_covariance_R():
    p, draws = 6, 20000
    R = random_spd(p, 50)
    error = CorrelatedGaussianError(R)
    np.testing.assert_array_equal(error.covariance(p), R)
    keys = jax.random.split(jax.random.key(11), draws)
    samples = np.asarray(jax.vmap(lambda key: error.sample(key, p))(keys))
    sample_covariance = np.cov(samples, rowvar=False)
    # Standard error of a sample covariance entry: sqrt((R_ii R_jj + R_ij²) / draws).
    diagonal = np.diag(R)
    standard_error = np.sqrt((diagonal[:, None] * diagonal[None, :] + R**2) / draws)
    assert np.all(np.abs(sample_covariance - R) < 5 * standard_error)
    assert np.all(np.abs(samples.mean(axis=0)) < 5 * np.sqrt(diagonal / draws))


def test_correlated_size_mismatch_raises():
    error = CorrelatedGaussianError(random_spd(3, 60))
    with pytest.raises(ValueError, match="R is 3"):
        error.whiten(jnp.zeros(4), jnp.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="R is 3"):
        error.sample(jax.random.key(0), 4)


@settings(max_examples=20, deadline=None)
@given(
    std=hnp.arrays(np.float64, (6,), elements=st.floats(0.1, 10.0)),
    innovation=hnp.arrays(np.float64, (6,), elements=st.floats(-100.0, 100.0)),
    mask=hnp.arrays(np.bool_, (6,)),
)
def test_diagonal_correlated_error_equals_uncorrelated(std, innovation, mask):
    correlated = CorrelatedGaussianError(np.diag(std**2))
    uncorrelated = GaussianError(std)
    d, m = jnp.asarray(innovation), jnp.asarray(mask)
    np.testing.assert_allclose(
        whiten(correlated, d, m), whiten(uncorrelated, d, m), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        log_density(correlated, d, m), log_density(uncorrelated, d, m), rtol=1e-12, atol=1e-12
    )


# ------------------------------------------------------------ missing data


def test_observed_mask_marks_nan_as_missing():
    y = jnp.array([1.0, jnp.nan, -2.0, jnp.nan])
    np.testing.assert_array_equal(observed_mask(y), [True, False, True, False])


@pytest.mark.parametrize("transform", [jax.jit, eqx.filter_jit], ids=["jax.jit", "filter_jit"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_check_observations_rejects_inf_under_jit(transform, bad):
    checked = transform(lambda y: check_observations(y, name="y_seq"))
    with pytest.raises(RuntimeError, match="y_seq` contains ±inf"):
        jax.block_until_ready(checked(jnp.array([[1.0, 2.0], [bad, 0.0]])))


def test_check_observations_passes_nan_and_finite_values():
    checked = jax.jit(check_observations)
    y = jnp.array([1.0, jnp.nan, -3.0])
    np.testing.assert_array_equal(checked(y), y)
    np.testing.assert_array_equal(check_observations(jnp.array([0.5, 2.0])), [0.5, 2.0])


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("std", [-1.0, 0.0, np.nan, [1.0, 0.0, 2.0], [1.0, -0.1]])
def test_non_positive_std_raises(std):
    with pytest.raises(ValueError, match="obs_error_std"):
        GaussianError(std)


def test_non_symmetric_covariance_raises():
    with pytest.raises(ValueError, match="symmetric"):
        CorrelatedGaussianError(np.array([[2.0, 0.5], [0.1, 2.0]]))


@pytest.mark.parametrize(
    "matrix",
    [np.array([[1.0, 2.0], [2.0, 1.0]]), np.zeros((2, 2)), np.diag([1.0, -1.0, 2.0])],
)
def test_non_positive_definite_covariance_raises(matrix):
    with pytest.raises(ValueError, match="positive definite"):
        CorrelatedGaussianError(matrix)


def test_gaussian_error_factory():
    assert isinstance(gaussian_error(std=0.5), GaussianError)
    assert isinstance(gaussian_error(covariance=np.eye(3)), CorrelatedGaussianError)
    with pytest.raises(ValueError, match="exactly one"):
        gaussian_error()
    with pytest.raises(ValueError, match="exactly one"):
        gaussian_error(std=1.0, covariance=np.eye(2))


@pytest.mark.parametrize("indices", [[0, 10], [-1, 3], [12]])
def test_out_of_range_indices_raise(indices):
    with pytest.raises(ValueError, match="`indices` must lie in"):
        IndexObservation(indices, 10, UNIT)


@pytest.mark.parametrize("k", [0, -2])
def test_every_kth_with_k_below_one_raises(k):
    with pytest.raises(ValueError, match=r"`k` \(--obs-every\) must be >= 1"):
        every_kth(10, k, UNIT)


def test_every_kth_with_offset_out_of_range_raises():
    with pytest.raises(ValueError, match="offset"):
        every_kth(10, 2, UNIT, offset=10)


@pytest.mark.parametrize("obs_count", [0, 41])
def test_random_subset_obs_count_out_of_range_raises(obs_count):
    with pytest.raises(ValueError, match="`obs_count`"):
        RandomSubsetObservation(obs_count, 40, UNIT, jax.random.key(0))
