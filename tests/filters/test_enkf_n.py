"""EnKF-N (dual form): the adaptive inflation minimises the dual cost; the update is a KF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

from hybridda.filters import EnKFN
from hybridda.observe import GaussianError, IndexObservation, full_observation

from .helpers import analyse, kalman_update, linear_gaussian_problem, sample_moments

KEY = jax.random.key(20)


def whitened_statistics(problem):
    """``S`` (N × p, unscaled anomalies of H(E) whitened by R^{-1/2}) and whitened ``d``."""
    E = np.asarray(problem.E)
    HE = E @ problem.H.T
    Y = HE - HE.mean(axis=0)
    L = np.linalg.cholesky(problem.R)  # any square root: the cost is invariant to it
    S = np.linalg.solve(L, Y.T).T
    d = np.linalg.solve(L, np.asarray(problem.y) - HE.mean(axis=0))
    return S, d


def dual_cost(S, d, members, boost=1.0, nullity=0):
    """The EnKF-N dual cost D(λ) of the class docstring, from scratch (SVD of S).

    Bocquet (2011) with the prior-mode correction of Bocquet, Raanes and Hannart (2015,
    eq. 36) as in DAPPER: ``εN = (N+1)/N``, ``cL = (N+g)/(N-1)``, both multiplied /
    divided by ``sqrt(mode^{I-KH})`` with ``I-KH ≈ mean((N-1)/(s² + N-1))`` and then
    boosted by `boost`.
    """
    N1 = members - 1
    _, s, Ut = np.linalg.svd(S, full_matrices=False)
    du = Ut @ d  # d in the basis of S's right singular vectors
    s2_padded = np.zeros(members)
    s2_padded[: s.size] = s**2
    eN = (members + 1) / members
    cL = (members + nullity) / N1
    mode = eN / cL
    one_minus_kh = np.mean(N1 / (s2_padded + N1))
    correction = np.sqrt(mode**one_minus_kh)
    eN, cL = eN / correction * boost, cL * correction * boost

    def cost(lam):
        return np.sum(du**2 / (lam**2 * s**2 + N1)) + eN / lam**2 + cL * np.log(lam**2)

    def derivative(lam):
        return (
            -2 * lam * np.sum(s**2 * du**2 / (lam**2 * s**2 + N1) ** 2)
            - 2 * eN / lam**3
            + 2 * cL / lam
        )

    cost.derivative = derivative
    return cost, (eN, cL, one_minus_kh)


def library_inflation(method, problem):
    S, d = whitened_statistics(problem)
    eigenvalues, V = np.linalg.eigh(S @ S.T)
    members = S.shape[0]
    lam = method.inflation_factor(jnp.asarray(eigenvalues), jnp.asarray(V.T @ S @ d), members)
    return float(lam)


def shifted_problem(kind, innovation_scale, seed=21, members=9, state_size=5):
    """A linear problem whose observation sits `innovation_scale` prior-stds away."""
    problem = linear_gaussian_problem(kind, seed=seed, members=members, state_size=state_size)
    predicted = problem.H @ problem.mean
    spread = np.sqrt(np.diag(problem.H @ problem.covariance @ problem.H.T + problem.R))
    direction = np.where(np.arange(predicted.size) % 2 == 0, 1.0, -1.0)
    problem.y = jnp.asarray(predicted + innovation_scale * spread * direction)
    return problem


CASES = [("full-diag", 0.2), ("full-diag", 4.0), ("linear-correlated", 3.0)]


def reference_inflation(cost):
    """The minimiser of the dual cost: a bracketing minimiser, polished by a root of D'."""
    rough = minimize_scalar(cost, bounds=(1e-3, 1e2), method="bounded", options={"xatol": 1e-10})
    # the cost is flat near its minimum, so take the root of the analytic derivative
    lam = brentq(cost.derivative, 0.5 * rough.x, 2 * rough.x, xtol=1e-14, rtol=1e-14)
    np.testing.assert_allclose(lam, rough.x, rtol=1e-6)  # the same minimum
    return lam


def test_derivative_of_reference_cost():
    # the oracle's analytic derivative against central differences of the oracle's cost
    problem = shifted_problem("linear-correlated", 3.0)
    cost, _ = dual_cost(*whitened_statistics(problem), problem.E.shape[0])
    for lam in (0.5, 1.0, 3.0):
        h = 1e-6 * lam
        np.testing.assert_allclose(
            (cost(lam + h) - cost(lam - h)) / (2 * h), cost.derivative(lam), rtol=1e-6
        )


@pytest.mark.parametrize(("kind", "innovation_scale"), CASES)
def test_inflation_minimises_the_dual_cost(kind, innovation_scale):
    # Newton's method should land on the minimiser to near machine precision in its
    # 20 iterations ("converges in < 10", says the docstring).
    problem = shifted_problem(kind, innovation_scale)
    S, d = whitened_statistics(problem)
    cost, _ = dual_cost(S, d, S.shape[0])
    lam = library_inflation(EnKFN(), problem)
    reference = reference_inflation(cost)
    np.testing.assert_allclose(lam, reference, rtol=1e-8)
    # stationary and a minimum
    assert abs(cost.derivative(lam)) < 1e-6 * abs(cost.derivative(1.5 * lam))
    assert cost(0.99 * lam) > cost(lam) and cost(1.01 * lam) > cost(lam)


def test_inflation_reacts_to_the_innovation():
    # a large innovation calls for inflation, none at all for (slight) deflation:
    # the prior mode (N+1)(N-1)/N² of λ² is below 1.
    assert library_inflation(EnKFN(), shifted_problem("full-diag", 4.0)) > 1.2
    assert library_inflation(EnKFN(), shifted_problem("full-diag", 0.0)) < 1.0


