"""Bounded fields: the sea-ice generator, per-channel censored likelihoods, bound fractions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from hybridda import metrics
from hybridda.generative import (
    CensoredGaussian,
    Gaussian,
    SeaIceFields,
    bound_fractions,
    channel_values,
)

KEY = jax.random.key(0)


@eqx.filter_jit
def log_prob(likelihood, x, head):
    return likelihood.log_prob(x, head)


@eqx.filter_jit
def log_probs(likelihood, xs, head):
    return jax.vmap(lambda x: likelihood.log_prob(x, head))(xs)


@pytest.fixture(scope="module")
def fields():
    generator = SeaIceFields(grid=(16, 24))
    return np.asarray(jax.jit(jax.vmap(generator))(jax.random.split(KEY, 200)))


def test_generated_fields_respect_the_bounds_with_mass_on_them(fields):
    assert fields.shape == (200, 2, 16, 24)
    concentration, thickness = fields[:, 0], fields[:, 1]
    assert concentration.min() == 0.0 and concentration.max() == 1.0
    assert thickness.min() == 0.0 and np.all(np.isfinite(thickness))
    fractions = bound_fractions(fields, SeaIceFields.lower, SeaIceFields.upper)
    # Large areas exactly on each bound, a marginal zone between (measured 0.32 / 0.36).
    assert 0.15 < float(fractions.at_lower[0]) < 0.5
    assert 0.15 < float(fractions.at_upper[0]) < 0.5
    assert 0.1 < float(fractions.between[0]) < 0.5
    assert float(fractions.below.max()) == 0.0 and float(fractions.above.max()) == 0.0
    # No ice, no thickness: exactly where the concentration is 0, and only there.
    np.testing.assert_array_equal(thickness == 0, concentration == 0)
    # Pack ice in the north (last rows), open ocean in the south.
    assert concentration[:, -2:].mean() > 0.7 > 0.3 > concentration[:, :2].mean()


def test_generator_is_a_function_of_the_key_and_periodic_in_x(fields):
    generator = SeaIceFields(grid=(16, 24))
    again = np.asarray(jax.jit(generator)(jax.random.split(KEY, 200)[3]))
    np.testing.assert_allclose(again, fields[3], rtol=1e-12, atol=1e-14)
    assert not np.allclose(fields[3], fields[4])
    # The random field has unit variance (the spectral normalisation) and the spectrum
    # of the concentration decays with wavenumber.
    random_fields = jax.jit(jax.vmap(lambda k: generator._random_field(k, jnp.float64)))
    draws = random_fields(jax.random.split(KEY, 400))
    assert abs(float(draws.std()) - 1.0) < 0.05
    spectrum = np.asarray(metrics.power_spectral_density(fields[:, 0], axis=-1).density)
    assert spectrum[1] > 10 * spectrum[-1]


def test_bound_fractions_count_exact_values_per_channel():
    values = np.array([[-0.1, 0.0, 0.5, 1.0, 1.0, 2.0], [0.0, 0.0, 3.0, 7.0, 1.0, 1.0]])
    result = bound_fractions(values.reshape(1, 2, 2, 3), (0.0, 0.0), (1.0, np.inf))
    np.testing.assert_allclose(result.below, [1 / 6, 0])
    np.testing.assert_allclose(result.at_lower, [1 / 6, 2 / 6])
    np.testing.assert_allclose(result.between, [1 / 6, 4 / 6])
    np.testing.assert_allclose(result.at_upper, [2 / 6, 0])
    np.testing.assert_allclose(result.above, [1 / 6, 0])


def test_per_channel_censored_likelihood_matches_its_analytic_form():
    grid = (2, 3)
    lower = channel_values([0.0, 0.0], grid)
    upper = channel_values([1.0, np.inf], grid)
    std = channel_values([0.2, 0.5], grid)
    likelihood = CensoredGaussian(lower, upper, std)
    assert lower.shape == (12,) and float(upper[5]) == 1.0 and float(upper[6]) == np.inf
    x = np.array([0.0, 0.3, 1.0, 1.0, 0.0, 0.7, 0.0, 2.5, 0.0, 4.0, 0.1, 9.0])
    head = np.array([-0.1, 0.2, 1.3, 0.8, 0.4, 0.6, -0.2, 2.0, 0.3, 3.0, 0.0, 10.0])
    s = np.asarray(std)
    expected = np.where(
        x <= np.asarray(lower),
        scipy.stats.norm.logcdf(np.asarray(lower), head, s),
        np.where(
            x >= np.asarray(upper),
            scipy.stats.norm.logsf(np.asarray(upper), head, s),
            scipy.stats.norm.logpdf(x, head, s),
        ),
    ).sum()
    result = log_prob(likelihood, jnp.asarray(x), jnp.asarray(head))
    np.testing.assert_allclose(float(result), expected, rtol=1e-12)


def test_mass_on_the_bound_integrates_with_the_density_to_one():
    """P(x = 0) + ∫_0^∞ p(x) dx = 1 for the thickness channel (lower bound only)."""
    likelihood = CensoredGaussian(0.0, np.inf, 0.5)
    head = jnp.array([0.3])
    grid = np.linspace(0.0, 8.0, 16001)  # x = 0 (the mass), then the density beyond
    values = np.exp(np.asarray(log_probs(likelihood, jnp.asarray(grid)[:, None], head)))
    mass, density = values[0], values[1:]
    assert mass == pytest.approx(scipy.stats.norm.cdf(0.0, 0.3, 0.5), rel=1e-12)
    assert mass > 0.2  # a finite probability of exactly zero thickness
    # The density beyond the bound is the Gaussian's (no renormalisation).
    np.testing.assert_allclose(density, scipy.stats.norm.pdf(grid[1:], 0.3, 0.5), rtol=1e-12)
    midpoints = 0.5 * (density[1:] + density[:-1]) * np.diff(grid[1:])
    assert mass + midpoints.sum() + density[0] * grid[1] == pytest.approx(1.0, abs=1e-6)


def test_unbounded_censored_gaussian_is_the_plain_gaussian():
    std = jnp.array([0.3, 0.7, 1.1])
    unbounded = CensoredGaussian(-jnp.inf, jnp.inf, std)
    x, head = jnp.array([0.1, -2.0, 5.0]), jnp.array([0.0, 1.0, 4.0])
    np.testing.assert_allclose(
        float(log_prob(unbounded, x, head)), float(log_prob(Gaussian(std), x, head)), rtol=1e-14
    )
    np.testing.assert_array_equal(
        eqx.filter_jit(unbounded.point)(jnp.array([-3.0, 0.5, 9.0])), [-3.0, 0.5, 9.0]
    )


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="`grid` must be a pair"):
        SeaIceFields(grid=(16,))
    with pytest.raises(ValueError, match="`grid` must be a pair"):
        SeaIceFields(grid=(2, 16))
    with pytest.raises(ValueError, match="`correlation_length` must be a finite number > 0"):
        SeaIceFields(correlation_length=0.0)
    with pytest.raises(ValueError, match="`noise` must be a finite number >= 0"):
        SeaIceFields(noise=-1.0)
    with pytest.raises(ValueError, match="`thickness_correlation` must lie in"):
        SeaIceFields(thickness_correlation=1.5)
    with pytest.raises(ValueError, match="`values` must hold one value per channel"):
        channel_values(0.0, (4, 4))
    fields = np.zeros((3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"`lower` must hold one bound per channel, shape \(2,\)"):
        bound_fractions(fields, (0.0,), (1.0, 1.0))
    with pytest.raises(ValueError, match="`lower` must be < `upper`"):
        bound_fractions(fields, (0.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match=r"`fields` must have shape \(..., channels, ny, nx\)"):
        bound_fractions(np.zeros((4, 4)), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="`lower` must be < `upper`"):
        CensoredGaussian(channel_values([0.0, 1.0], (2, 2)), channel_values([1.0, 1.0], (2, 2)))
