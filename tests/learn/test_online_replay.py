"""Online learning from streamed 4D-Var analyses (`online_replay_fourdvar`) against
exact answers: the window is the BLUE with the current parameters, the step is the
gradient step on the replayed pair, chunks compose exactly, and it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hybridda as hda
from hybridda.learn import ReplayState, online_replay_fourdvar
from hybridda.observe import GaussianError, IndexObservation
from hybridda.variational import FourDVar
from tests.filters.helpers import AffineDynamics, rk4_affine_step
from tests.learn.helpers import lorenz96_forcing_twin

H_STEP, WINDOW, STDS = 0.1, 3, np.array([0.5, 0.8])


@pytest.fixture(scope="module")
def affine():
    """dx/dt = A x + b, b learnt; one RK4 step per cycle, x⁺ = M x + G b."""
    rng = np.random.default_rng(4)
    n = 3
    A = 0.5 * rng.standard_normal((n, n)) - 0.3 * np.eye(n)
    bias = np.array([0.2, -0.1, 0.3])
    model = hda.Resolvent(AffineDynamics(jnp.asarray(A), jnp.asarray(bias)), H_STEP)
    observation = IndexObservation([0, 2], n, GaussianError(jnp.asarray(STDS)))
    y = rng.standard_normal((6, WINDOW, 2)) + 1.0
    y[0, 1, 1] = np.nan  # a missing value
    B = np.eye(n) * 0.6 + 0.2
    method = FourDVar(jnp.asarray(B), window=WINDOW, outer_loops=3)
    M, G = rk4_affine_step(A, H_STEP)
    return model, observation, y, B, method, M, G, bias, rng.standard_normal(n)


def _window_end_blue(M, G, bias, B, x_b, y, Q=None):
    """x_L of the 4D-Var minimiser: x_k = M^k x0 + S_k b + Σ_{j≤k} M^{k-j} η_j,
    S_k = Σ_{j<k} M^j G, η_j ~ N(0, Q) (strong: η = 0), observed y_k = H x_k + ε
    (k = 1..L); the BLUE of z = (x0, η_1..η_L) given x_b ~ N(x0, B)."""
    H = np.zeros((2, 3))
    H[0, 0] = H[1, 2] = 1.0
    L = WINDOW
    offsets, S, Mk = [], np.zeros((3, 3)), np.eye(3)
    powers = [np.eye(3)]
    for _ in range(L):
        S, Mk = M @ S + G, M @ Mk
        powers.append(Mk)
        offsets.append(H @ S @ bias)
    # x_k = T_k z + S_k b, T_k = [M^k, M^{k-1}, ..., I (η_k), 0, ...].
    T = [np.hstack([powers[k]] + [powers[k - j] if j <= k else np.zeros((3, 3))
                                  for j in range(1, L + 1)]) for k in range(1, L + 1)]  # fmt: skip
    rows = [H @ t for t in T]
    Hs, d = np.concatenate(rows), np.concatenate(y) - np.concatenate(offsets)
    keep = np.isfinite(d)
    Hs, d = Hs[keep], d[keep]
    R = np.diag(np.tile(STDS**2, L)[keep])
    P = np.zeros((3 * (L + 1), 3 * (L + 1)))
    P[:3, :3] = B
    for j in range(1, L + 1):
        P[3 * j : 3 * j + 3, 3 * j : 3 * j + 3] = 0 if Q is None else Q
    z_b = np.concatenate([x_b, np.zeros(3 * L)])
    z = z_b + P @ Hs.T @ np.linalg.solve(Hs @ P @ Hs.T + R, d - Hs @ z_b)
    return T[-1] @ z + S @ bias, Mk, S


def test_one_window_is_the_blue_then_a_gradient_step_on_its_pair(affine):
    model, observation, y, B, method, M, G, bias, x_b = affine
    lr = 0.3
    state, record = online_replay_fourdvar(
        method, model, observation, jnp.asarray(y[:1]),
        where=lambda m: m.dynamics.bias, optimiser=optax.sgd(lr), key=jax.random.key(0),
        background=jnp.asarray(x_b), buffer_windows=1, steps_per_window=1, batch_size=1,
        average_decay=0.9,
    )  # fmt: skip
    # The window's analysis uses the bias before the update.
    end, ML, SL = _window_end_blue(M, G, bias, B, x_b, y[0])
    np.testing.assert_allclose(record.analysis_end[0], end, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(state.background, record.analysis_end[0])
    # One SGD step on ℓ(b) = |M^L x_b + S_L b - x^a|² / n (the pair (x_b, x^a)).
    residual = ML @ x_b + SL @ bias - end
    np.testing.assert_allclose(record.training_loss[0], residual @ residual / 3, rtol=1e-9)
    expected = bias - lr * 2 / 3 * SL.T @ residual
    np.testing.assert_allclose(state.parameters, expected, rtol=1e-9, atol=1e-12)
    # The average is over the run's iterates: after one window, that window's θ.
    np.testing.assert_allclose(state.average, expected, rtol=1e-12)
    assert int(state.windows) == 1
    assert record.cost_after[0] < record.cost_before[0] and bool(record.converged[0])


def test_weak_constraint_window_is_its_blue_and_the_pair_trains_without_forcing(affine):
    # Weak 4D-Var (Q per cycle): the window end is the BLUE of (x0, η) and the step
    # fits the hybrid's rollout without forcing to it (the forcing is what M_θ misses).
    model, observation, y, B, _, M, G, bias, x_b = affine
    Q = np.diag([0.05, 0.02, 0.08])
    method = FourDVar(jnp.asarray(B), window=WINDOW, outer_loops=3,
                      model_error_covariance=jnp.asarray(Q))  # fmt: skip
    lr = 0.3
    state, record = online_replay_fourdvar(
        method, model, observation, jnp.asarray(y[:1]),
        where=lambda m: m.dynamics.bias, optimiser=optax.sgd(lr), key=jax.random.key(0),
        background=jnp.asarray(x_b), buffer_windows=1, steps_per_window=1, batch_size=1,
    )  # fmt: skip
    end, ML, SL = _window_end_blue(M, G, bias, B, x_b, y[0], Q)
    strong_end = _window_end_blue(M, G, bias, B, x_b, y[0])[0]
    assert np.max(np.abs(end - strong_end)) > 1e-2  # Q matters
    np.testing.assert_allclose(record.analysis_end[0], end, rtol=1e-9, atol=1e-10)
    residual = ML @ x_b + SL @ bias - end
    expected = bias - lr * 2 / 3 * SL.T @ residual
    np.testing.assert_allclose(state.parameters, expected, rtol=1e-9, atol=1e-12)
    assert bool(record.converged[0])


def test_chunks_compose_exactly_and_the_buffer_keeps_the_last_windows(affine):
    model, observation, y, _, method, _, _, _, x_b = affine
    options = dict(
        where=lambda m: m.dynamics.bias, optimiser=optax.adam(0.05), key=jax.random.key(1),
        buffer_windows=4, steps_per_window=3, batch_size=2,
    )  # fmt: skip
    run = lambda y_part, **kw: online_replay_fourdvar(  # noqa: E731
        method, model, observation, jnp.asarray(y_part), **options, **kw
    )
    whole, records = run(y, background=jnp.asarray(x_b))
    first, _ = run(y[:2], background=jnp.asarray(x_b))
    second, later = run(y[2:], state=first, first_window=2)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(records.analysis_end[2:], later.analysis_end)
    # Window w wrote slot w mod 4: (its background = the previous end, its end).
    assert int(whole.filled) == 4 and int(whole.windows) == 6
    for w in range(2, 6):
        np.testing.assert_array_equal(whole.inputs[w % 4], records.analysis_end[w - 1])
        np.testing.assert_array_equal(whole.targets[w % 4], records.analysis_end[w])
    # The average weighs the run's iterates θ_1, θ_2 by ρ, 1 (ρ = 0.99), not the start.
    one, _ = run(y[:1], background=jnp.asarray(x_b))
    two, _ = run(y[1:2], state=one, first_window=1)
    expected = (0.99 * one.parameters + two.parameters) / 1.99
    np.testing.assert_allclose(two.average, expected, rtol=1e-12)
    # The parameters moved, and another key draws other minibatches.
    assert not np.allclose(whole.parameters, affine[7])
    other, _ = online_replay_fourdvar(
        method, model, observation, jnp.asarray(y), background=jnp.asarray(x_b),
        **{**options, "key": jax.random.key(2)},
    )  # fmt: skip
    assert not np.array_equal(other.parameters, whole.parameters)


def test_a_buffer_started_from_a_data_set_trains_on_its_pairs(affine):
    # Buffer of 2 started full with the pairs (u0, v0), (u1, v1); window 0 replaces
    # slot 0 by its own pair, so its one SGD step (batch of 1) is the step on either
    # its pair or (u1, v1), and over keys both occur.
    model, observation, y, B, method, M, G, bias, x_b = affine
    rng = np.random.default_rng(7)
    u, v = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    lr = 0.3
    end, ML, SL = _window_end_blue(M, G, bias, B, x_b, y[0])
    step = lambda a, b: bias - lr * 2 / 3 * SL.T @ (ML @ a + SL @ bias - b)  # noqa: E731
    own, replayed = step(x_b, end), step(u[1], v[1])
    # One `where` and one optimiser for all keys: new functions would recompile each run.
    where, optimiser = (lambda m: m.dynamics.bias), optax.sgd(lr)
    seen = set()
    for k in range(8):
        start = ReplayState.start(
            jnp.asarray(x_b), jnp.asarray(bias), optimiser, 2,
            inputs=jnp.asarray(u), targets=jnp.asarray(v),
        )  # fmt: skip
        state, _ = online_replay_fourdvar(
            method, model, observation, jnp.asarray(y[:1]), where=where, optimiser=optimiser,
            key=jax.random.key(k), state=start, buffer_windows=2, steps_per_window=1,
            batch_size=1,
        )  # fmt: skip
        assert int(state.filled) == 2
        np.testing.assert_allclose(state.inputs, np.stack([x_b, u[1]]), rtol=1e-12)
        np.testing.assert_allclose(state.targets, np.stack([end, v[1]]), rtol=1e-9)
        which = [np.allclose(state.parameters, t, rtol=1e-9, atol=1e-12) for t in (own, replayed)]
        assert sum(which) == 1
        seen.add(which.index(True))
    assert seen == {0, 1}
    # A partial or mismatched data set is refused, naming the argument.
    with pytest.raises(ValueError, match="`inputs` must hold `buffer_windows` pairs"):
        ReplayState.start(jnp.asarray(x_b), jnp.asarray(bias), optax.sgd(lr), 3,
                          inputs=jnp.asarray(u), targets=jnp.asarray(v))  # fmt: skip
    with pytest.raises(ValueError, match="both `inputs` and `targets`"):
        ReplayState.start(jnp.asarray(x_b), jnp.asarray(bias), optax.sgd(lr), 2,
                          inputs=jnp.asarray(u))  # fmt: skip
    with pytest.raises(ValueError, match="`targets` holds non-finite"):
        ReplayState.start(jnp.asarray(x_b), jnp.asarray(bias), optax.sgd(lr), 2,
                          inputs=jnp.asarray(u), targets=jnp.asarray(v * np.nan))  # fmt: skip


def test_lorenz96_forcing_is_learnt_from_the_streamed_analyses():
    # Lorenz-96 (n = 20), truth F = 8, the model starts at F = 6; every other variable
    # observed (std 1) every cycle, 4-cycle strong 4D-Var windows. F is learnt by Adam
    # on the last 16 (background, analysis) pairs, 4 steps per window, in two chunks.
    # Measured over three observation draws (learning rate 0.05 or 0.1): F 7.9-8.3
    # after 40 windows, its moving average 7.9-8.3; window-end RMSE over the last 20
    # windows 0.48-0.58, against 0.71-0.78 with F held at 6 (test_parameter_control).
    twin = lorenz96_forcing_twin()
    n, L = twin.x0.shape[0], 4
    start_model, observation, method, y_windows = (
        twin.start_model, twin.observation, twin.method, twin.y_windows
    )  # fmt: skip
    options = dict(
        where=lambda m: m.dynamics.forcing, optimiser=optax.adam(0.05), key=jax.random.key(5),
        buffer_windows=16, steps_per_window=4, batch_size=8, average_decay=0.8,
    )  # fmt: skip
    background = twin.x0 + jax.random.normal(jax.random.key(3), (n,))
    state, first = online_replay_fourdvar(
        method, start_model, observation, y_windows[:20], background=background, **options
    )
    state, second = online_replay_fourdvar(
        method, start_model, observation, y_windows[20:], state=state, first_window=20,
        **options,
    )  # fmt: skip
    ends = jnp.concatenate([first.analysis_end, second.analysis_end])
    errors = np.sqrt(np.mean((ends - twin.truth[L - 1 :: L]) ** 2, axis=1))
    assert abs(float(state.parameters[0]) - 8.0) < 0.4
    assert abs(float(state.average[0]) - 8.0) < 0.4
    assert np.mean(errors[-20:]) < 0.65


def test_bad_options_are_rejected(affine):
    model, observation, y, _, method, _, _, _, x_b = affine
    where = lambda m: m.dynamics.bias  # noqa: E731

    def run(**options):
        arguments = dict(where=where, optimiser=optax.sgd(0.1), key=jax.random.key(0))
        arguments.update(options)
        return online_replay_fourdvar(method, model, observation, jnp.asarray(y), **arguments)

    background = jnp.asarray(x_b)
    for name in ("buffer_windows", "steps_per_window", "batch_size"):
        with pytest.raises(ValueError, match=name):
            run(background=background, **{name: 0})
    with pytest.raises(ValueError, match="average_decay"):
        run(background=background, average_decay=1.0)
    with pytest.raises(ValueError, match="background"):
        run()
    state, _ = run(background=background, buffer_windows=2)
    with pytest.raises(ValueError, match="buffer_windows"):
        run(state=state, buffer_windows=3)
    with pytest.raises(ValueError, match="only to start"):
        run(state=state, buffer_windows=2, background=background)
    with pytest.raises(ValueError, match="y_windows"):  # windows of 2 cycles, not 3
        online_replay_fourdvar(
            method, model, observation, jnp.asarray(y[:, :2]), where=where,
            optimiser=optax.sgd(0.1), key=jax.random.key(0), background=background,
        )  # fmt: skip
    with pytest.raises(TypeError, match="FourDVar"):
        online_replay_fourdvar(
            hda.filters.ETKF(), model, observation, jnp.asarray(y), where=where,
            optimiser=optax.sgd(0.1), key=jax.random.key(0), background=background,
        )  # fmt: skip
