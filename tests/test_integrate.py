"""Resolvent: hand-written RK4, exact stability polynomial, convergence order, adaptive
solvers, transformations (jit, vmap, grad) against finite differences."""

import diffrax
import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Array, Float

from hybridda.dynamics import AbstractDynamics, Lorenz63, Lorenz96
from hybridda.integrate import RK4, Resolvent


class LinearDecay(AbstractDynamics):
    """dx/dt = rate * x: RK4 multiplies x by R(rate dt) = 1 + z + z²/2 + z³/6 + z⁴/24 per step."""

    rate: Float[Array, ""]
    size: int = eqx.field(static=True, default=3)

    @property
    def state_size(self) -> int:
        return self.size

    def tendency(self, t, x, args=None):
        return self.rate * x


class CosineForcing(AbstractDynamics):
    """dx/dt = cos(t): RK4 reduces to Simpson's rule, a check that `t0` is honoured."""

    size: int = eqx.field(static=True, default=2)

    @property
    def state_size(self) -> int:
        return self.size

    def tendency(self, t, x, args=None):
        return jnp.cos(t) * jnp.ones_like(x)


def hand_rk4_step(f, x, dt):
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def lorenz96_state(n=40, seed=0):
    return 8.0 + jax.random.normal(jax.random.key(seed), (n,))


# ------------------------------------------------------------------ the RK4 step


@pytest.mark.parametrize(
    "model, x, dt, steps",
    [
        (Lorenz63(), jnp.array([1.509, -1.531, 25.46]), 0.01, 1),
        (Lorenz96(n=40), lorenz96_state(), 0.05, 3),
    ],
    ids=["lorenz63-one-step", "lorenz96-three-steps"],
)
def test_steps_equal_hand_written_rk4(model, x, dt, steps):
    expected = np.asarray(x)

    def f(state):
        return np.asarray(model.tendency(jnp.asarray(0.0), jnp.asarray(state)))

    for _ in range(steps):
        expected = hand_rk4_step(f, expected, dt)
    result = Resolvent(model, dt=dt, steps_per_cycle=steps)(x)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)


def stability_polynomial(z):
    return 1.0 + z + z**2 / 2.0 + z**3 / 6.0 + z**4 / 24.0


@settings(max_examples=20, deadline=None)
@given(
    rate=st.floats(-5.0, 2.0),
    x=hnp.arrays(np.float64, (3,), elements=st.floats(-10.0, 10.0)),
)
def test_linear_decay_is_exact_stability_polynomial(rate, x):
    dt, steps = 0.1, 5
    resolvent = Resolvent(LinearDecay(jnp.asarray(rate)), dt=dt, steps_per_cycle=steps)
    result = resolvent(jnp.asarray(x))
    expected = x * stability_polynomial(rate * dt) ** steps
    np.testing.assert_allclose(result, expected, rtol=1e-13, atol=1e-13)


def simpson_integral_of_cosine(t0, dt, steps):
    times = t0 + dt * np.arange(steps)
    return np.sum(dt / 6.0 * (np.cos(times) + 4.0 * np.cos(times + dt / 2) + np.cos(times + dt)))


def test_start_time_is_honoured():
    dt, steps, t0 = 0.1, 4, 1.3
    resolvent = Resolvent(CosineForcing(), dt=dt, steps_per_cycle=steps)
    x = jnp.array([0.5, -2.0])
    result = resolvent(x, t0)
    expected = np.asarray(x) + simpson_integral_of_cosine(t0, dt, steps)
    np.testing.assert_allclose(result, expected, rtol=1e-13, atol=1e-13)
    # Simpson's rule is 4th order accurate: close to, not equal to, sin(t1) - sin(t0).
    exact = np.asarray(x) + np.sin(t0 + dt * steps) - np.sin(t0)
    np.testing.assert_allclose(result, exact, atol=1e-6)


def test_rk4_solver_reports_order_four():
    assert RK4().order(None) == 4


# --------------------------------------------------------------- convergence


def test_fourth_order_convergence_on_lorenz63():
    model = Lorenz63()
    x = model.default_initial_state()
    final_time, coarse_dt = 0.5, 0.02
    coarse_steps = round(final_time / coarse_dt)
    reference = Resolvent(model, dt=coarse_dt / 64, steps_per_cycle=coarse_steps * 64)(x)
    errors = []
    for refinement in (1, 2, 4):
        resolvent = Resolvent(
            model, dt=coarse_dt / refinement, steps_per_cycle=coarse_steps * refinement
        )
        assert resolvent.cycle_length == pytest.approx(final_time)
        errors.append(float(jnp.max(jnp.abs(resolvent(x) - reference))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders >= 3.7) & (orders <= 4.3)), (errors, orders)


