"""Generative forecaster (GenSIM): pairs, normalisation, exact transitions, rollouts, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.generative import (
    DDIM,
    DDPM,
    CosineSchedule,
    DeterministicForecaster,
    DiffusionForecaster,
    ForecastNormalisation,
    ForecastPairs,
    denoising_loss,
    fit_forecaster,
    forecast_pairs,
    forecast_rollout,
)

N = 8  # grid size of the test states


def _normalisation(**changes):
    values = dict(
        state_mean=1.0, state_std=2.0, forcing_mean=10.0, forcing_std=0.5,
        increment_mean=0.1, increment_std=0.3,
    )  # fmt: skip
    values.update(changes)
    return ForecastNormalisation(**values)


class _LinearIncrement(eqx.Module):
    """The exact normalised increment of ``x⁺ = a x + b F`` (a regression network)."""

    a: float
    b: float
    normalisation: ForecastNormalisation

    def __call__(self, x_t, t, condition):
        norm = self.normalisation
        x = norm.state_mean + norm.state_std * condition[0]
        forcing = norm.forcing_mean + norm.forcing_std * condition[1]
        return norm.normalise_increment((self.a - 1) * x + self.b * forcing)


class _GaussianDenoiser(eqx.Module):
    """The exact v-prediction of data ``δ ~ N(m(c), s²)`` with ``m(c) = k · c[0]``.

    For Gaussian data the posterior mean is ``E[δ | δ_t] = m + α s² (δ_t - α m) /
    (α² s² + σ²)``; ``v̂ = α ε̂ - σ x̂_0`` with ``ε̂ = (δ_t - α x̂_0) / σ``."""

    slope: float
    std: float

    def __call__(self, x_t, t, condition):
        alpha_bar = CosineSchedule().alpha_bar(t)
        alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar)
        mean = self.slope * condition[0]
        x0 = mean + alpha * self.std**2 * (x_t - alpha * mean) / (
            alpha_bar * self.std**2 + sigma**2
        )
        noise = (x_t - alpha * x0) / sigma
        return alpha * noise - sigma * x0


class _Pointwise(eqx.Module):
    """A linear map of the condition channels at every grid point (a tiny regression)."""

    weights: jax.Array
    bias: jax.Array

    def __call__(self, x_t, t, condition):
        return self.weights @ condition + self.bias


def _trajectory(key, steps=64):
    return jnp.cumsum(jax.random.normal(key, (steps + 1, N)), axis=0)


def test_pairs_and_normalisation_round_trip():
    trajectory = _trajectory(jax.random.key(0))
    forcings = jnp.linspace(8.0, 12.0, 64)
    pairs = forecast_pairs(trajectory, forcings)
    assert len(pairs) == 64 and pairs.forcing.shape == (64, N)
    np.testing.assert_array_equal(pairs.forcing[:, 3], forcings)
    np.testing.assert_array_equal(pairs.increment, jnp.diff(trajectory, axis=0))
    # The same as fields: one value per step broadcast to the grid.
    fields = forecast_pairs(trajectory, jnp.tile(forcings[:, None], (1, N)))
    np.testing.assert_array_equal(fields.forcing, pairs.forcing)
    both = ForecastPairs.concatenate([pairs, fields])
    assert len(both) == 128

    norm = ForecastNormalisation.fit(pairs)
    increments = norm.normalise_increment(pairs.increment)
    np.testing.assert_allclose([increments.mean(), increments.std()], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(norm.denormalise_increment(increments), pairs.increment, atol=1e-12)
    condition = jax.vmap(norm.condition)(pairs.state, pairs.forcing)
    assert condition.shape == (64, 2, N)
    np.testing.assert_allclose([condition[:, 0].mean(), condition[:, 0].std()], [0, 1], atol=1e-12)
    np.testing.assert_allclose([condition[:, 1].mean(), condition[:, 1].std()], [0, 1], atol=1e-12)
    # A constant forcing gets std 1 (its channel is a constant).
    constant = ForecastNormalisation.fit(forecast_pairs(trajectory, jnp.full(64, 10.0)))
    assert float(constant.forcing_std) == 1.0


def test_increment_formulation_is_exact_for_a_known_linear_transition():
    norm = _normalisation()
    a, b = 0.9, 0.05
    forecaster = DeterministicForecaster(_LinearIncrement(a, b, norm), norm)
    x = jnp.linspace(-3.0, 5.0, N)
    np.testing.assert_allclose(forecaster(x, 9.0, jax.random.key(0)), a * x + b * 9.0, rtol=1e-12)
    forcing_field = jnp.linspace(8.0, 12.0, N)
    np.testing.assert_allclose(
        forecaster(x, forcing_field, jax.random.key(0)), a * x + b * forcing_field, rtol=1e-12
    )
    # A rollout is the iterated map, the key is unused.
    states = forecast_rollout(forecaster, x, jnp.full(5, 9.0), jax.random.key(1))
    expected, reference = x, []
    for _ in range(5):
        expected = a * expected + b * 9.0
        reference.append(expected)
    np.testing.assert_allclose(states, jnp.stack(reference), rtol=1e-10)


def test_regression_loss_is_the_mean_squared_error():
    # The deterministic forecaster trains as a no-signal, x0-predicting diffusion: its
    # denoising loss is exactly the MSE of network(0, 0, c) against the increment.
    network = _Pointwise(jnp.array([0.7, -0.3]), jnp.array(0.1))
    forecaster = DeterministicForecaster(network, _normalisation())
    increments = jax.random.normal(jax.random.key(1), (5, N))
    conditions = jax.random.normal(jax.random.key(2), (5, 2, N))
    loss = eqx.filter_jit(denoising_loss)(
        forecaster.as_diffusion(), increments, jax.random.key(3), conditions
    )
    outputs = jnp.einsum("c,bcn->bn", network.weights, conditions) + network.bias
    np.testing.assert_allclose(loss, jnp.mean((outputs - increments) ** 2), rtol=1e-12)


def test_exact_denoiser_samples_the_known_conditional_distribution():
    # δ | c ~ N(0.5 c₀, 0.4²) in normalised units; with the exact denoiser, DDIM samples
    # (through the forecaster's de-normalisation) have the transition's mean and std, up
    # to the sampler's under-dispersion with few steps (measured 0.955 with 50 steps).
    norm = _normalisation()
    slope, std = 0.5, 0.4
    forecaster = DiffusionForecaster(_GaussianDenoiser(slope, std), norm, DDIM(steps=50))
    x = jnp.linspace(-3.0, 5.0, N)
    keys = jax.random.split(jax.random.key(0), 1000)
    samples = jax.jit(jax.vmap(lambda k: forecaster(x, 10.0, k)))(keys)
    mean = x + norm.denormalise_increment(slope * (x - norm.state_mean) / norm.state_std)
    np.testing.assert_allclose(samples.mean(axis=0), mean, atol=4 * 0.3 * std / np.sqrt(1000))
    ratio = samples.std(axis=0) / (norm.increment_std * std)
    assert np.all((ratio > 0.92) & (ratio < 1.02)), ratio


def test_rollout_shapes_and_determinism():
    norm = _normalisation()
    forecaster = DiffusionForecaster(_GaussianDenoiser(0.5, 0.4), norm, DDPM(steps=3))
    x0 = jnp.tile(jnp.linspace(-1.0, 1.0, N), (3, 1))
    forcings = jnp.linspace(9.0, 11.0, 4)
    rollout = eqx.filter_jit(forecast_rollout)
    states = rollout(forecaster, x0, forcings, jax.random.key(5))
    assert states.shape == (4, 3, N) and bool(jnp.all(jnp.isfinite(states)))
    np.testing.assert_array_equal(states, rollout(forecaster, x0, forcings, jax.random.key(5)))
    assert not np.allclose(states, rollout(forecaster, x0, forcings, jax.random.key(6)))
    # Members are independent draws from one start.
    assert not np.allclose(states[0, 0], states[0, 1])
    one = eqx.filter_eval_shape(forecast_rollout, forecaster, x0[0], forcings, jax.random.key(5))
    assert one.shape == (4, N)
    assert eqx.filter_eval_shape(forecaster, x0[0], 10.0, jax.random.key(0)).shape == (N,)


def test_fit_forecaster_recovers_a_linear_gaussian_mean():
    # AR(1) with forcing: x⁺ = 0.8 x + 0.2 F + 0.2 ξ. A brief MSE fit of the
    # deterministic forecaster (a pointwise linear network) recovers the conditional mean.
    key_x, key_f, key_n, key_fit = jax.random.split(jax.random.key(0), 4)
    states = 2.0 * jax.random.normal(key_x, (400, N))
    forcings = jax.random.uniform(key_f, (400,), minval=-1.0, maxval=1.0)
    following = 0.8 * states + 0.2 * forcings[:, None] + 0.2 * jax.random.normal(key_n, (400, N))
    pairs = ForecastPairs(states, jnp.tile(forcings[:, None], (1, N)), following)
    network = _Pointwise(jnp.zeros(2), jnp.zeros(()))
    forecaster = DeterministicForecaster(network, ForecastNormalisation.fit(pairs))
    trained, fit = fit_forecaster(
        forecaster, pairs, key=key_fit, steps=200, batch_size=100, learning_rate=3e-2,
        ema_decay=0.0,
    )  # fmt: skip
    # The residual variance of the normalised increments is what remains: 0.2² / var(δ).
    floor = 0.04 / float(jnp.var(pairs.increment))
    assert fit.losses[-20:].mean() < 1.2 * floor < 0.5 * fit.losses[0]
    x = jnp.linspace(-2.0, 2.0, N)
    np.testing.assert_allclose(trained(x, 0.5, jax.random.key(0)), 0.8 * x + 0.1, atol=0.05)


def test_bad_inputs_name_the_argument():
    trajectory = _trajectory(jax.random.key(0), steps=10)
    with pytest.raises(ValueError, match="`forcings`"):
        forecast_pairs(trajectory, jnp.zeros(9))
    with pytest.raises(ValueError, match="`forcings`"):
        forecast_pairs(trajectory, jnp.zeros((10, N + 1)))
    with pytest.raises(ValueError, match="`trajectory`"):
        forecast_pairs(trajectory[:1], jnp.zeros(0))
    with pytest.raises(ValueError, match="`trajectory`"):
        forecast_pairs(trajectory.at[3, 2].set(jnp.nan), jnp.zeros(10))
    with pytest.raises(ValueError, match="`increment_std`"):
        _normalisation(increment_std=0.0)
    forecaster = DeterministicForecaster(
        _LinearIncrement(0.9, 0.0, _normalisation()), _normalisation()
    )
    # Under the jaxtyping hook of the tests the annotations catch these first (TypeError
    # naming the parameter); without it the ValueErrors do.
    with pytest.raises((ValueError, TypeError), match="[`']x[`']"):
        forecaster(jnp.zeros((2, N)), 1.0, jax.random.key(0))
    with pytest.raises((ValueError, TypeError), match="[`']forcing[`']"):
        forecaster(jnp.zeros(N), jnp.zeros(N + 1), jax.random.key(0))
    with pytest.raises(ValueError, match="`x0`"):
        forecast_rollout(forecaster, jnp.zeros((2, 2, N)), jnp.zeros(3), jax.random.key(0))
    with pytest.raises(ValueError, match="`forcings`"):
        forecast_rollout(forecaster, jnp.zeros(N), jnp.zeros((3, 2)), jax.random.key(0))
    with pytest.raises(TypeError, match="[`']pairs[`']"):
        fit_forecaster(forecaster, (trajectory, trajectory), key=jax.random.key(0), steps=1)