@pytest.mark.parametrize(("kind", "innovation_scale"), CASES)
def test_analysis_is_kalman_filter_with_inflated_prior(kind, innovation_scale):
    problem = shifted_problem(kind, innovation_scale)
    lam = library_inflation(EnKFN(), problem)
    E_a = analyse(EnKFN(), problem.E, problem.y, problem.observation, KEY)
    m_a, P_a = problem.kalman(prior_scale=lam**2)
    mean, cov = sample_moments(E_a)
    np.testing.assert_allclose(mean, m_a, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cov, P_a, rtol=0, atol=1e-9)


def test_large_hyperprior_boost_gives_the_corrected_prior_mode():
    # With xN → ∞ the data term is negligible: λ² → εN / cL after the mode correction,
    # i.e. mode^(1 - (I-KH)), not the uncorrected mode (N+1)(N-1)/N².
    members = 3
    problem = shifted_problem("full-diag", 2.0, members=members, seed=22, state_size=2)
    problem.E = problem.E * 3.0  # a wide prior: informative observations, small I-KH
    S, d = whitened_statistics(problem)
    _, (eN, cL, one_minus_kh) = dual_cost(S, d, members, boost=1e8)
    mode = (members + 1) * (members - 1) / members**2
    expected = np.sqrt(mode ** (1 - one_minus_kh))
    np.testing.assert_allclose(np.sqrt(eN / cL), expected, rtol=1e-12)
    assert abs(expected - np.sqrt(mode)) > 1e-2  # the correction is visible
    lam = library_inflation(EnKFN(hyperprior_boost=1e8), problem)
    np.testing.assert_allclose(lam, expected, rtol=1e-6)


def test_missing_values_equal_reduced_problem():
    problem = shifted_problem("full-diag", 2.0, seed=23)
    kept = np.array([True, True, False, True, False])
    y_nan = jnp.where(jnp.asarray(kept), problem.y, jnp.nan)
    std = np.sqrt(np.diag(problem.R))[kept]
    reduced = IndexObservation(np.flatnonzero(kept), 5, GaussianError(std))
    E_nan = analyse(EnKFN(), problem.E, y_nan, problem.observation, KEY)
    E_reduced = analyse(EnKFN(), problem.E, problem.y[kept], reduced, KEY)
    np.testing.assert_allclose(E_nan, E_reduced, rtol=0, atol=1e-11)
    assert np.abs(np.asarray(E_nan) - np.asarray(problem.E)).max() > 1e-2
    # and the reduced problem's λ is the one the analysis used
    lam_problem = shifted_problem("full-diag", 2.0, seed=23)
    lam_problem.y, lam_problem.H = problem.y[kept], problem.H[kept]
    lam_problem.R = problem.R[np.ix_(kept, kept)]
    lam = library_inflation(EnKFN(), lam_problem)
    m_a, P_a = kalman_update(
        problem.mean, lam**2 * problem.covariance, lam_problem.H, lam_problem.R, lam_problem.y
    )
    mean, cov = sample_moments(E_nan)
    np.testing.assert_allclose(mean, m_a, atol=1e-9)
    np.testing.assert_allclose(cov, P_a, atol=1e-9)


def test_gradient_with_repeated_eigenvalues_matches_finite_differences():
    # 5 of 40 variables observed with N = 24: S Sᵀ has rank 5, so eigenvalue 0 repeats
    # 19 times. Differentiating through eigh gave a finite but wrong gradient with
    # respect to E here (half the central difference); λ's implicit derivative and the
    # Lyapunov-form derivative of C^{-1/2} have no eigenvalue differences.
    members, n = 24, 40
    observation = IndexObservation(np.arange(0, n, 8), n, GaussianError(0.5))
    keys = jax.random.split(jax.random.key(24), 5)
    E = 2.0 + jax.random.normal(keys[0], (members, n))
    y = 2.0 + 1.5 * jax.random.normal(keys[1], (observation.obs_size,))
    weights = jax.random.normal(keys[2], (members, n))

    def loss(E, y, boost):
        method = EnKFN(hyperprior_boost=boost)
        return jnp.sum(weights * jnp.tanh(method.analysis(E, y, observation, KEY)))

    boost = jnp.asarray(1.5)
    gradients = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(E, y, boost)
    directions = (
        jax.random.normal(keys[3], E.shape),
        jax.random.normal(keys[4], y.shape),
        jnp.asarray(1.0),
    )
    compiled = jax.jit(loss)
    h = 1e-6
    for argument, (gradient, direction) in enumerate(zip(gradients, directions, strict=True)):
        assert np.all(np.isfinite(gradient))
        plus, minus = [E, y, boost], [E, y, boost]
        plus[argument] = plus[argument] + h * direction
        minus[argument] = minus[argument] - h * direction
        central = (compiled(*plus) - compiled(*minus)) / (2 * h)
        assert abs(float(central)) > 1e-2  # a real sensitivity
        assert float(jnp.sum(gradient * direction)) == pytest.approx(float(central), rel=1e-6)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="hyperprior_boost"):
        EnKFN(hyperprior_boost=0.0)
    with pytest.raises(ValueError, match="nullity"):
        EnKFN(nullity=-1)
    observation = full_observation(3, GaussianError(1.0))
    with pytest.raises(ValueError, match="ensemble_size"):
        analyse(EnKFN(), jnp.ones((1, 3)), jnp.zeros(3), observation, KEY)
