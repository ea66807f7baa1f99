"""Lorenz-96: NumPy loop oracle, energy budget, uniform equilibrium, constructor errors."""

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.dynamics import Lorenz96
from hybridda.dynamics.lorenz96 import lorenz96_advection

T0 = jnp.asarray(0.0)


@eqx.filter_jit
def jit_tendency(model, x):
    return model.tendency(T0, x)


@eqx.filter_jit
def jit_jacobian(model, x):
    return jax.jacfwd(lambda state: model.tendency(T0, state))(x)


def numpy_lorenz96(x: np.ndarray, forcing) -> np.ndarray:
    """dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F_i, written as a plain loop."""
    n = x.shape[0]
    forcing = np.broadcast_to(np.asarray(forcing, dtype=float), (n,))
    out = np.empty(n)
    for i in range(n):
        out[i] = (x[(i + 1) % n] - x[(i - 2) % n]) * x[(i - 1) % n] - x[i] + forcing[i]
    return out


def numpy_lorenz96_jacobian(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    jacobian = np.zeros((n, n))
    for i in range(n):
        jacobian[i, (i + 1) % n] += x[(i - 1) % n]
        jacobian[i, (i - 2) % n] -= x[(i - 1) % n]
        jacobian[i, (i - 1) % n] += x[(i + 1) % n] - x[(i - 2) % n]
        jacobian[i, i] -= 1.0
    return jacobian


@pytest.mark.parametrize("n", [4, 5, 40])
@pytest.mark.parametrize("per_variable_forcing", [False, True])
def test_tendency_matches_numpy_loop(n, per_variable_forcing):
    rng = np.random.default_rng(n)
    x = rng.normal(2.0, 3.0, size=n)
    forcing = rng.uniform(4.0, 12.0, size=n) if per_variable_forcing else 8.0
    model = Lorenz96(n=n, forcing=forcing)
    np.testing.assert_allclose(
        jit_tendency(model, jnp.asarray(x)), numpy_lorenz96(x, forcing), rtol=1e-13, atol=1e-12
    )


@pytest.mark.parametrize("n", [4, 7, 40])
def test_jacobian_matches_analytic_form(n):
    x = np.random.default_rng(100 + n).normal(size=n)
    model = Lorenz96(n=n)
    jacobian = jit_jacobian(model, jnp.asarray(x))
    np.testing.assert_allclose(jacobian, numpy_lorenz96_jacobian(x), rtol=1e-14, atol=1e-14)


def energy_rate_expected(x: np.ndarray, forcing: np.ndarray) -> float:
    # The advection conserves 1/2 |x|^2, so only damping and forcing change it.
    return float(-np.sum(x**2) + np.sum(forcing * x))


@pytest.mark.parametrize("n", [4, 5, 40])
def test_energy_budget(n):
    rng = np.random.default_rng(7 * n)
    x = rng.normal(1.0, 4.0, size=n)
    forcing = rng.uniform(-3.0, 10.0, size=n)
    model = Lorenz96(n=n, forcing=forcing)
    energy_rate = float(jnp.asarray(x) @ jit_tendency(model, jnp.asarray(x)))
    np.testing.assert_allclose(energy_rate, energy_rate_expected(x, forcing), rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    x=hnp.arrays(np.float64, (9,), elements=st.floats(-20.0, 20.0)),
    forcing=st.floats(-10.0, 20.0),
)
def test_energy_budget_property(x, forcing):
    model = Lorenz96(n=9, forcing=forcing)
    energy_rate = float(jnp.asarray(x) @ jit_tendency(model, jnp.asarray(x)))
    expected = energy_rate_expected(x, np.full(9, forcing))
    scale = 1.0 + np.sum(np.abs(x) ** 2) + np.sum(np.abs(x) ** 3)
    assert abs(energy_rate - expected) <= 1e-12 * scale


@settings(max_examples=20, deadline=None)
@given(x=hnp.arrays(np.float64, (2, 6), elements=st.floats(-20.0, 20.0)))
def test_advection_conserves_energy_batched(x):
    advection = lorenz96_advection(jnp.asarray(x))
    assert advection.shape == (2, 6)
    for row in range(2):
        np.testing.assert_allclose(advection[row], numpy_lorenz96(x[row], 0.0) + x[row], atol=1e-9)
    scale = 1.0 + np.sum(np.abs(x) ** 3)
    assert np.all(np.abs(np.sum(x * np.asarray(advection), axis=-1)) <= 1e-12 * scale)


@pytest.mark.parametrize("forcing", [8.0, -2.5, 0.0, 17.0])
@pytest.mark.parametrize("n", [4, 40])
def test_uniform_forcing_state_is_an_equilibrium(n, forcing):
    model = Lorenz96(n=n, forcing=forcing)
    tendency = jit_tendency(model, jnp.full((n,), forcing))
    np.testing.assert_allclose(tendency, 0.0, atol=1e-12)
    # ...and a nudge away from it is not.
    nudged = jit_tendency(model, jnp.full((n,), forcing).at[1].add(0.5))
    assert np.max(np.abs(nudged)) > 0.1


def test_default_initial_state_is_the_nudged_equilibrium():
    model = Lorenz96(n=40)
    x0 = np.asarray(model.default_initial_state())
    expected = np.full(40, 8.0)
    expected[20] += 0.01
    np.testing.assert_array_equal(x0, expected)


def test_gradient_with_respect_to_forcing():
    # d/dF_i of w . f(x) = w_i (per-variable forcing), = sum(w) for a scalar forcing.
    n = 6
    x = jnp.asarray(np.random.default_rng(1).normal(size=n))
    weights = jnp.asarray(np.random.default_rng(2).normal(size=n))

    def loss(model):
        return weights @ jit_tendency(model, x)

    vector = eqx.filter_jit(eqx.filter_grad(loss))(Lorenz96(n=n, forcing=jnp.full((n,), 8.0)))
    np.testing.assert_allclose(vector.forcing, weights, rtol=1e-14)
    scalar = eqx.filter_jit(eqx.filter_grad(loss))(Lorenz96(n=n, forcing=8.0))
    np.testing.assert_allclose(scalar.forcing, jnp.sum(weights), rtol=1e-13)


def test_sizes_and_coordinates():
    model = Lorenz96(n=12)
    assert model.state_size == 12
    np.testing.assert_array_equal(model.coordinates(), np.arange(12.0))
    assert model.domain_length() == 12.0


@pytest.mark.parametrize("n", [3, 2, 0, -1])
def test_too_few_variables_raises(n):
    with pytest.raises(ValueError, match=r"`n` >= 4"):
        Lorenz96(n=n)


@pytest.mark.parametrize("shape", [(5,), (3,), (4, 4)])
def test_wrong_forcing_shape_raises(shape):
    with pytest.raises(ValueError, match="`forcing`"):
        Lorenz96(n=4, forcing=np.ones(shape))
