"""Recharge oscillator: analytic eigenvalues and solution, noise statistics, bad input."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest

from hybridda import Resolvent
from hybridda.dynamics import RechargeOscillator, euler_maruyama


def _skewness(x):
    x = np.asarray(x)
    anomaly = x - x.mean()
    return float(np.mean(anomaly**3) / np.mean(anomaly**2) ** 1.5)


def test_eigenvalues_match_the_linear_operator_and_a_four_year_period():
    model = RechargeOscillator()
    decay, omega = model.eigenvalues()
    numerical = np.linalg.eigvals(np.asarray(model.matrix()))
    np.testing.assert_allclose(sorted(numerical.imag), [-omega, omega], rtol=1e-12)
    np.testing.assert_allclose(numerical.real, [decay, decay], rtol=1e-12)
    # R = -0.02, eps = 0.04: decay -0.03 / month; omega^2 = 0.02 * 0.87 - 0.01^2.
    np.testing.assert_allclose(decay, -0.03, rtol=1e-12)
    np.testing.assert_allclose(omega, np.sqrt(0.0174 - 1e-4), rtol=1e-12)
    assert 46 < 2 * np.pi / omega < 50  # months
    overdamped = RechargeOscillator(thermocline_feedback=1e-4, recharge=1e-4)
    assert np.isnan(overdamped.eigenvalues()[1])


def test_noise_free_run_follows_the_analytic_solution():
    model = RechargeOscillator(noise_t=0.0, noise_h=0.0)
    x0 = jnp.array([1.0, -3.0])
    # RK4 through the library's resolvent: the exact exp(A t) x0 to round-off level.
    months = 24
    resolvent = Resolvent(model, dt=0.125, steps_per_cycle=8 * months)
    exact = jsl.expm(model.matrix() * months) @ x0
    np.testing.assert_allclose(resolvent(x0, 0.0), exact, rtol=1e-7, atol=1e-9)
    # Euler-Maruyama without noise is explicit Euler: first-order convergence.
    errors = []
    for dt in (0.2, 0.1):
        path = euler_maruyama(model, x0, jax.random.key(0), dt=dt, steps=round(months / dt))
        errors.append(float(jnp.linalg.norm(path[-1] - exact)))
    assert 1.7 < errors[0] / errors[1] < 2.3
    # One period later the amplitude has decayed by exp(decay * period).
    decay, omega = model.eigenvalues()
    period = float(2 * jnp.pi / omega)
    one_period = jsl.expm(model.matrix() * period) @ x0
    np.testing.assert_allclose(one_period, np.exp(float(decay) * period) * x0, rtol=1e-9)


def test_state_dependent_noise_makes_el_nino_skewed_additive_noise_does_not():
    kwargs = dict(dt=0.25, steps=4 * 6000, save_every=4)
    key = jax.random.key(3)
    multiplicative = RechargeOscillator()
    additive = RechargeOscillator(multiplicative=0.0)
    T_mult = euler_maruyama(multiplicative, multiplicative.default_initial_state(), key, **kwargs)
    T_add = euler_maruyama(additive, additive.default_initial_state(), key, **kwargs)
    T_mult, T_add = T_mult[120:, 0], T_add[120:, 0]
    assert _skewness(T_mult) > 0.4
    assert abs(_skewness(T_add)) < 0.25
    assert float(T_mult.max()) > 3 * float(T_mult.std())
    assert 0.5 < float(T_add.std()) < 1.2


def test_same_key_same_path_and_shapes():
    model = RechargeOscillator()
    a = euler_maruyama(
        model, model.default_initial_state(), jax.random.key(1), dt=0.1, steps=20, save_every=10
    )
    b = euler_maruyama(
        model, model.default_initial_state(), jax.random.key(1), dt=0.1, steps=20, save_every=10
    )
    assert a.shape == (2, 2)
    np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise_clear_errors():
    model = RechargeOscillator()
    with pytest.raises(ValueError, match="multiple of `save_every`"):
        euler_maruyama(
            model, model.default_initial_state(), jax.random.key(0), dt=0.1, steps=5, save_every=2
        )
    with pytest.raises(ValueError, match="`dt` must be > 0"):
        euler_maruyama(model, model.default_initial_state(), jax.random.key(0), dt=0.0, steps=5)
    with pytest.raises(ValueError, match="noise_t"):
        RechargeOscillator(noise_t=-1.0)
