"""4D-Var with model parameters in the control (online learning) against exact answers."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda as hda
from hybridda.dynamics import Lorenz96
from hybridda.learn import online_fourdvar
from hybridda.observe import GaussianError, IndexObservation, every_kth
from hybridda.variational import (
    FourDVar,
    StrongFourDVar,
    WeakFourDVar,
    WithModelParameters,
    gauss_newton,
)
from tests.filters.helpers import AffineDynamics, rk4_affine_step
from tests.learn.helpers import lorenz96_forcing_twin

H_STEP, WINDOW, STDS = 0.1, 4, np.array([0.5, 0.8])


@pytest.fixture(scope="module")
def affine():
    """dx/dt = A x + b with the bias b learnt: every prediction is affine in (x0, η, b),
    so 4D-Var's minimiser is the BLUE of the stacked control."""
    rng = np.random.default_rng(0)
    n = 3
    A = 0.5 * rng.standard_normal((n, n)) - 0.3 * np.eye(n)
    model = hda.Resolvent(AffineDynamics(jnp.asarray(A), jnp.asarray([0.2, -0.1, 0.3])), H_STEP)
    observation = IndexObservation([0, 2], n, GaussianError(jnp.asarray(STDS)))
    y = rng.standard_normal((WINDOW, 2)) + 1.0
    y[2, 1] = np.nan  # a missing value
    background = rng.standard_normal(n)
    B = np.eye(n) * 0.6 + 0.2
    Q = 0.05 * np.eye(n)
    M, G = rk4_affine_step(A, H_STEP)
    return model, observation, y, background, B, Q, M, G


def _blue(prior_mean, prior_cov, rows, offsets, y):
    """Posterior mean of z ~ N(prior_mean, prior_cov) given y_k = rows_k z + offsets_k + ε."""
    H = np.concatenate(rows)
    d = np.concatenate(y) - np.concatenate(offsets)
    keep = np.isfinite(d)
    H, d = H[keep], d[keep]
    R = np.diag(np.tile(STDS**2, WINDOW)[keep])
    gain = prior_cov @ H.T @ np.linalg.inv(H @ prior_cov @ H.T + R)
    return prior_mean + gain @ (d - H @ prior_mean)


@pytest.mark.parametrize("weak", [False, True], ids=["strong", "weak"])
def test_minimiser_is_the_blue_of_state_and_parameters(affine, weak):
    model, observation, y, background, B, Q, M, G = affine
    n, q, sigma = 3, 3, 0.7
    b_background = np.array([0.2, -0.1, 0.3])
    H = np.eye(n)[[0, 2]]
    # Predictions x_k = M^k x0 + sum_{j<k} M^j G b (+ sum_{j<=k} M^{k-j} η_j when weak).
    blocks = 1 + (WINDOW if weak else 0) + 1  # x0, (η_1..η_L), b
    rows = []
    for k in range(1, WINDOW + 1):
        x0_part = np.linalg.matrix_power(M, k)
        b_part = sum(np.linalg.matrix_power(M, j) for j in range(k)) @ G
        eta_parts = [
            np.linalg.matrix_power(M, k - j) if j <= k else np.zeros((n, n))
            for j in range(1, WINDOW + 1)
        ]
        parts = [x0_part, *(eta_parts if weak else []), b_part]
        rows.append(H @ np.concatenate(parts, axis=1))
    covariances = [B, *([Q] * WINDOW if weak else []), sigma**2 * np.eye(q)]
    prior_cov = np.zeros((n * blocks, n * blocks))
    for i, C in enumerate(covariances):
        prior_cov[i * n : (i + 1) * n, i * n : (i + 1) * n] = C
    no_error = [np.zeros(n)] * WINDOW if weak else []
    prior_mean = np.concatenate([background, *no_error, b_background])
    expected = _blue(prior_mean, prior_cov, rows, [np.zeros(2)] * WINDOW, list(y))

    inner_args = (model, observation, jnp.asarray(y), jnp.asarray(background), jnp.asarray(B))
    inner = WeakFourDVar(*inner_args, jnp.asarray(Q)) if weak else StrongFourDVar(*inner_args)
    cost = WithModelParameters(inner, where=lambda m: m.dynamics.bias, parameter_std=sigma)
    np.testing.assert_allclose(cost.parameter_background, b_background)
    result = eqx.filter_jit(gauss_newton)(cost, cost.initial_control(), max_iterations=3)
    (control, theta) = result.control
    found = [control[0], control[1].ravel()] if weak else [control]
    np.testing.assert_allclose(np.concatenate([*found, theta]), expected, rtol=0, atol=1e-9)
    # The pieces add up to the cost.
    pieces = (
        cost.background_term(result.control)
        + cost.model_error_term(result.control)
        + cost.observation_term(result.control)
        + cost.parameter_term(result.control)
    )
    np.testing.assert_allclose(pieces, cost(result.control), rtol=1e-12)


