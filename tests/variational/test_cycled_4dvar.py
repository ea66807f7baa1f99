"""Cycled 4D-Var: window cycling against a hand-written loop, and against 3D-Var."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda as hda
from hybridda.cycle import assimilate_windows
from hybridda.observe import GaussianError, every_kth
from hybridda.twin import TwinConfig, run_twin
from hybridda.variational import FourDVar, StrongFourDVar, gauss_newton


@pytest.fixture(scope="module")
def twin():
    n, window, windows = 8, 3, 4
    model = hda.Resolvent(hda.dynamics.Lorenz96(n=n), dt=0.05)
    x0 = hda.spin_up(model, model.dynamics.default_initial_state(), 300)
    truth = hda.simulate(model, x0, window * windows)[1:]
    observation = every_kth(n, 2, GaussianError(1.0))
    y = hda.synthesise_observations(observation, truth, jax.random.key(0))
    B = 0.5 * jnp.eye(n)
    background = x0 + jax.random.normal(jax.random.key(1), (n,))
    return model, observation, y, B, background, window, windows


def test_window_cycling_equals_a_hand_written_loop(twin):
    model, observation, y, B, background, window, windows = twin
    method = FourDVar(B, window=window, outer_loops=6, inner_loops=30)
    trajectory = assimilate_windows(
        model, observation, method, y, background[None], jax.random.key(2)
    )

    # One window by hand, compiled once for all windows (the window index is an array).
    @eqx.filter_jit
    def one_window(xb, y_window, w):
        cost = StrongFourDVar(
            model, observation, y_window, xb, B,
            t0=w * window * model.cycle_length, first_cycle=w * window,
        )  # fmt: skip
        result = gauss_newton(cost, xb, max_iterations=6, inner_iterations=30)
        forecast = hda.simulate(model, xb, window)[-1]
        return cost.trajectory(result.control)[-1], forecast, result

    xb = background
    for w in range(windows):
        xb, xb_forecast, result = one_window(xb, y[w * window : (w + 1) * window], jnp.asarray(w))
        np.testing.assert_allclose(trajectory.analysis_mean[w], xb, atol=1e-10)
        np.testing.assert_allclose(trajectory.forecast_mean[w], xb_forecast, atol=1e-10)
        np.testing.assert_allclose(trajectory.costs[w], result.costs, atol=1e-10)
        assert bool(trajectory.converged[w]) == bool(result.converged)
    np.testing.assert_allclose(
        trajectory.times, model.cycle_length * window * (1 + np.arange(windows))
    )


def test_bad_window_arguments(twin):
    model, observation, y, B, background, window, _ = twin
    with pytest.raises(ValueError, match="window"):
        FourDVar(B, window=0)
    with pytest.raises((ValueError, TypeError), match="minimiser"):  # beartype in tests
        FourDVar(B, minimiser="newton")
    with pytest.raises(ValueError, match="plus a multiple of the shift"):
        assimilate_windows(
            model, observation, FourDVar(B, window=5), y, background[None], jax.random.key(0)
        )
    # A non-finite cost stops the run with an error that names the window.
    bad = background.at[0].set(jnp.inf)[None]
    with pytest.raises(Exception, match="window 0 \\(cycles 0 to 2"):
        jax.block_until_ready(
            assimilate_windows(
                model, observation, FourDVar(B, window=window), y, bad, jax.random.key(0)
            ).analysis_mean
        )


@pytest.mark.slow
def test_4dvar_beats_3dvar_on_lorenz63_sakov2012():
    # Lorenz-63, dt = 0.01, all variables observed every 25 steps with variance 2
    # (DAPPER "sakov2012": 3D-Var ≈ 1.04). Same B (scaled climatology) for both.
    base = TwinConfig(
        model="lorenz63",
        dt=0.01,
        steps_per_cycle=25,
        obs_std=2**0.5,
        background_scale=0.05,
        cycles=400,
        burn_in=100,
    )
    var3d = run_twin(base.replace(method="3dvar"), seed=0).metrics
    var4d = run_twin(base.replace(method="4dvar", window=1), seed=0).metrics
    assert 0.8 < var3d["rmse_analysis"] < 1.4
    assert var4d["rmse_analysis"] < 0.85 * var3d["rmse_analysis"]
    assert var4d["unconverged_windows"] <= 0.1 * base.cycles
