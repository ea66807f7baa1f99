"""ETKF against the exact Kalman filter on linear-Gaussian problems."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.filters import ETKF
from hybridda.observe import (
    CorrelatedGaussianError,
    GaussianError,
    IndexObservation,
    LinearObservation,
    full_observation,
)

from .helpers import (
    OPERATORS,
    analyse,
    ensemble_with_moments,
    kalman_update,
    linear_gaussian_problem,
    random_spd,
    sample_moments,
)

KEY = jax.random.key(0)


@pytest.mark.parametrize("kind", OPERATORS)
def test_analysis_equals_kalman_filter(kind):
    problem = linear_gaussian_problem(kind, seed=1)
    E_a = analyse(ETKF(), problem.E, problem.y, problem.observation, KEY)
    mean, cov = sample_moments(E_a)
    m_a, P_a = problem.kalman()
    np.testing.assert_allclose(mean, m_a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov, P_a, rtol=0, atol=1e-10)


@pytest.mark.parametrize("members", [3, 9])
def test_analysis_anomalies_sum_to_zero(members):
    # The symmetric square root maps the centred prior anomalies to centred anomalies,
    # also for a rank-deficient ensemble (N <= n).
    rng = np.random.default_rng(2)
    E = jnp.asarray(rng.standard_normal((members, 6)) * 2.0 + 1.0)
    observation = full_observation(6, GaussianError(0.3))
    y = jnp.asarray(rng.standard_normal(6))
    E_a = np.asarray(analyse(ETKF(), E, y, observation, KEY))
    anomalies = E_a - E_a.mean(axis=0)
    # the weights w enter every member equally, so the ensemble mean moves by w @ A and
    # the anomalies are exactly T A, which sums to zero over members.
    np.testing.assert_allclose(anomalies.sum(axis=0), 0.0, atol=1e-12)
    # ... and the analysis does move the ensemble (the test above is not vacuous).
    assert np.abs(E_a - np.asarray(E)).max() > 1e-2


def test_tracks_kalman_filter_over_cycles():
    # A linear model x ← M x, assimilated manually cycle by cycle: once the ensemble
    # represents (m, P) exactly, linear propagation and the ETKF update keep it exact.
    rng = np.random.default_rng(3)
    n, members, cycles = 4, 8, 6
    M = np.eye(n) + 0.3 * rng.standard_normal((n, n))
    m, P = rng.standard_normal(n), random_spd(rng, n)
    indices = np.array([0, 3])
    R = random_spd(rng, indices.size, jitter=0.3)
    observation = IndexObservation(indices, n, CorrelatedGaussianError(R))
    H = np.eye(n)[indices]
    E = jnp.asarray(ensemble_with_moments(rng, m, P, members))
    truth = rng.standard_normal(n)
    for cycle in range(cycles):
        truth = M @ truth
        E = E @ M.T
        m, P = M @ m, M @ P @ M.T
        y = H @ truth + np.linalg.cholesky(R) @ rng.standard_normal(indices.size)
        E = analyse(ETKF(), E, jnp.asarray(y), observation, jax.random.fold_in(KEY, cycle))
        m, P = kalman_update(m, P, H, R, y)
        mean, cov = sample_moments(E)
        scale = max(1.0, np.abs(P).max())
        np.testing.assert_allclose(mean, m, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(cov, P, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("kind", ["full-diag", "index-correlated", "linear-correlated"])
def test_missing_values_equal_reduced_problem(kind):
    problem = linear_gaussian_problem(kind, seed=4)
    p = problem.H.shape[0]
    missing = np.zeros(p, dtype=bool)
    missing[[0, p - 1]] = True
    kept = ~missing
    y_nan = jnp.where(jnp.asarray(missing), jnp.nan, problem.y)
    if kind == "linear-correlated":
        error = CorrelatedGaussianError(problem.R[np.ix_(kept, kept)])
        reduced = LinearObservation(problem.H[kept], error)
    elif kind == "index-correlated":
        error = CorrelatedGaussianError(problem.R[np.ix_(kept, kept)])
        reduced = IndexObservation(problem.observation.indices[kept], 5, error)
    else:
        reduced = IndexObservation(
            problem.observation.indices[kept], 5, GaussianError(np.sqrt(np.diag(problem.R))[kept])
        )
    E_nan = analyse(ETKF(), problem.E, y_nan, problem.observation, KEY)
    E_reduced = analyse(ETKF(), problem.E, problem.y[kept], reduced, KEY)
    np.testing.assert_allclose(E_nan, E_reduced, rtol=0, atol=1e-11)
    # and that reduced analysis is the Kalman update with the kept observations only.
    m_a, P_a = kalman_update(
        problem.mean,
        problem.covariance,
        problem.H[kept],
        problem.R[np.ix_(kept, kept)],
        np.asarray(problem.y)[kept],
    )
    mean, cov = sample_moments(E_nan)
    np.testing.assert_allclose(mean, m_a, atol=1e-10)
    np.testing.assert_allclose(cov, P_a, atol=1e-10)


def test_all_missing_leaves_ensemble_unchanged():
    problem = linear_gaussian_problem("index-correlated", seed=5)
    y = jnp.full(problem.y.shape, jnp.nan)
    E_a = analyse(ETKF(), problem.E, y, problem.observation, KEY)
    np.testing.assert_allclose(E_a, problem.E, rtol=0, atol=1e-12)


def test_vmap_over_ensembles_matches_loop():
    problem = linear_gaussian_problem("linear-correlated", seed=6)
    rng = np.random.default_rng(6)
    ensembles = problem.E[None] + jnp.asarray(0.3 * rng.standard_normal((3, *problem.E.shape)))
    looped = jnp.stack([analyse(ETKF(), E, problem.y, problem.observation, KEY) for E in ensembles])
    batched = eqx.filter_jit(jax.vmap(ETKF().analysis, in_axes=(0, None, None, None)))(
        ensembles, problem.y, problem.observation, KEY
    )
    np.testing.assert_allclose(batched, looped, rtol=0, atol=1e-12)
    # (jit against eager execution is checked on whole cycles in tests/test_cycle.py)


@settings(max_examples=6, deadline=None)
@given(
    members=st.integers(2, 7),
    state_size=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_property_shape_mean_of_anomalies_and_dtype(members, state_size, seed, data):
    # Any ensemble size (including N <= n and N = 2), any observed subset.
    indices = data.draw(
        st.lists(st.integers(0, state_size - 1), min_size=1, max_size=state_size, unique=True)
    )
    rng = np.random.default_rng(seed)
    E = jnp.asarray(rng.standard_normal((members, state_size)))
    y = jnp.asarray(rng.standard_normal(len(indices)))
    observation = IndexObservation(np.sort(indices), state_size, GaussianError(1.0))
    E_a = analyse(ETKF(), E, y, observation, KEY)
    assert E_a.shape == E.shape and E_a.dtype == jnp.float64
    A_a = np.asarray(E_a - E_a.mean(axis=0, keepdims=True))
    np.testing.assert_allclose(A_a.sum(axis=0), 0.0, atol=1e-12)
    # The analysis shrinks the spread of every observed variable (never inflates).
    prior_var = np.var(np.asarray(E), axis=0)[np.sort(indices)]
    post_var = np.var(A_a, axis=0)[np.sort(indices)]
    assert np.all(post_var <= prior_var * (1 + 1e-12))


# ------------------------------------------------------------------------ bad input


def test_single_member_is_rejected():
    observation = full_observation(3, GaussianError(1.0))
    with pytest.raises(ValueError, match="ensemble_size"):
        analyse(ETKF(), jnp.ones((1, 3)), jnp.zeros(3), observation, KEY)


def test_state_size_mismatch_is_rejected():
    observation = full_observation(4, GaussianError(1.0))
    with pytest.raises(ValueError, match="state variables"):
        analyse(ETKF(), jnp.ones((5, 3)), jnp.zeros(4), observation, KEY)


def test_observation_length_mismatch_is_rejected():
    observation = full_observation(3, GaussianError(1.0))
    with pytest.raises(ValueError, match="`y`"):
        analyse(ETKF(), jnp.ones((5, 3)), jnp.zeros(4), observation, KEY)


def test_infinite_observation_raises_under_jit():
    problem = linear_gaussian_problem("full-diag", seed=7)
    y = problem.y.at[1].set(jnp.inf)
    with pytest.raises(eqx.EquinoxRuntimeError, match="contains ±inf"):
        eqx.filter_jit(ETKF().analysis)(problem.E, y, problem.observation, KEY)
    # plain jax.jit surfaces the same check as a JAX runtime error carrying the message
    with pytest.raises(RuntimeError, match="contains ±inf"):
        jax.jit(ETKF().analysis)(problem.E, y, problem.observation, KEY)


@pytest.mark.parametrize("missing", [False, True])
def test_shared_evidence_equals_the_generic_likelihood_with_its_derivatives(missing):
    # The ETKF's likelihood from its own S, d, C, w and C^{-1/2} must equal the generic
    # ensemble likelihood, and so must its gradient and a second derivative (the
    # log det's custom derivative uses the transform's C⁻¹ = T²/(N-1)).
    from hybridda.filters.evidence import ensemble_negative_log_likelihood

    rng = np.random.default_rng(21)
    n, members = 6, 5
    observation = LinearObservation(
        jnp.asarray(rng.standard_normal((4, n))),
        CorrelatedGaussianError(jnp.asarray(random_spd(rng, 4))),
    )
    E = jnp.asarray(rng.standard_normal((members, n)))
    y = jnp.asarray(rng.standard_normal(4))
    if missing:
        y = y.at[1].set(jnp.nan)
    key = jax.random.key(0)

    def shared(E):
        return ETKF().update_and_evidence(E, y, observation, key)[1]

    def generic(E):
        return ensemble_negative_log_likelihood(E, y, observation)

    direction = jnp.asarray(rng.standard_normal(E.shape))

    @jax.jit  # one program per likelihood (eagerly: ~300 single-operation compiles)
    def derivatives(E):
        def hvp(f):
            return jax.jvp(jax.grad(f), (E,), (direction,))[1]

        return [(f(E), jax.grad(f)(E), hvp(f)) for f in (shared, generic)]

    (value, gradient, hessian_vector), (value_g, gradient_g, hessian_vector_g) = derivatives(E)
    np.testing.assert_allclose(value, value_g, rtol=1e-12)
    np.testing.assert_allclose(gradient, gradient_g, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hessian_vector, hessian_vector_g, rtol=1e-7, atol=1e-10)
    # And the update is the ETKF's own.
    np.testing.assert_array_equal(
        ETKF().update_and_evidence(E, y, observation, key)[0],
        ETKF().update(E, y, observation, key),
    )