@pytest.mark.parametrize("weak", [False, True], ids=["strong", "weak"])
def test_gradient_matches_finite_differences(weak):
    n, L = 10, 3
    model = hda.Resolvent(Lorenz96(n=n, forcing=7.0), dt=0.05)
    x_true = hda.spin_up(hda.Resolvent(Lorenz96(n=n)), Lorenz96(n=n).default_initial_state(), 200)
    observation = every_kth(n, 2, GaussianError(1.0))
    y = hda.synthesise_observations(
        observation, hda.simulate(hda.Resolvent(Lorenz96(n=n)), x_true, L)[1:], jax.random.key(1)
    )
    args = (model, observation, y, x_true + 0.5, jnp.eye(n))
    inner = WeakFourDVar(*args, 0.1 * jnp.eye(n)) if weak else StrongFourDVar(*args)
    cost = WithModelParameters(inner, where=lambda m: m.dynamics.forcing, parameter_std=0.5)
    control = cost.initial_control(x_true)
    direction = jax.tree.map(
        lambda leaf: jax.random.normal(jax.random.key(leaf.size), leaf.shape), control
    )
    # One compiled program for the gradient and the differences' values (eagerly, each
    # operation compiles on its own).
    value_and_grad = eqx.filter_jit(lambda cost, control: jax.value_and_grad(cost)(control))
    gradient = value_and_grad(cost, control)[1]
    along = sum(
        float(jnp.sum(g * d))
        for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction), strict=True)
    )

    def at(eps):
        return value_and_grad(cost, jax.tree.map(lambda c, d: c + eps * d, control, direction))[0]

    finite = (at(1e-6) - at(-1e-6)) / 2e-6
    assert abs(float(jax.tree.leaves(gradient)[-1][0])) > 1e-3  # the forcing matters
    np.testing.assert_allclose(along, finite, rtol=1e-6)


