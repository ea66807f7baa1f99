"""Lorenz-63: hand-computed tendencies, fixed points, analytic Jacobian, learnable parameters."""

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.dynamics import Lorenz63

T0 = jnp.asarray(0.0)


@eqx.filter_jit
def jit_tendency(model, x):
    return model.tendency(T0, x)


@eqx.filter_jit
def jit_jacobian(model, x):
    return jax.jacfwd(lambda state: model.tendency(T0, state))(x)


def test_tendency_at_hand_computed_point_default_parameters():
    # sigma=10, rho=28, beta=8/3 at (1, 2, 3):
    # 10 (2 - 1) = 10;  1 (28 - 3) - 2 = 23;  1 * 2 - (8/3) 3 = -6.
    model = Lorenz63()
    tendency = jit_tendency(model, jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(tendency, [10.0, 23.0, -6.0], rtol=0, atol=1e-13)


def test_tendency_at_hand_computed_point_custom_parameters():
    # sigma=2, rho=5, beta=1/2 at (1, -2, 4):
    # 2 (-2 - 1) = -6;  1 (5 - 4) + 2 = 3;  1 (-2) - 4 / 2 = -4.
    model = Lorenz63(sigma=2.0, rho=5.0, beta=0.5)
    tendency = jit_tendency(model, jnp.array([1.0, -2.0, 4.0]))
    np.testing.assert_allclose(tendency, [-6.0, 3.0, -4.0], rtol=0, atol=1e-13)


def test_call_is_the_tendency():
    model = Lorenz63()
    x = jnp.array([0.3, -1.2, 20.0])
    np.testing.assert_array_equal(model(T0, x), model.tendency(T0, x))


@pytest.mark.parametrize(
    "sigma, rho, beta", [(10.0, 28.0, 8.0 / 3.0), (3.0, 14.0, 1.5), (16.0, 45.92, 4.0)]
)
def test_fixed_points_have_zero_tendency(sigma, rho, beta):
    model = Lorenz63(sigma=sigma, rho=rho, beta=beta)
    radius = np.sqrt(beta * (rho - 1.0))
    fixed_points = [
        (0.0, 0.0, 0.0),
        (radius, radius, rho - 1.0),
        (-radius, -radius, rho - 1.0),
    ]
    for point in fixed_points:
        tendency = jit_tendency(model, jnp.array(point))
        np.testing.assert_allclose(tendency, 0.0, atol=1e-12 * max(1.0, rho))


def test_non_fixed_point_has_nonzero_tendency():
    # Guards the fixed-point test against a tendency that is identically zero.
    model = Lorenz63()
    radius = np.sqrt(8.0 / 3.0 * 27.0)
    tendency = jit_tendency(model, jnp.array([radius, -radius, 27.0]))
    assert np.max(np.abs(tendency)) > 1.0


def test_jacobian_matches_analytic_form():
    sigma, rho, beta = 10.0, 28.0, 8.0 / 3.0
    model = Lorenz63(sigma=sigma, rho=rho, beta=beta)
    x1, x2, x3 = 1.3, -0.7, 21.0
    expected = np.array(
        [
            [-sigma, sigma, 0.0],
            [rho - x3, -1.0, -x1],
            [x2, x1, -beta],
        ]
    )
    jacobian = jit_jacobian(model, jnp.array([x1, x2, x3]))
    np.testing.assert_allclose(jacobian, expected, rtol=1e-14, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(x=hnp.arrays(np.float64, (3,), elements=st.floats(-50.0, 50.0)))
def test_phase_space_contraction_is_constant(x):
    # div f = -(sigma + 1 + beta) everywhere: Lorenz's uniform volume contraction.
    model = Lorenz63(sigma=10.0, rho=28.0, beta=8.0 / 3.0)
    jacobian = jit_jacobian(model, jnp.asarray(x))
    np.testing.assert_allclose(jnp.trace(jacobian), -(10.0 + 1.0 + 8.0 / 3.0), rtol=1e-13)


def test_parameters_are_array_leaves():
    model = Lorenz63(sigma=10.0, rho=28.0, beta=3.0)
    leaves = jax.tree_util.tree_leaves(model)
    assert len(leaves) == 3
    assert all(eqx.is_inexact_array(leaf) for leaf in leaves)
    assert model.state_size == 3
    assert model.domain_length() == float("inf")


def test_gradient_with_respect_to_rho_matches_analytic_and_finite_differences():
    # d/d rho of w . f(x) = w_2 x_1, since only the y-equation contains rho.
    x = jnp.array([1.7, -3.1, 22.0])
    weights = jnp.array([0.4, -1.3, 0.9])

    def loss(model):
        return weights @ jit_tendency(model, x) + 0.5 * jnp.sum(jit_tendency(model, x) ** 2)

    model = Lorenz63()
    gradients = eqx.filter_jit(eqx.filter_grad(loss))(model)
    grad_rho = float(gradients.rho)
    assert np.isfinite(grad_rho)

    def loss_at_rho(rho):
        return float(loss(eqx.tree_at(lambda m: m.rho, model, jnp.asarray(rho))))

    step = 1e-5
    finite_difference = (loss_at_rho(28.0 + step) - loss_at_rho(28.0 - step)) / (2 * step)
    np.testing.assert_allclose(grad_rho, finite_difference, rtol=1e-7)

    # Analytic: d/drho [w.f + |f|^2/2] = (w_2 + f_2) x_1.
    f2 = float(x[0] * (28.0 - x[2]) - x[1])
    np.testing.assert_allclose(grad_rho, (weights[1] + f2) * x[0], rtol=1e-12)
    # sigma's gradient: (w_1 + f_1)(x_2 - x_1).
    f1 = float(10.0 * (x[1] - x[0]))
    np.testing.assert_allclose(gradients.sigma, (weights[0] + f1) * (x[1] - x[0]), rtol=1e-12)


def test_vmap_over_states_equals_loop():
    model = Lorenz63()
    states = jax.random.normal(jax.random.key(0), (5, 3)) * 5.0 + jnp.array([[0.0, 0.0, 20.0]])
    batched = jax.vmap(lambda x: model.tendency(T0, x))(states)
    looped = np.stack([jit_tendency(model, x) for x in states])
    np.testing.assert_allclose(batched, looped, rtol=1e-14)
