"""EM M-step pieces: the model-error variance and the transition fit, on exact answers."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.learn import TransitionFit, fit_transitions, model_error_variance


class _Scale(eqx.Module):
    """``x -> a x``: a one-parameter linear model with the `ensemble` interface."""

    a: jnp.ndarray

    def ensemble(self, E, t0=0.0):
        return self.a * E


def test_model_error_variance_is_the_mean_square_residual():
    states = jnp.array([[1.0, 2.0], [3.0, -1.0]])
    following = jnp.array([[2.5, 4.0], [6.0, -1.0]])
    # residuals of x -> 2x: [[0.5, 0], [0, 1]]
    model = _Scale(jnp.asarray(2.0))
    assert float(model_error_variance(model, states, following)) == 0.3125  # (0.25 + 1) / 4
    np.testing.assert_array_equal(
        model_error_variance(model, states, following, diagonal=True), [0.125, 0.5]
    )
    with pytest.raises((ValueError, TypeError)):
        model_error_variance(model, states, following[:1])


def test_transition_fit_recovers_the_least_squares_parameter():
    # For x -> a x the minimiser is a = Σ x_k x_{k+1} / Σ x_k² exactly (one Gauss-Newton
    # step solves this linear problem); chunks of 2 samples with padding of the last.
    states = jnp.array([[1.0], [2.0], [-1.0]])
    following = jnp.array([[2.0], [3.0], [-3.0]])
    cost = TransitionFit(_Scale(jnp.asarray(0.0)), lambda m: m.a, states, following, 4.0)
    a, costs = fit_transitions(cost, iterations=2, chunk=2)
    np.testing.assert_allclose(a, 11.0 / 6.0, rtol=1e-9)  # damping 1e-10 of diag(JᵀJ)
    # J(a) = ½ Σ (x_{k+1} - a x_k)² / q: ½ 22 / 4 at a = 0, ½ (22 - 11²/6) / 4 at the minimum.
    np.testing.assert_allclose(costs[0], 0.5 * 22.0 / 4.0, rtol=1e-12)
    np.testing.assert_allclose(costs[-1], 0.5 * (22.0 - 121.0 / 6.0) / 4.0, rtol=1e-9)
    with pytest.raises((ValueError, TypeError)):
        TransitionFit(_Scale(jnp.asarray(0.0)), lambda m: m.a, states, following, jnp.ones(2))


def test_model_error_variance_of_ensembles_uses_the_unbiased_spread():
    # Two transitions of two members under x -> 2x; residuals [[0.5, 0], [0, 1]] and
    # [[1, 1], [3, 1]]. Per transition: squared mean + variance with 1/(N-1).
    states = jnp.array([[[1.0, 2.0], [3.0, -1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    residuals = jnp.array([[[0.5, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 1.0]]])
    model = _Scale(jnp.asarray(2.0))
    following = 2.0 * states + residuals
    # transition 0: means [0.25, 0.5], variances [0.125, 0.5] -> [0.1875, 0.75]
    # transition 1: means [2, 1], variances [2, 0] -> [6, 1]
    np.testing.assert_allclose(
        model_error_variance(model, states, following, diagonal=True), [3.09375, 0.875]
    )
    np.testing.assert_allclose(model_error_variance(model, states, following), 1.984375)
    with pytest.raises(ValueError, match="members >= 2"):
        model_error_variance(model, states[:, :1], following[:, :1])
