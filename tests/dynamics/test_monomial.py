"""The local quadratic-monomial surrogate: its span holds Lorenz-96 exactly."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda.dynamics import Lorenz96, MonomialDynamics, monomial_exponents


def test_lorenz96_coefficients_reproduce_the_tendency():
    x = 4.0 * jax.random.normal(jax.random.key(0), (40,))
    for forcing in (8.0, 3.5):
        surrogate = MonomialDynamics.lorenz96(40, forcing)
        np.testing.assert_allclose(
            surrogate.tendency(0.0, x), Lorenz96(40, forcing).tendency(0.0, x), rtol=0, atol=1e-12
        )
    # ... and so the RK4 resolvents agree over many cycles (to round-off growing chaotically).
    truth = hybridda.Resolvent(Lorenz96(40)).trajectory(x, 20)
    learnt = hybridda.Resolvent(MonomialDynamics.lorenz96(40)).trajectory(x, 20)
    np.testing.assert_allclose(learnt, truth, rtol=0, atol=1e-10)


def test_lorenz96_coefficients_are_the_four_known_terms():
    surrogate = MonomialDynamics.lorenz96(40, 8.0)
    names = surrogate.monomial_names()
    assert len(names) == 18  # Bocquet et al. (2019): L = 2 gives 18 coefficients
    nonzero = {
        names[i]: float(surrogate.coefficients[i])
        for i in np.flatnonzero(np.asarray(surrogate.coefficients))
    }
    assert nonzero == {"1": 8.0, "x[i]": -1.0, "x[i-2]*x[i-1]": -1.0, "x[i-1]*x[i+1]": 1.0}


def test_each_coefficient_selects_its_monomial():
    # Brute force, site by site: coefficient m alone gives monomial m at every site.
    n, radius, distance = 9, 2, 3
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n)
    terms = monomial_exponents(radius, distance)
    expected_products = [
        (j, k)
        for j, k in itertools.product(range(-radius, radius + 1), repeat=2)
        if j <= k and k - j <= distance
    ]
    assert [t for t in terms if len(t) == 2] == expected_products
    for m, term in enumerate(terms):
        coefficients = np.zeros(len(terms))
        coefficients[m] = 1.0
        model = MonomialDynamics(n, coefficients, radius, distance)
        tendency = np.asarray(model.tendency(0.0, jnp.asarray(x)))
        for i in range(n):
            value = np.prod([x[(i + j) % n] for j in term]) if term else 1.0
            assert tendency[i] == pytest.approx(value, abs=1e-14)


def test_coefficients_are_differentiable_and_vmappable():
    x = jax.random.normal(jax.random.key(2), (12,))
    model = MonomialDynamics.lorenz96(12)
    # The tendency is linear in the coefficients: its Jacobian is the feature matrix.
    jacobian = jax.jacfwd(lambda c: MonomialDynamics(12, c).tendency(0.0, x))(model.coefficients)
    np.testing.assert_allclose(jacobian, model.features(x), rtol=0, atol=1e-14)
    batch = jnp.stack([model.coefficients, 2 * model.coefficients])
    out = jax.vmap(lambda c: MonomialDynamics(12, c).tendency(0.0, x))(batch)
    np.testing.assert_allclose(out[1], 2 * out[0], rtol=1e-14, atol=1e-13)


def test_bad_input():
    with pytest.raises(ValueError, match="coefficients"):
        MonomialDynamics(40, jnp.zeros(17))
    with pytest.raises(ValueError, match="radius"):
        MonomialDynamics(40, jnp.zeros(3), radius=0)
    with pytest.raises(ValueError, match="`n`"):
        MonomialDynamics(4, jnp.zeros(18))
    with pytest.raises(ValueError, match="product_distance"):
        MonomialDynamics(40, jnp.zeros(18), product_distance=5)
    with pytest.raises(ValueError, match="Lorenz-96 needs"):
        MonomialDynamics.lorenz96(40, radius=1)


def test_quadratic_dynamics_holds_lorenz63_exactly():
    from hybridda.dynamics import Lorenz63, QuadraticDynamics, quadratic_exponents

    x = 10.0 * jax.random.normal(jax.random.key(3), (3,))
    surrogate = QuadraticDynamics.lorenz63()
    np.testing.assert_allclose(
        surrogate.tendency(0.0, x), Lorenz63().tendency(0.0, x), rtol=0, atol=1e-12
    )
    assert surrogate.coefficients.shape == (3, 10) and len(quadratic_exponents(3)) == 10
    assert int(np.count_nonzero(np.asarray(surrogate.coefficients))) == 7
    features = surrogate.features(jnp.array([2.0, 3.0, 5.0]))
    np.testing.assert_array_equal(features, [1, 2, 3, 5, 4, 6, 10, 9, 15, 25])
    with pytest.raises(ValueError, match="one column per monomial"):
        QuadraticDynamics(np.zeros((3, 9)))