def lorenz63_fine_rk4_reference():
    model = Lorenz63()
    x = model.default_initial_state()
    return model, x, Resolvent(model, dt=0.5 / 2000, steps_per_cycle=2000)(x)


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Dopri5()], ids=["tsit5", "dopri5"])
def test_adaptive_solvers_agree_with_fine_rk4(solver):
    model, x, reference = lorenz63_fine_rk4_reference()
    tight = Resolvent(model, dt=0.01, steps_per_cycle=50, solver=solver, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(tight(x) - reference))) < 1e-7


def test_adaptive_tolerances_reach_the_controller():
    model, x, reference = lorenz63_fine_rk4_reference()
    solver = diffrax.Tsit5()
    tight = Resolvent(model, dt=0.01, steps_per_cycle=50, solver=solver, rtol=1e-10, atol=1e-12)
    loose = Resolvent(model, dt=0.01, steps_per_cycle=50, solver=solver)
    tight_error = float(jnp.max(jnp.abs(tight(x) - reference)))
    loose_error = float(jnp.max(jnp.abs(loose(x) - reference)))
    assert loose_error < 1e-4
    assert tight_error < loose_error / 100


# ---------------------------------------------------------- transformations


@pytest.fixture(scope="module")
def lorenz96_resolvent():
    return Resolvent(Lorenz96(n=40), dt=0.05, steps_per_cycle=2)


def test_jit_equals_no_jit(lorenz96_resolvent):
    x = lorenz96_state(seed=1)
    eager = lorenz96_resolvent(x)
    np.testing.assert_allclose(
        jax.jit(lambda state: lorenz96_resolvent(state))(x), eager, rtol=1e-13
    )


def test_ensemble_equals_vmap_and_loop(lorenz96_resolvent):
    ensemble = 8.0 + jax.random.normal(jax.random.key(2), (5, 40))
    result = lorenz96_resolvent.ensemble(ensemble)
    assert result.shape == (5, 40)
    np.testing.assert_allclose(result, jax.vmap(lorenz96_resolvent)(ensemble), rtol=1e-13)
    looped = np.stack([lorenz96_resolvent(member) for member in ensemble])
    np.testing.assert_allclose(result, looped, rtol=1e-13)


def test_adaptive_ensemble_equals_loop():
    # Adaptive solvers: each member keeps its own step sizes, as if integrated alone.
    resolvent = Resolvent(Lorenz63(), dt=0.01, steps_per_cycle=50, solver=diffrax.Tsit5())
    ensemble = jnp.array([[1.509, -1.531, 25.46]]) + jax.random.normal(jax.random.key(3), (4, 3))
    looped = np.stack([resolvent(member) for member in ensemble])
    np.testing.assert_allclose(resolvent.ensemble(ensemble), looped, rtol=1e-11)


