"""Inflation modules: multiplicative (prior / posterior), RTPS and RTPP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.filters import (
    ETKF,
    RTPP,
    RTPS,
    Multiplicative,
    NoInflation,
    multiplicative,
)

from .helpers import analyse, linear_gaussian_problem, sample_moments

KEY = jax.random.key(40)


def random_ensemble(seed, members=6, state_size=4):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((members, state_size)) * [1.0, 2.0, 0.5, 3.0] + 1.5)


def anomalies(E):
    E = np.asarray(E)
    return E - E.mean(axis=0, keepdims=True)


def test_multiplicative_scales_covariance_by_factor_squared_and_keeps_mean():
    E = random_ensemble(41)
    factor = 1.3
    inflated = Multiplicative(factor).posterior(E, E)
    mean, cov = sample_moments(inflated)
    mean0, cov0 = sample_moments(E)
    np.testing.assert_allclose(mean, mean0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, factor**2 * cov0, rtol=1e-12)
    prior_inflated = Multiplicative(factor, when="prior").prior(E)
    np.testing.assert_allclose(prior_inflated, inflated, rtol=0, atol=1e-12)


def test_placement_prior_or_posterior_only_acts_there():
    E = random_ensemble(42)
    E2 = random_ensemble(43)
    posterior = Multiplicative(1.5)  # default: posterior
    prior = Multiplicative(1.5, when="prior")
    np.testing.assert_array_equal(posterior.prior(E), E)
    np.testing.assert_array_equal(prior.posterior(E2, E), E)
    np.testing.assert_array_equal(NoInflation().posterior(E2, E), E)


def test_prior_inflation_in_etkf_is_kalman_filter_with_inflated_prior():
    problem = linear_gaussian_problem("linear-correlated", seed=44)
    factor = 1.2
    E_a = analyse(
        ETKF(inflation=Multiplicative(factor, when="prior")),
        problem.E,
        problem.y,
        problem.observation,
        KEY,
    )
    m_a, P_a = problem.kalman(prior_scale=factor**2)
    mean, cov = sample_moments(E_a)
    np.testing.assert_allclose(mean, m_a, atol=1e-10)
    np.testing.assert_allclose(cov, P_a, atol=1e-10)


def test_posterior_inflation_in_etkf_inflates_the_kalman_analysis():
    problem = linear_gaussian_problem("index-correlated", seed=45)
    factor = 1.2
    E_a = analyse(
        ETKF(inflation=Multiplicative(factor)), problem.E, problem.y, problem.observation, KEY
    )
    m_a, P_a = problem.kalman()
    mean, cov = sample_moments(E_a)
    np.testing.assert_allclose(mean, m_a, atol=1e-10)
    np.testing.assert_allclose(cov, factor**2 * P_a, atol=1e-10)


def test_inflation_factor_can_be_traced_and_vmapped():
    problem = linear_gaussian_problem("full-diag", seed=46)
    factors = jnp.asarray([0.9, 1.0, 1.1])

    def run(factor):
        method = ETKF(inflation=Multiplicative(factor, when="prior"))
        return method.analysis(problem.E, problem.y, problem.observation, KEY)

    batched = jax.jit(jax.vmap(run))(factors)  # the factor traced twice over
    for factor, E_a in zip(np.asarray(factors), batched, strict=True):
        m_a, P_a = problem.kalman(prior_scale=factor**2)
        np.testing.assert_allclose(sample_moments(E_a)[1], P_a, atol=1e-10)


# --------------------------------------------------------------------- relaxation


def prior_and_analysis(seed):
    problem = linear_gaussian_problem("full-diag", seed=seed)
    E_a = analyse(ETKF(), problem.E, problem.y, problem.observation, KEY)
    return problem.E, E_a


def test_rtps_alpha_one_restores_prior_spread_and_keeps_mean():
    E_b, E_a = prior_and_analysis(47)
    relaxed = RTPS(1.0).posterior(E_b, E_a)
    np.testing.assert_allclose(np.std(relaxed, axis=0), np.std(E_b, axis=0), rtol=1e-12)
    np.testing.assert_allclose(relaxed.mean(axis=0), E_a.mean(axis=0), atol=1e-12)
    assert np.all(np.std(E_a, axis=0) < 0.99 * np.std(E_b, axis=0))  # there was a change


def test_rtps_interpolates_spreads_and_alpha_zero_is_a_no_op():
    E_b, E_a = prior_and_analysis(48)
    np.testing.assert_allclose(RTPS(0.0).posterior(E_b, E_a), E_a, rtol=0, atol=1e-12)
    alpha = 0.3
    relaxed = RTPS(alpha).posterior(E_b, E_a)
    # Whitaker and Hamill (2012), eq. 3: σ = (1 - α) σa + α σb, variable by variable,
    # with the analysis anomalies only rescaled (correlations untouched).
    expected = (1 - alpha) * np.std(E_a, axis=0) + alpha * np.std(E_b, axis=0)
    np.testing.assert_allclose(np.std(relaxed, axis=0), expected, rtol=1e-12)
    ratio = anomalies(relaxed) / anomalies(E_a)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1], ratio.shape), rtol=1e-10)


def test_rtps_leaves_a_collapsed_variable_alone():
    E_b = random_ensemble(49)
    E_a = E_b.at[:, 2].set(0.7)  # zero analysis spread in variable 2
    relaxed = np.asarray(RTPS(1.0).posterior(E_b, E_a))
    assert np.all(np.isfinite(relaxed))
    np.testing.assert_allclose(relaxed[:, 2], 0.7, rtol=0, atol=1e-14)


def test_rtpp_relaxes_anomalies_towards_prior():
    E_b, E_a = prior_and_analysis(50)
    np.testing.assert_allclose(RTPP(0.0).posterior(E_b, E_a), E_a, rtol=0, atol=1e-12)
    restored = RTPP(1.0).posterior(E_b, E_a)
    np.testing.assert_allclose(anomalies(restored), anomalies(E_b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(restored.mean(axis=0), E_a.mean(axis=0), atol=1e-12)
    alpha = 0.4
    relaxed = RTPP(alpha).posterior(E_b, E_a)
    expected = (1 - alpha) * anomalies(E_a) + alpha * anomalies(E_b)
    np.testing.assert_allclose(anomalies(relaxed), expected, rtol=0, atol=1e-12)


def test_relaxation_inside_a_filter_uses_the_prior_ensemble():
    problem = linear_gaussian_problem("every-2nd-diag", seed=51)
    E_rtpp = analyse(ETKF(inflation=RTPP(1.0)), problem.E, problem.y, problem.observation, KEY)
    m_a, _ = problem.kalman()
    np.testing.assert_allclose(np.asarray(E_rtpp).mean(axis=0), m_a, atol=1e-10)
    np.testing.assert_allclose(anomalies(E_rtpp), anomalies(problem.E), atol=1e-10)


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize("factor", [0.0, -1.02, float("nan"), float("inf")])
def test_non_positive_factor_is_rejected(factor):
    with pytest.raises(ValueError, match="inflation"):
        Multiplicative(factor)


def test_bad_placement_and_alpha_are_rejected():
    # TypeError when the annotations are checked at runtime (as in this suite), else ValueError
    with pytest.raises((ValueError, TypeError), match="when"):
        Multiplicative(1.02, when="both")
    with pytest.raises(ValueError, match="alpha"):
        RTPS(1.5)
    with pytest.raises(ValueError, match="alpha"):
        RTPP(-0.1)


def test_multiplicative_factory():
    assert isinstance(multiplicative(None), NoInflation)
    assert isinstance(multiplicative(1.0), NoInflation)
    inflation = multiplicative(1.02)
    assert isinstance(inflation, Multiplicative) and float(inflation.factor) == 1.02
    assert inflation.when == "posterior"
