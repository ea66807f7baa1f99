"""Fixed-lag EnKS by lag augmentation: exact on a linear Gaussian problem."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda.dynamics import Lorenz96
from hybridda.filters import ETKF, LETKF, GaspariCohn, ensemble_smoother
from hybridda.observe import GaussianError, full_observation

from .helpers import linear_twin


class _Identity(eqx.Module):
    """Persistence ``x -> x`` with the ensemble-model interface (cycle length 1)."""

    cycle_length: float = 1.0

    def ensemble(self, E, t0=0.0):
        return E

    def __call__(self, x, t0=0.0):
        return x


def test_smoother_of_a_constant_is_the_bayesian_mean():
    # A constant scalar observed K times with R = 1 under a prior N(0, 1) (the initial
    # ensemble, exactly centred with unit variance): the posterior mean given all K
    # observations is Σ y / (K + 1). With lag >= K every smoothed state has seen every
    # observation, and the ETKF on a persistent linear model is the Kalman filter.
    init = jnp.array([[-1.0], [1.0]]) / jnp.sqrt(2.0)  # mean 0, unbiased variance 1
    y = jnp.array([[0.5], [1.5], [-0.25]])
    observation = full_observation(1, GaussianError(1.0))
    out = ensemble_smoother(_Identity(), observation, ETKF(), y, init, jax.random.key(0), lag=3)
    expected = float(jnp.sum(y)) / 4.0
    np.testing.assert_allclose(out.smoothed_mean[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(out.filter_mean[:, 0], [0.25, 2.0 / 3.0, 0.4375], rtol=1e-12)
    # Posterior variance 1 / (K + 1) at every time; a pair of consecutive states from
    # the same analysis is identical member by member (persistence, no model error).
    np.testing.assert_allclose(out.smoothed_spread, 0.5, rtol=1e-12)
    np.testing.assert_allclose(out.transition_start, out.transition_end, rtol=0, atol=0)
    assert out.transition_start.shape == (3, 2, 1) and out.times.shape == (4,)


@pytest.mark.parametrize("lag", [1, 2, 5])
def test_shapes_and_lag_one_filtering_end(lag):
    n, K, N = 8, 6, 5
    model = hybridda.Resolvent(Lorenz96(n), 0.05)
    observation = full_observation(n, GaussianError(1.0))
    truth = model.trajectory(jnp.arange(n, dtype=float), K)
    y = hybridda.synthesise_observations(observation, truth[1:], jax.random.key(1))
    init = hybridda.initial_ensemble(jax.random.key(2), truth[0], N)
    out = ensemble_smoother(model, observation, ETKF(), y, init, jax.random.key(3), lag=lag)
    assert out.transition_start.shape == (K, N, n) == out.transition_end.shape
    assert out.smoothed_mean.shape == (K + 1, n)
    # The last state has no future observation: its smoothed mean is the filter's.
    np.testing.assert_allclose(out.smoothed_mean[-1], out.filter_mean[-1], rtol=1e-12)
    if lag > 1:
        # Transitions taken from the same (final) window share their states: the end
        # of j is the start of j + 1, member by member.
        np.testing.assert_allclose(out.transition_end[-2], out.transition_start[-1], rtol=1e-12)


def test_rejects_local_filters_and_bad_lags():
    n = 8
    model = hybridda.Resolvent(Lorenz96(n), 0.05)
    observation = full_observation(n, GaussianError(1.0))
    init, y = jnp.zeros((4, n)), jnp.zeros((3, n))
    local = LETKF(localisation=hybridda.filters.Localisation(2.0, GaspariCohn()))
    with pytest.raises(ValueError, match="global filter"):
        ensemble_smoother(model, observation, local, y, init, jax.random.key(0), lag=2)
    with pytest.raises(ValueError, match="lag"):
        ensemble_smoother(model, observation, ETKF(), y, init, jax.random.key(0), lag=0)


# --------------------------------------------------------------- exact-answer oracle


def _kalman_smoother(M, H, R, Q, mean, covariance, y):
    """Exact Kalman filter + Rauch-Tung-Striebel smoother (NumPy), ``x_{k+1} = M x_k + η``.

    ``y[k]`` observes ``x_{k+1}``; the prior of ``x_0`` is ``N(mean, covariance)``.
    Returns the smoothed means and covariances of ``x_0..x_K`` and the cross
    covariances ``Cov(x_k, x_{k+1} | y)``.
    """
    K, n = y.shape[0], mean.shape[0]
    m_a, P_a, m_f, P_f = [mean], [covariance], [None], [None]
    for k in range(K):
        m, P = M @ m_a[-1], M @ P_a[-1] @ M.T + Q
        m_f.append(m)
        P_f.append(P)
        gain = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
        m_a.append(m + gain @ (y[k] - H @ m))
        P_a.append((np.eye(n) - gain @ H) @ P)
    m_s, P_s, cross = [m_a[-1]], [P_a[-1]], []
    for k in range(K - 1, -1, -1):
        G = P_a[k] @ M.T @ np.linalg.inv(P_f[k + 1])
        cross.append(G @ P_s[0])
        m_s.insert(0, m_a[k] + G @ (m_s[0] - m_f[k + 1]))
        P_s.insert(0, P_a[k] + G @ (P_s[0] - P_f[k + 1]) @ G.T)
    return np.array(m_s), np.array(P_s), np.array(cross[::-1])


def _fixed_lag_oracle(twin, Q, lag):
    """State ``j`` given the first ``min(j + lag, K)`` observations; pairs from the same data."""
    y = np.asarray(twin.y)
    K, n = y.shape[0], twin.mean.shape[0]
    R = twin.obs_std**2 * np.eye(twin.H.shape[0])
    means, variances = np.empty((K + 1, n)), np.empty((K + 1, n))
    pair_cross = np.empty((K, n, n))
    for j in range(K + 1):
        seen = min(j + lag, K)
        m_s, P_s, cross = _kalman_smoother(
            twin.M, twin.H, R, Q, twin.mean, twin.covariance, y[:seen]
        )
        means[j], variances[j] = m_s[j], np.diag(P_s[j])
        if j < K:
            # Pair j comes from the last window holding x_j: the same observations.
            pair_cross[j] = cross[j]
    return means, variances, pair_cross


@pytest.mark.parametrize("lag", [1, 3, 12])
def test_deterministic_smoother_equals_the_kalman_smoother(lag):
    # Linear model, no model error, ETKF with an initial ensemble holding the prior's
    # moments exactly and more members than variables: the ensemble is exact, so the
    # fixed-lag EnKS equals the Kalman (RTS) smoother given the same observations, in
    # its means, variances and the covariance of consecutive-state pairs.
    twin = linear_twin(seed=3, n=4, members=7, cycles=12)
    out = ensemble_smoother(
        twin.model, twin.observation, ETKF(), twin.y, twin.E0, jax.random.key(0), lag=lag
    )
    means, variances, cross = _fixed_lag_oracle(twin, np.zeros((4, 4)), lag)
    np.testing.assert_allclose(out.smoothed_mean, means, atol=1e-9)
    np.testing.assert_allclose(out.smoothed_spread, np.sqrt(variances.mean(-1)), atol=1e-9)
    start = out.transition_start - out.transition_start.mean(1, keepdims=True)
    end = out.transition_end - out.transition_end.mean(1, keepdims=True)
    sample_cross = np.einsum("kni,knj->kij", start, end) / (start.shape[1] - 1)
    np.testing.assert_allclose(sample_cross, cross, atol=1e-9)


def test_stochastic_model_error_matches_the_kalman_smoother():
    # With additive model error Q = σ² I the forecast adds σ ξ to the newest block only;
    # with many members the smoothed means and variances approach the exact fixed-lag
    # Kalman smoother's (Monte Carlo error ~ 1/√N; largest of 33 mean errors 0.17).
    twin = linear_twin(seed=4, n=3, members=500, cycles=10)
    sigma, lag = 0.5, 3
    out = ensemble_smoother(
        twin.model,
        twin.observation,
        ETKF(),
        twin.y,
        twin.E0,
        jax.random.key(1),
        lag=lag,
        model_error_std=sigma,
    )
    means, variances, _ = _fixed_lag_oracle(twin, sigma**2 * np.eye(3), lag)
    np.testing.assert_allclose(out.smoothed_mean, means, atol=0.25)
    np.testing.assert_allclose(out.smoothed_spread, np.sqrt(variances.mean(-1)), rtol=0.1)
    # Without the model error in the smoother, the variances are clearly too small.
    deterministic = ensemble_smoother(
        twin.model, twin.observation, ETKF(), twin.y, twin.E0, jax.random.key(1), lag=lag
    )
    assert np.all(deterministic.smoothed_spread[5:] < 0.7 * np.sqrt(variances.mean(-1))[5:])
