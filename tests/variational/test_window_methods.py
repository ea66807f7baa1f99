"""Hybrid-B 4D-Var against the Kalman filter, overlapping 4D-Var windows, and gradients of
whole cycled window-method losses against finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda as hda
from hybridda.cycle import assimilate_windows
from hybridda.filters import ETKF, IEnKS, Multiplicative
from hybridda.observe import GaussianError, every_kth
from hybridda.variational import FourDVar, StrongFourDVar, gauss_newton
from tests.filters.helpers import linear_twin

N_STATE, CYCLES = 4, 12  # as in linear_twin


@pytest.fixture(scope="module")
def linear():
    return linear_twin(3)


@pytest.mark.parametrize("window", [1, 3])
def test_fully_ensemble_hybrid_4dvar_is_the_kalman_filter(linear, window):
    # β = 1: B is the ETKF ensemble's covariance (exact for N - 1 >= n), so each window's
    # 4D-Var is the Kalman smoother and the re-centred ensemble the Kalman filter.
    model, observation, y, E0 = linear.model, linear.observation, linear.y, linear.E0
    method = FourDVar(
        1e3 * jnp.eye(N_STATE),  # ignored with β = 1
        window=window,
        ensemble_filter=ETKF(),
        hybrid_weight=1.0,
        outer_loops=2,
        inner_loops=20,
        tolerance=1e-12,
    )
    trajectory = eqx.filter_jit(assimilate_windows)(
        model, observation, method, y, E0, jax.random.key(1)
    )
    means, covariances = linear.kalman_filter()
    ends = np.arange(window - 1, CYCLES, window)
    np.testing.assert_allclose(trajectory.analysis_mean, means[ends], atol=1e-8)
    spread = np.sqrt(np.trace(covariances[ends], axis1=1, axis2=2) / N_STATE)
    np.testing.assert_allclose(trajectory.analysis_spread, spread, rtol=1e-8)


def test_zero_hybrid_weight_is_static_4dvar(linear):
    model, observation, y, E0 = linear.model, linear.observation, linear.y, linear.E0
    B = 0.5 * jnp.eye(N_STATE)
    static = FourDVar(B, window=3)
    hybrid = FourDVar(B, window=3, ensemble_filter=ETKF(), hybrid_weight=0.0)
    key = jax.random.key(1)
    plain = assimilate_windows(model, observation, static, y, E0[:1], key)
    mixed = assimilate_windows(model, observation, hybrid, y, E0, key)
    # Same background mean at the first window only (then the carried ensembles differ).
    first_plain = assimilate_windows(model, observation, static, y[:3], E0.mean(0)[None], key)
    np.testing.assert_allclose(mixed.analysis_mean[0], first_plain.analysis_mean[0], atol=1e-10)
    assert plain.analysis_mean.shape == mixed.analysis_mean.shape


def test_overlapping_4dvar_windows_follow_the_single_da_rule(linear):
    # Window 3, shift 1: window 0 assimilates cycles 0-2; window j >= 1 starts from the
    # previous analysis propagated one cycle and assimilates only its last cycle.
    model, observation, y, E0 = linear.model, linear.observation, linear.y, linear.E0
    B = 0.5 * jnp.eye(N_STATE)
    method = FourDVar(B, window=3, shift=1, outer_loops=2, inner_loops=30, tolerance=1e-12)
    trajectory = eqx.filter_jit(assimilate_windows)(
        model, observation, method, y, E0[:1], jax.random.key(0)
    )

    @eqx.filter_jit  # one program for every window (j, its data and weights are traced)
    def single_window(background, j, weights):
        y_window = jax.lax.dynamic_slice_in_dim(y, j, 3)
        t0 = j * model.cycle_length
        cost = StrongFourDVar(model, observation, y_window, background, B, t0, j, weights)
        result = gauss_newton(cost, background, max_iterations=2, inner_iterations=30)
        return cost.trajectory(result.control)

    background = E0[0]
    for j in range(CYCLES - 2):
        weights = jnp.asarray([1.0, 1.0, 1.0] if j == 0 else [0.0, 0.0, 1.0])
        states = single_window(background, jnp.asarray(j), weights)
        np.testing.assert_allclose(trajectory.analysis_mean[j], states[-1], atol=1e-9)
        background = states[0]


@pytest.fixture(scope="module")
def lorenz96_twin():
    n = 8
    model = hda.Resolvent(hda.dynamics.Lorenz96(n=n), dt=0.05, steps_per_cycle=2)
    x0 = hda.spin_up(model, model.dynamics.default_initial_state(), 300)
    truth = hda.simulate(model, x0, 12)[1:]
    observation = every_kth(n, 2, GaussianError(1.0))
    y = hda.synthesise_observations(observation, truth, jax.random.key(0))
    E0 = hda.initial_ensemble(jax.random.key(1), x0, 6, 0.5)
    return model, observation, y, truth, E0


def _central_difference(f, x, h=1e-5):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize(
    ("method_name", "kind", "checkpointed"),
    [
        ("4dvar", "analysis_rmse", True),
        ("ienks", "innovation_rmse", True),
        # Rematerialisation of the IEnKS window scan is checked on the line above; here
        # only the per-window score differs, so its second compilation (about 8 s) is skipped.
        ("ienks", "forecast_rmse", False),
    ],
)
def test_cycled_window_loss_gradient_matches_finite_differences(
    lorenz96_twin, method_name, kind, checkpointed
):
    model, observation, y, truth, E0 = lorenz96_twin
    if method_name == "4dvar":
        method = FourDVar(0.5 * jnp.eye(8), window=3, outer_loops=3, inner_loops=20)
        init = E0.mean(0)[None]
    else:
        method = IEnKS(window=2, shift=1, iterations=3, inflation=Multiplicative(1.05))
        init = E0

    def cycled(forcing, checkpoint=None):
        forced = eqx.tree_at(lambda m: m.dynamics.forcing, model, forcing)
        return hda.cycled_loss(
            forced, observation, method, y, init, jax.random.key(2), kind=kind, truth=truth,
            burn_in=2, checkpoint=checkpoint,
        )  # fmt: skip

    # Two compiled programs, plain and checkpointed; the differences reuse the plain one
    # (the gradient of a jitted function compiles its transpose separately: one XLA CPU
    # compile of that kind segfaulted once, under load).
    value_and_grad = eqx.filter_jit(jax.value_and_grad(cycled))
    F = jnp.asarray(8.3)
    value, gradient = value_and_grad(F)
    difference = _central_difference(lambda x: value_and_grad(x)[0], F)
    np.testing.assert_allclose(gradient, difference, rtol=1e-5, atol=1e-8)
    if checkpointed:
        value_c, gradient_c = value_and_grad(F, checkpoint=2)
        np.testing.assert_allclose(value_c, value, rtol=1e-12)
        np.testing.assert_allclose(gradient_c, gradient, rtol=1e-9)


def test_window_loss_rejects_what_windows_cannot_give(lorenz96_twin):
    model, observation, y, truth, E0 = lorenz96_twin
    method = IEnKS(window=1)
    with pytest.raises(ValueError, match="innovation_rmse"):
        hda.cycled_loss(model, observation, method, y, E0, jax.random.key(0))
    with pytest.raises(ValueError, match="truncate"):
        hda.cycled_loss(
            model, observation, method, y, E0, jax.random.key(0), kind="innovation_rmse",
            truncate=4,
        )  # fmt: skip
