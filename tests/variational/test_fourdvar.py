"""4D-Var costs and minimisers against exact linear-Gaussian answers and finite differences."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda as hda
from hybridda.dynamics import Lorenz96
from hybridda.observe import GaussianError, every_kth, full_observation
from hybridda.variational import (
    StrongFourDVar,
    WeakFourDVar,
    gauss_newton,
    incremental,
    quasi_newton,
)
from tests.filters.helpers import LinearDynamics

N_STATE, WINDOW, OBS_STD = 6, 4, 0.5


@pytest.fixture(scope="module")
def linear():
    A = 0.3 * jax.random.normal(jax.random.key(0), (N_STATE, N_STATE))
    model = hda.Resolvent(LinearDynamics(A), dt=0.1, steps_per_cycle=2)
    observation = every_kth(N_STATE, 2, GaussianError(OBS_STD))
    background = jax.random.normal(jax.random.key(1), (N_STATE,))
    B = 0.5 * jnp.eye(N_STATE) + 0.3 * jnp.ones((N_STATE, N_STATE))
    truth = background + jax.random.normal(jax.random.key(2), (N_STATE,))
    states = hda.simulate(model, truth, WINDOW)[1:]
    y = jax.vmap(observation)(states)
    y = y + OBS_STD * jax.random.normal(jax.random.key(3), y.shape)
    y = y.at[1, 0].set(jnp.nan)  # one missing value
    M = np.asarray(jax.jacfwd(model)(background))  # exact: the resolvent is linear
    H = np.asarray(observation.linearise(background))
    return model, observation, background, B, np.asarray(y), M, H


def _blue_initial_state(background, B, y, M, H):
    """x0 given all window observations: the Kalman smoother / BLUE with G = [H M^k]."""
    rows, values = [], []
    for k in range(y.shape[0]):
        Gk = H @ np.linalg.matrix_power(M, k + 1)
        for i in range(y.shape[1]):
            if np.isfinite(y[k, i]):
                rows.append(Gk[i])
                values.append(y[k, i])
    G, d = np.array(rows), np.array(values)
    R = OBS_STD**2 * np.eye(len(d))
    B, xb = np.asarray(B), np.asarray(background)
    return xb + B @ G.T @ np.linalg.solve(G @ B @ G.T + R, d - G @ xb)


def _kalman_filter_mean(background, B, y, M, H):
    """Sequential exact Kalman filter over the window: mean at its end."""
    m, P = np.asarray(background), np.asarray(B)
    for k in range(y.shape[0]):
        m, P = M @ m, M @ P @ M.T
        observed = np.isfinite(y[k])
        Hk, yk = H[observed], y[k][observed]
        K = P @ Hk.T @ np.linalg.inv(Hk @ P @ Hk.T + OBS_STD**2 * np.eye(len(yk)))
        m, P = m + K @ (yk - Hk @ m), (np.eye(len(m)) - K @ Hk) @ P
    return m


def test_strong_4dvar_minimisers_equal_the_kalman_smoother(linear):
    model, observation, background, B, y, M, H = linear
    cost = StrongFourDVar(model, observation, jnp.asarray(y), background, B)
    expected = jnp.asarray(_blue_initial_state(background, B, y, M, H))
    results = {  # compiled: eagerly every loop and operation compiles on its own
        "gauss-newton": eqx.filter_jit(gauss_newton)(cost, background, max_iterations=3),
        "incremental": eqx.filter_jit(incremental)(cost, background, outer_loops=2, inner_loops=30),
        "quasi-newton": eqx.filter_jit(quasi_newton)(
            cost, background, max_iterations=80, tolerance=1e-12
        ),
    }
    for name, result in results.items():
        np.testing.assert_allclose(result.control, expected, atol=1e-10, err_msg=name)
        assert bool(result.converged), name
    # Linear problem: one Gauss-Newton step is exact, the next changes nothing.
    costs = np.asarray(results["gauss-newton"].costs)
    assert costs[1] == pytest.approx(costs[-1], rel=1e-12)
    assert costs[0] > costs[1]
    # The window-end state of the smoother is the Kalman filter's analysis mean.
    end = cost.trajectory(results["gauss-newton"].control)[-1]
    np.testing.assert_allclose(end, _kalman_filter_mean(background, B, y, M, H), atol=1e-10)
    # The gradient vanishes at the minimiser; the terms add up.
    assert float(jnp.max(jnp.abs(jax.grad(cost)(expected)))) < 1e-10
    total = cost.background_term(expected) + cost.observation_term(expected)
    assert float(total) == pytest.approx(float(cost(expected)), rel=1e-13)
    assert float(cost.background_term(background)) == 0.0


def test_weak_4dvar_equals_its_augmented_blue_and_tends_to_strong(linear):
    model, observation, background, B, y, M, H = linear
    strong = _blue_initial_state(background, B, y, M, H)
    errors = []
    # One program for the three Q (eagerly, each call compiles its loops anew).
    minimise = eqx.filter_jit(
        lambda cost: gauss_newton(
            cost, cost.initial_control(), max_iterations=3, inner_iterations=400
        )
    )
    for q in (1e-2, 1e-4, 1e-6):
        Q = q * (jnp.eye(N_STATE) + 0.2 * jnp.ones((N_STATE, N_STATE)))
        cost = WeakFourDVar(model, observation, jnp.asarray(y), background, B, Q)
        result = minimise(cost)
        assert bool(result.converged)
        # Oracle: the weak problem is a BLUE for the augmented control z = (x0, η1..ηL),
        # x_k = M^k x0 + Σ_{j<=k} M^(k-j) η_j, prior z ~ N((xb, 0), blockdiag(B, Q, ..., Q)).
        n, L = N_STATE, WINDOW
        rows, values = [], []
        for k in range(L):
            block = [H @ np.linalg.matrix_power(M, k + 1)]
            block += [
                H @ np.linalg.matrix_power(M, k - j) if j <= k else np.zeros_like(H)
                for j in range(L)
            ]
            Gk = np.concatenate(block, axis=1)
            for i in range(y.shape[1]):
                if np.isfinite(y[k, i]):
                    rows.append(Gk[i])
                    values.append(y[k, i])
        G, d = np.array(rows), np.array(values)
        prior_cov = np.zeros((n * (L + 1), n * (L + 1)))
        prior_cov[:n, :n] = B
        for j in range(L):
            prior_cov[n * (j + 1) : n * (j + 2), n * (j + 1) : n * (j + 2)] = Q
        prior_mean = np.concatenate([np.asarray(background), np.zeros(n * L)])
        R = OBS_STD**2 * np.eye(len(d))
        z = prior_mean + prior_cov @ G.T @ np.linalg.solve(
            G @ prior_cov @ G.T + R, d - G @ prior_mean
        )
        np.testing.assert_allclose(result.control[0], z[:n], atol=1e-9)
        np.testing.assert_allclose(result.control[1].ravel(), z[n:], atol=1e-9)
        errors.append(float(np.max(np.abs(np.asarray(result.control[0]) - strong))))
    # Q → 0: the weak solution converges to the strong one, linearly in Q.
    assert errors[0] > 10 * errors[1] > 100 * errors[2]


@pytest.fixture(scope="module")
def lorenz_window():
    n, L = 10, 5
    model = hda.Resolvent(Lorenz96(n=n), dt=0.05, steps_per_cycle=2)
    x_true = hda.spin_up(model, model.dynamics.default_initial_state(), 300)
    observation = every_kth(n, 2, GaussianError(1.0))
    y = hda.synthesise_observations(
        observation, hda.simulate(model, x_true, L)[1:], jax.random.key(4)
    )
    background = x_true + jax.random.normal(jax.random.key(5), (n,))
    return model, observation, y, background, jnp.eye(n), x_true


def _central_difference(f, x, direction, eps=1e-6):
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


def test_cost_gradients_match_finite_differences(lorenz_window):
    model, observation, y, background, B, _ = lorenz_window
    strong = StrongFourDVar(model, observation, y, background, B)
    x = background + 0.3
    direction = jax.random.normal(jax.random.key(6), x.shape)
    # Compiled: one program per cost for its value and gradient (eagerly, each of
    # their ~100 operations compiles on its own).
    value_and_grad = eqx.filter_jit(lambda cost, control: jax.value_and_grad(cost)(control))
    gradient = value_and_grad(strong, x)[1]
    difference = _central_difference(lambda z: value_and_grad(strong, z)[0], x, direction)
    assert float(gradient @ direction) == pytest.approx(float(difference), rel=1e-6)
    weak = WeakFourDVar(model, observation, y, background, B, 0.1 * jnp.eye(10))
    control = (x, 0.1 * jax.random.normal(jax.random.key(7), (5, 10)))
    flat_direction = (direction, jax.random.normal(jax.random.key(8), (5, 10)))
    grad_weak = value_and_grad(weak, control)[1]
    along = sum(float(jnp.sum(g * d)) for g, d in zip(grad_weak, flat_direction, strict=True))

    def along_line(eps):
        point = jax.tree.map(lambda c, d: c + eps * d, control, flat_direction)
        return value_and_grad(weak, point)[0]

    fd = (along_line(1e-6) - along_line(-1e-6)) / 2e-6
    assert along == pytest.approx(float(fd), rel=1e-6)


def test_nonlinear_window_minimisers_agree_and_decrease_the_cost(lorenz_window):
    model, observation, y, background, B, x_true = lorenz_window
    cost = StrongFourDVar(model, observation, y, background, B)
    # Gauss-Newton converges only linearly here (large residuals at the minimum).
    gn = eqx.filter_jit(gauss_newton)(cost, background, max_iterations=40)
    inc = eqx.filter_jit(incremental)(cost, background, outer_loops=6, inner_loops=40)
    qn = eqx.filter_jit(quasi_newton)(cost, background, max_iterations=100, tolerance=1e-10)
    assert np.all(np.diff(np.asarray(gn.costs)) <= 1e-12)  # monotone
    assert bool(gn.converged) and bool(qn.converged)
    np.testing.assert_allclose(qn.control, gn.control, atol=1e-5)
    # Six outer loops of incremental 4D-Var reach the minimum cost to 1e-6.
    assert float(inc.costs[-1]) == pytest.approx(float(gn.costs[-1]), rel=1e-6)
    # The analysis is much closer to the truth than the background (here 1.46 vs 2.82).
    analysis_error = float(jnp.linalg.norm(gn.control - x_true))
    assert analysis_error < 0.6 * float(jnp.linalg.norm(background - x_true))


def _cholesky_calls(function, *args) -> int:
    """Cholesky factorisations in the traced program of ``function(*args)``, counting
    every call site inside nested programs (scan and cond bodies, inner jits)."""

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "cholesky"
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else (param,):
                    sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                    if hasattr(sub, "eqns"):
                        total += count(sub)
        return total

    return count(jax.make_jaxpr(function)(*args).jaxpr)


@pytest.mark.parametrize("minimiser", [incremental, gauss_newton, quasi_newton])
def test_minimisers_factorise_the_prior_covariances_once(lorenz_window, minimiser):
    # The control-variable transform needs B^{1/2} (and Q^{1/2}): factorised once per
    # minimisation, never inside the iterations (for a 1600-variable QG state one
    # Cholesky costs more than ten model steps).
    model, observation, y, background, B, _ = lorenz_window
    strong = StrongFourDVar(model, observation, y, background, B)
    weak = WeakFourDVar(model, observation, y, background, B, 0.1 * jnp.eye(10))
    run = functools.partial(minimiser, max_iterations=3)
    if minimiser is incremental:
        run = functools.partial(minimiser, outer_loops=3, inner_loops=5)
    assert _cholesky_calls(lambda c: run(c, c.background).control, strong) == 1
    assert _cholesky_calls(lambda c: run(c, c.initial_control()).control, weak) == 2


def test_non_convergence_is_reported_not_silent(lorenz_window):
    model, observation, y, background, B, _ = lorenz_window
    cost = StrongFourDVar(model, observation, y, background, B)
    result = gauss_newton(cost, background, max_iterations=1, inner_iterations=2)
    assert not bool(result.converged)
    assert int(result.iterations) == 1


def test_gradient_through_the_minimisation_matches_finite_differences(lorenz_window):
    # d(analysis)/d(background) through Gauss-Newton with its Lineax CG solves.
    model, observation, y, background, B, _ = lorenz_window
    weights = jax.random.normal(jax.random.key(9), background.shape)

    def loss(xb):
        cost = StrongFourDVar(model, observation, y, xb, B)
        return weights @ gauss_newton(cost, xb, max_iterations=4, tolerance=0.0).control

    direction = jax.random.normal(jax.random.key(10), background.shape)
    # One compiled program for the gradient and the differences' values.
    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss))
    _, gradient = value_and_grad(background)
    difference = _central_difference(lambda x: value_and_grad(x)[0], background, direction, 1e-5)
    assert float(gradient @ direction) == pytest.approx(float(difference), rel=1e-5)


def test_bad_input(lorenz_window):
    model, observation, y, background, B, _ = lorenz_window
    with pytest.raises(ValueError, match="window >= 1"):
        StrongFourDVar(model, observation, y[:0], background, B)
    with pytest.raises(ValueError, match="background_covariance"):
        StrongFourDVar(model, observation, y, background, -B)
    with pytest.raises(ValueError, match="model_error_covariance"):
        WeakFourDVar(model, observation, y, background, B, 0.0 * B)
    with pytest.raises(ValueError, match="columns"):
        StrongFourDVar(model, full_observation(10, GaussianError(1.0)), y, background, B)
    with pytest.raises(ValueError, match="background"):
        StrongFourDVar(model, observation, y, background[:5], B)
    cost = StrongFourDVar(model, observation, y, background, B)
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(eqx.filter_jit(gauss_newton)(cost, background * jnp.nan))
