"""Hybrid models: zero corrections are the physics bit for bit, the right correction is the
true model, cycling through `assimilate` / 4D-Var, gradients against finite differences."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda import Resolvent, assimilate
from hybridda.cycle import EnsembleModel
from hybridda.dynamics import Lorenz96
from hybridda.filters import ETKF, Multiplicative
from hybridda.hybrid import NeuralDynamics, ResolventCorrection, Surrogate, TendencyCorrection
from hybridda.nn import PeriodicCNN
from hybridda.observe import GaussianError, every_kth
from hybridda.variational import StrongFourDVar

from .filters.helpers import analyse
from .nn.test_networks import apply, directional_fd_check, lorenz96_bilinear

N_STATE, MEMBERS, CYCLES, DT = 8, 6, 10, 0.05
METHOD = ETKF(inflation=Multiplicative(1.05))
OBSERVATION = every_kth(N_STATE, 2, GaussianError(1.0))


def small_cnn(seed=0, readout_weight=None, readout_bias=None):
    """A periodic CNN; optionally with its readout (last layer) set by hand."""
    net = PeriodicCNN(widths=(4,), kernel_sizes=3, activation=jnp.tanh, key=jax.random.key(seed))
    if readout_weight is not None:
        readout = net.layers[-1]
        net = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            net,
            (
                jnp.full(readout.weight.shape, readout_weight),
                jnp.full(readout.bias.shape, readout_bias),
            ),
        )
    return net


@functools.cache  # built on first use, not at collection (every xdist worker collects all)
def zero_cnn():
    return small_cnn(readout_weight=0.0, readout_bias=0.0)  # c(x) = 0 exactly


@functools.cache
def constant_two_cnn():
    return small_cnn(readout_weight=0.0, readout_bias=2.0)  # c(x) = 2 exactly


@eqx.filter_jit
def step(model, x):
    return model(x, 0.3)


@eqx.filter_jit
def step_ensemble(model, E):
    return model.ensemble(E, 0.3)


@eqx.filter_jit
def run(model, y, E0, key):
    return assimilate(model, OBSERVATION, METHOD, y, E0, key)


@pytest.fixture(scope="module")
def twin():
    model = Resolvent(Lorenz96(n=N_STATE), dt=DT)
    x0 = eqx.filter_jit(hybridda.spin_up)(model, Lorenz96(n=N_STATE).default_initial_state(), 300)
    truth = eqx.filter_jit(hybridda.simulate)(model, x0, CYCLES)[1:]
    keys = jax.random.split(jax.random.key(0), 2)
    y = eqx.filter_jit(hybridda.synthesise_observations)(OBSERVATION, truth, keys[0])
    E0 = hybridda.initial_ensemble(keys[1], x0, MEMBERS, 1.0)
    return model, x0, y, E0


# ------------------------------------------------------------------ tendency correction


@pytest.mark.parametrize("steps", [1, 3])
def test_zero_tendency_correction_is_the_physical_model_bit_for_bit(twin, steps):
    _, x0, _, E0 = twin
    physical = Resolvent(Lorenz96(n=N_STATE), dt=DT, steps_per_cycle=steps)
    hybrid = Resolvent(TendencyCorrection(physical.dynamics, zero_cnn()), DT, steps)
    np.testing.assert_array_equal(step(hybrid, x0), step(physical, x0))
    np.testing.assert_array_equal(step_ensemble(hybrid, E0), step_ensemble(physical, E0))


@pytest.mark.parametrize("steps", [1, 4])
def test_tendency_correction_of_the_forcing_error_is_the_true_model(twin, steps):
    # Truth F = 8, physics F = 6: the missing tendency is the constant 2.
    _, x0, _, E0 = twin
    truth = Resolvent(Lorenz96(n=N_STATE, forcing=8.0), dt=DT, steps_per_cycle=steps)
    hybrid = Resolvent(TendencyCorrection(Lorenz96(n=N_STATE, forcing=6.0), constant_two_cnn()))
    hybrid = Resolvent(hybrid.dynamics, dt=DT, steps_per_cycle=steps)
    np.testing.assert_allclose(step(hybrid, x0), step(truth, x0), rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(
        step_ensemble(hybrid, E0), step_ensemble(truth, E0), rtol=1e-14, atol=1e-13
    )
    # ... and far from what the uncorrected physics gives.
    wrong = Resolvent(Lorenz96(n=N_STATE, forcing=6.0), dt=DT, steps_per_cycle=steps)
    assert np.abs(np.asarray(step(wrong, x0) - step(truth, x0))).max() > 0.05


def test_tendency_correction_keeps_the_geometry_of_its_dynamics():
    physical = Lorenz96(n=N_STATE)
    hybrid = TendencyCorrection(physical, zero_cnn())
    assert hybrid.state_size == N_STATE
    assert hybrid.domain_length() == physical.domain_length()
    np.testing.assert_array_equal(hybrid.coordinates(), physical.coordinates())
    np.testing.assert_array_equal(hybrid.default_initial_state(), physical.default_initial_state())


def test_neural_dynamics_with_lorenz96_weights_integrates_like_lorenz96(twin):
    _, x0, _, _ = twin
    surrogate = Resolvent(NeuralDynamics(lorenz96_bilinear(8.0), n=N_STATE), dt=DT)
    simulate = eqx.filter_jit(hybridda.simulate)
    np.testing.assert_allclose(
        simulate(surrogate, x0, 20), simulate(twin[0], x0, 20), rtol=1e-11, atol=1e-11
    )


# ------------------------------------------------------------------ resolvent correction


def test_resolvent_correction_is_an_ensemble_model(twin):
    model, x0, _, E0 = twin
    hybrid = ResolventCorrection(model, small_cnn(seed=1))
    assert isinstance(hybrid, EnsembleModel)
    assert hybrid.cycle_length == model.cycle_length
    expected = step(model, x0) + apply(small_cnn(seed=1), x0)
    np.testing.assert_allclose(step(hybrid, x0), expected, rtol=1e-14, atol=1e-14)
    members = jnp.stack([step(hybrid, x) for x in E0])
    np.testing.assert_allclose(step_ensemble(hybrid, E0), members, rtol=1e-13, atol=1e-13)


def test_assimilate_with_zero_resolvent_correction_equals_the_plain_run(twin):
    model, _, y, E0 = twin
    key = jax.random.key(1)
    plain = run(model, y, E0, key)
    hybrid = run(ResolventCorrection(model, zero_cnn()), y, E0, key)
    for field in ("forecast_mean", "analysis_mean", "analysis_spread", "final_ensemble"):
        np.testing.assert_array_equal(getattr(hybrid, field), getattr(plain, field))


def test_assimilate_applies_the_resolvent_correction_every_cycle(twin):
    model, _, y, E0 = twin
    key = jax.random.key(2)
    hybrid = ResolventCorrection(model, small_cnn(seed=3))
    trajectory = run(hybrid, y, E0, key)
    E = E0
    for k in range(CYCLES):
        E_f = step_ensemble_at(model, E, jnp.asarray(k * DT)) + apply(
            jax.vmap(hybrid.correction), E
        )
        E = analyse(METHOD, E_f, y[k], OBSERVATION, jax.random.fold_in(key, k))
        np.testing.assert_allclose(trajectory.forecast_mean[k], E_f.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(trajectory.analysis_mean[k], E.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(trajectory.final_ensemble, E, atol=1e-12)


@eqx.filter_jit
def step_ensemble_at(model, E, t0):
    return model.ensemble(E, t0)


def test_strong_4dvar_cost_runs_the_corrected_model(twin):
    model, x0, y, _ = twin
    correction = small_cnn(seed=4)
    hybrid = ResolventCorrection(model, correction)
    window = 3
    background = x0 + 0.1
    cost = StrongFourDVar(hybrid, OBSERVATION, y[:window], background, jnp.eye(N_STATE))
    # J(x0) = ½|x0 - xb|² + ½ Σ_k |y_k - H(M(x_{k-1}) + c(x_{k-1}))|² with R = B = I.
    expected, x = 0.5 * jnp.sum((x0 - background) ** 2), x0
    for k in range(window):
        x = step_at(model, x, jnp.asarray(k * DT)) + apply(correction, x)
        expected = expected + 0.5 * jnp.sum((y[k] - OBSERVATION(x)) ** 2)
    np.testing.assert_allclose(eqx.filter_jit(lambda c, x: c(x))(cost, x0), expected, rtol=1e-12)


@eqx.filter_jit
def step_at(model, x, t0):
    return model(x, t0)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("kind", ["resolvent", "tendency"])
def test_gradient_through_one_cycle_matches_finite_differences(twin, kind):
    model, _, y, E0 = twin
    key = jax.random.key(5)

    def hybrid_model(network):
        if kind == "resolvent":
            return ResolventCorrection(model, network)
        return Resolvent(TendencyCorrection(model.dynamics, network), dt=DT)

    params, static = eqx.partition(small_cnn(seed=6), eqx.is_inexact_array)

    def loss(p):
        hybrid = hybrid_model(eqx.combine(p, static))
        trajectory = assimilate(hybrid, OBSERVATION, METHOD, y[:1], E0, key)
        return jnp.sum(trajectory.analysis_mean**2) + jnp.sum(trajectory.analysis_spread)

    directional_fd_check(loss, params, seed=7, rtol=1e-6)


# ------------------------------------------------------------------ surrogates


def test_surrogate_residual_and_direct_forms(twin):
    _, x0, _, E0 = twin
    net = small_cnn(seed=8)
    residual, direct = Surrogate(net, cycle_length=DT), Surrogate(net, DT, residual=False)
    assert isinstance(residual, EnsembleModel)
    np.testing.assert_allclose(step(residual, x0), x0 + apply(net, x0), rtol=1e-14)
    np.testing.assert_allclose(step(direct, x0), apply(net, x0), rtol=1e-14)
    np.testing.assert_allclose(
        step_ensemble(residual, E0), jnp.stack([step(residual, x) for x in E0]), rtol=1e-14
    )


def test_surrogate_cycles_in_assimilate(twin):
    _, x0, y, E0 = twin
    # A residual surrogate that is one explicit Euler step of Lorenz-96: x + Δt f(x).
    euler = eqx.tree_at(
        lambda m: m.readout.weight, lorenz96_bilinear(8.0), DT * jnp.ones((1, 2, 1))
    )
    surrogate = Surrogate(euler, cycle_length=DT)
    tendency = Lorenz96(n=N_STATE).tendency(jnp.asarray(0.0), x0)
    np.testing.assert_allclose(step(surrogate, x0), x0 + DT * tendency, rtol=1e-14, atol=1e-14)
    trajectory = run(surrogate, y, E0, jax.random.key(9))
    assert np.all(np.isfinite(np.asarray(trajectory.analysis_mean)))
    np.testing.assert_allclose(trajectory.times, DT * np.arange(1, CYCLES + 1), rtol=1e-14)


def test_bad_surrogate_settings_name_the_argument():
    with pytest.raises(ValueError, match="cycle_length"):
        Surrogate(zero_cnn(), cycle_length=0.0)
    with pytest.raises(ValueError, match="`n`"):
        NeuralDynamics(zero_cnn(), n=0)