def test_gradients_match_central_differences():
    # One reverse pass gives the derivatives of a single-state scalar and of an ensemble
    # scalar with respect to the initial state and to the per-variable forcing leaf; the
    # batched fixed-step ensemble path must keep the dynamics' parameters as leaves too.
    n, dt, steps = 8, 0.05, 3
    x = lorenz96_state(n=n, seed=8)
    forcing = 8.0 + 0.5 * jax.random.normal(jax.random.key(10), (n,))
    ensemble = 8.0 + jax.random.normal(jax.random.key(11), (3, n))
    weights = jax.random.normal(jax.random.key(9), (n,))
    ensemble_weights = jax.random.normal(jax.random.key(12), (3, n))

    def scalars(inputs):
        resolvent, state = inputs
        final = resolvent(state)
        return jnp.stack(
            [
                weights @ final + 0.1 * jnp.sum(final**2),
                jnp.sum(ensemble_weights * resolvent.ensemble(ensemble)),
            ]
        )

    def scalars_of_vector(state_and_forcing):
        dynamics = Lorenz96(n=n, forcing=state_and_forcing[n:])
        resolvent = Resolvent(dynamics, dt=dt, steps_per_cycle=steps)
        return scalars((resolvent, state_and_forcing[:n]))

    resolvent = Resolvent(Lorenz96(n=n, forcing=forcing), dt=dt, steps_per_cycle=steps)
    jacobian_resolvent, jacobian_state = eqx.filter_jit(eqx.filter_jacrev(scalars))((resolvent, x))
    jacobian = jnp.concatenate([jacobian_state, jacobian_resolvent.dynamics.forcing], axis=1)
    assert jacobian.shape == (2, 2 * n)

    step = 1e-5
    point = jnp.concatenate([x, forcing])
    shifts = step * jnp.eye(2 * n)
    values = jax.jit(jax.vmap(scalars_of_vector))(
        jnp.concatenate([point[None, :] + shifts, point[None, :] - shifts])
    )
    expected = ((values[: 2 * n] - values[2 * n :]) / (2.0 * step)).T
    # The ensemble does not depend on the single initial state.
    np.testing.assert_array_equal(jacobian[1, :n], 0.0)
    assert np.all(np.abs(expected[:, n:]) > 1e-3)
    np.testing.assert_allclose(jacobian, expected, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- trajectory


def test_trajectory_rows_are_iterated_cycles(lorenz96_resolvent):
    x = lorenz96_state(seed=13)
    cycles = 4
    trajectory = lorenz96_resolvent.trajectory(x, cycles)
    assert trajectory.shape == (cycles + 1, 40)
    np.testing.assert_array_equal(trajectory[0], x)
    state = x
    for cycle in range(1, cycles + 1):
        state = lorenz96_resolvent(state)
        np.testing.assert_allclose(trajectory[cycle], state, rtol=1e-12)


def test_trajectory_advances_time():
    dt, steps, t0, cycles = 0.1, 2, 0.7, 3
    resolvent = Resolvent(CosineForcing(), dt=dt, steps_per_cycle=steps)
    x = jnp.array([1.0, 0.0])
    trajectory = resolvent.trajectory(x, cycles, t0=t0)
    for cycle in range(cycles + 1):
        expected = np.asarray(x) + simpson_integral_of_cosine(t0, dt, steps * cycle)
        np.testing.assert_allclose(trajectory[cycle], expected, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- validation


def test_properties():
    resolvent = Resolvent(Lorenz96(n=12), dt=0.01, steps_per_cycle=5)
    assert resolvent.cycle_length == pytest.approx(0.05)
    assert resolvent.state_size == 12


@pytest.mark.parametrize("dt", [0.0, -0.05, float("inf"), float("nan")])
def test_non_positive_dt_raises(dt):
    with pytest.raises(ValueError, match="`dt`"):
        Resolvent(Lorenz63(), dt=dt)


@pytest.mark.parametrize("steps", [0, -3])
def test_non_positive_steps_per_cycle_raises(steps):
    with pytest.raises(ValueError, match="`steps_per_cycle`"):
        Resolvent(Lorenz63(), dt=0.01, steps_per_cycle=steps)


def test_large_vector_fields_scan_their_stages_with_the_same_result():
    # The QG tendency (FFT inversion, Arakawa Jacobian) is past the threshold: its RK4
    # stages run in a scan, a small model's are unrolled. Both equal diffeqsolve's RK4.
    from hybridda.dynamics import QG
    from hybridda.integrate import SCAN_STAGES_MIN_OPERATIONS, _program_size

    def tendency_jaxpr(dynamics):
        x = dynamics.default_initial_state()
        return jax.make_jaxpr(lambda y: dynamics.tendency(0.0, y, None))(x).jaxpr

    def scans(jaxpr):  # scan operations, nested ones included
        count = 0
        for equation in jaxpr.eqns:
            count += equation.primitive.name == "scan"
            for value in equation.params.values():
                for item in value if isinstance(value, tuple | list) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    count += scans(inner) if hasattr(inner, "eqns") else 0
        return count

    qg, lorenz = QG(nx=8, ny=6), Lorenz96(n=10)
    sizes = {name: _program_size(tendency_jaxpr(d)) for name, d in (("qg", qg), ("l96", lorenz))}
    assert sizes["l96"] < SCAN_STAGES_MIN_OPERATIONS <= sizes["qg"]
    for dynamics, stage_scans in ((qg, 1), (lorenz, 0)):
        x, dt = dynamics.default_initial_state(), 0.05
        ours = Resolvent(dynamics, dt=dt, steps_per_cycle=3)
        # The steps' scan, plus the stages' scan for QG only (beyond those of the tendency,
        # traced once in a stage scan, four times unrolled).
        copies = 1 if stage_scans else 4
        added = scans(jax.make_jaxpr(ours)(x).jaxpr) - copies * scans(tendency_jaxpr(dynamics))
        assert added == 1 + stage_scans, type(dynamics).__name__
        reference = Resolvent(dynamics, dt=dt, steps_per_cycle=3, adjoint=diffrax.DirectAdjoint())
        scale = float(jnp.max(jnp.abs(x)))
        np.testing.assert_allclose(ours(x, 0.2), reference(x, 0.2), rtol=0, atol=1e-12 * scale)
        assert bool(jnp.any(ours(x, 0.2) != x))