def test_cycled_windows_learn_the_forcing_online():
    # Lorenz-96 (n = 20), truth F = 8, the model starts with F = 6. Each window of 4
    # cycles (every other variable observed, std 1) minimises over (x0, F) with the
    # previous window's F as background (std 0.6); the analysis at the window's end is
    # the next window's background (`online_fourdvar`, in two chunks of 20 windows).
    # Measured: F 6.45 after the first window, 7.96 after ten, 8.09 on average over the
    # last ten of 40. The window-end RMSE over the last 20 windows is 0.48-0.59 (three
    # observation draws, XLA optimisation on or off), against 0.71-0.78 with F held at 6
    # (parameter_std = 1e-6); single windows range over 0.3-1.0.
    windows, L = 40, 4
    twin = lorenz96_forcing_twin(windows, L)
    truth, x0, y_windows = twin.truth, twin.x0, twin.y_windows
    start_model, observation, method = twin.start_model, twin.observation, twin.method
    n = x0.shape[0]
    y = y_windows.reshape(windows * L, -1)
    forcing = lambda m: m.dynamics.forcing  # noqa: E731

    with pytest.raises(ValueError, match="y_windows"):  # windows of 2 cycles, not L = 4
        halves = y.reshape(2 * windows, L // 2, -1)
        online_fourdvar(
            method, start_model, observation, x0, halves, where=forcing, parameter_std=1.0
        )
    with pytest.raises(ValueError, match="parameter_std"):  # σ = 0 would give NaN steps
        online_fourdvar(
            method, start_model, observation, x0, y_windows, where=forcing, parameter_std=0.0
        )

    state = (x0 + jax.random.normal(jax.random.key(3), (n,)), None)
    records = []
    for first in (0, windows // 2):
        state, record = online_fourdvar(
            method,
            start_model,
            observation,
            state[0],
            y_windows[first : first + windows // 2],
            where=forcing,
            parameter_std=0.6,
            parameters=state[1],
            first_window=first,
        )
        records.append(record)
    record = jax.tree.map(lambda *r: jnp.concatenate(r), *records)
    # The window-end analyses are the carried backgrounds: the last one is returned.
    np.testing.assert_array_equal(state[0], record.analysis_end[-1])
    errors = np.sqrt(np.mean((record.analysis_end - truth[L - 1 :: L]) ** 2, axis=1))
    assert np.all(record.cost_after <= record.cost_before)
    assert record.parameter_step[0] > 0.5  # the first window moves F (0.76 σ) ...
    assert abs(float(state[1][0]) - 8.0) < 0.3  # ... and the windows converge to 8
    assert np.mean(errors[-20:]) < 0.65


def _online_bias(method, model, observation, y_part, start, x_b, theta, **options):
    """`online_fourdvar` learning the affine model's bias from window `start` on."""
    return online_fourdvar(
        method, model, observation, jnp.asarray(x_b), y_part,
        where=lambda m: m.dynamics.bias, parameters=theta, first_window=start, **options,
    )  # fmt: skip


def test_decaying_parameter_std_is_the_shrunk_prior_of_each_window(affine):
    # `parameter_std_decay = w0`: window w (global index) is the online window with the
    # constant σ / sqrt(1 + w / w0), whether the windows run in one call or in chunks.
    model, observation, y, background, B, _, _, _ = affine
    background = jnp.asarray(background)
    method = FourDVar(jnp.asarray(B), window=WINDOW)
    y_windows = jnp.asarray(np.stack([y, y[::-1]]))
    sigma, w0, first = 0.7, 4.0, 6
    theta0 = jnp.array([0.1, 0.0, 0.2])
    run = functools.partial(_online_bias, method, model, observation)

    decayed, records = run(
        y_windows, first, background, theta0, parameter_std=sigma, parameter_std_decay=w0
    )
    state = (background, theta0)
    for w in range(2):
        std = sigma / np.sqrt(1 + (first + w) / w0)
        state, record = run(y_windows[w : w + 1], first + w, *state[:2], parameter_std=std)
        np.testing.assert_allclose(record.analysis_end[0], records.analysis_end[w], rtol=1e-12)
    np.testing.assert_allclose(state[1], decayed[1], rtol=1e-12)
    # ... and the decay matters: the constant σ gives another θ.
    constant, _ = run(y_windows, first, background, theta0, parameter_std=sigma)
    assert np.max(np.abs(np.asarray(constant[1]) - np.asarray(decayed[1]))) > 1e-3
    with pytest.raises(ValueError, match="parameter_std_decay"):
        run(y_windows, 0, background, theta0, parameter_std=sigma, parameter_std_decay=0.0)


def _bias_information(M, G, y):
    """diag(Jᵀ J) of one window of the affine model: y[k-1] observes H x_k, and
    x_k depends on the bias through sum_{j<k} M^j G; rows of missing values drop out."""
    H = np.eye(3)[[0, 2]]
    rows = []
    for k in range(1, WINDOW + 1):
        block = H @ sum(np.linalg.matrix_power(M, j) for j in range(k)) @ G / STDS[:, None]
        rows.append(block[np.isfinite(y[k - 1])])
    J = np.concatenate(rows)
    return np.sum(J**2, axis=0)


def test_accumulated_information_is_the_exact_gauss_newton_diagonal(affine):
    # `accumulate_information`: window w's prior precision of θ is 1/σ² plus κ times the
    # diagonal of JᵀJ of every earlier window, whether in one call or in chunks.
    model, observation, y, background, B, _, M, G = affine
    method = FourDVar(jnp.asarray(B), window=WINDOW)
    windows = [y, y[::-1]]  # the missing value moves: the two windows differ
    y_windows = jnp.asarray(np.stack(windows))
    sigma, kappa, theta0 = 0.7, 0.5, jnp.array([0.1, 0.0, 0.2])
    run = functools.partial(_online_bias, method, model, observation)

    state, records = run(
        y_windows, 0, background, theta0, parameter_std=sigma,
        accumulate_information=True, information_scale=kappa,
    )  # fmt: skip
    informations = [_bias_information(M, G, w) for w in windows]
    expected = 1 / sigma**2 + kappa * (informations[0] + informations[1])
    np.testing.assert_allclose(state.parameter_precision, expected, rtol=1e-10)
    # Each window is the online window with the constant σ = P_w^{-1/2} ...
    stds = [np.full(3, sigma), 1 / np.sqrt(1 / sigma**2 + kappa * informations[0])]
    chunked = (background, theta0)
    for w in range(2):
        chunked, record = run(y_windows[w : w + 1], w, *chunked[:2], parameter_std=stds[w])
        np.testing.assert_allclose(record.analysis_end[0], records.analysis_end[w], rtol=1e-12)
    np.testing.assert_allclose(chunked.parameters, state.parameters, rtol=1e-12)
    # ... and chunks that carry the precision compose exactly.
    first, _ = run(
        y_windows[:1], 0, background, theta0, parameter_std=sigma,
        accumulate_information=True, information_scale=kappa,
    )  # fmt: skip
    second, _ = run(
        y_windows[1:], 1, first.background, first.parameters, parameter_std=sigma,
        accumulate_information=True, information_scale=kappa,
        parameter_precision=first.parameter_precision,
    )  # fmt: skip
    np.testing.assert_allclose(second.parameter_precision, expected, rtol=1e-10)
    np.testing.assert_allclose(second.parameters, state.parameters, rtol=1e-12)
    # Without accumulation there is no precision to carry.
    assert run(y_windows, 0, background, theta0, parameter_std=sigma)[0].parameter_precision is None


def test_hutchinson_information_is_unbiased(affine):
    # K Rademacher probes: mean (Jᵀv)² estimates diag(JᵀJ) with a relative standard error
    # below sqrt(2 / K); the same key gives the same numbers.
    model, observation, y, background, B, _, M, G = affine
    method = FourDVar(jnp.asarray(B), window=WINDOW)

    def precision(probes, key):
        state, _ = online_fourdvar(
            method, model, observation, jnp.asarray(background), jnp.asarray(y)[None],
            where=lambda m: m.dynamics.bias, parameter_std=1.0, accumulate_information=True,
            information_probes=probes, key=key,
        )  # fmt: skip
        return np.asarray(state.parameter_precision) - 1.0

    exact = _bias_information(M, G, y)
    estimate = precision(4000, jax.random.key(0))
    np.testing.assert_allclose(estimate, exact, rtol=5 * np.sqrt(2 / 4000))
    np.testing.assert_array_equal(precision(3, jax.random.key(1)), precision(3, jax.random.key(1)))
    assert np.any(precision(3, jax.random.key(1)) != precision(3, jax.random.key(2)))


def test_bad_information_options_are_rejected(affine):
    model, observation, y, background, B, _, _, _ = affine
    method = FourDVar(jnp.asarray(B), window=WINDOW)

    def run(**options):
        return online_fourdvar(
            method, model, observation, jnp.asarray(background), jnp.asarray(y)[None],
            where=lambda m: m.dynamics.bias, parameter_std=1.0, **options,
        )  # fmt: skip

    on = {"accumulate_information": True}
    with pytest.raises(ValueError, match="parameter_std_decay"):
        run(parameter_std_decay=10.0, **on)
    with pytest.raises(ValueError, match="`key`"):
        run(information_probes=4, **on)
    with pytest.raises(ValueError, match="information_probes"):
        run(information_probes=0, key=jax.random.key(0), **on)
    with pytest.raises(ValueError, match="information_scale"):
        run(information_scale=0.0, **on)
    with pytest.raises(ValueError, match=r"parameter_precision.*\(3,\)"):
        run(parameter_precision=jnp.ones(2), **on)
    with pytest.raises(ValueError, match="parameter_precision"):
        run(parameter_precision=jnp.array([1.0, 0.0, 1.0]), **on)
    with pytest.raises(ValueError, match="accumulate_information=True"):
        run(parameter_precision=jnp.ones(3))


def test_bad_parameter_control_is_rejected(affine):
    model, observation, y, background, B, _, _, _ = affine
    inner = StrongFourDVar(model, observation, jnp.asarray(y), jnp.asarray(background), B)
    bias = lambda m: m.dynamics.bias  # noqa: E731
    with pytest.raises(ValueError, match="parameter_std"):
        WithModelParameters(inner, where=bias, parameter_std=0.0)
    with pytest.raises(ValueError, match="parameter_std"):
        WithModelParameters(inner, where=bias, parameter_std=jnp.ones(2))
    with pytest.raises(ValueError, match=r"parameter_background.*\(3,\)"):
        WithModelParameters(inner, where=bias, parameter_background=jnp.zeros(4))
    with pytest.raises(ValueError, match="floating-point arrays only"):
        WithModelParameters(
            StrongFourDVar(
                hda.Resolvent(Lorenz96(n=6, forcing=jnp.asarray(8))),
                every_kth(6, 2, GaussianError(1.0)),
                jnp.zeros((2, 3)),
                jnp.zeros(6),
                jnp.eye(6),
            ),
            where=lambda m: m.dynamics.forcing,
        )
    # (under the tests' runtime type checking the annotation catches it first)
    with pytest.raises((ValueError, TypeError), match="StrongFourDVar"):
        WithModelParameters(model, where=bias)
