"""Surrogate diagnostics: forecast skill, valid time, Lyapunov spectra, spectra, histograms.

Oracles: closed forms of linear models, the constant Jacobian trace of Lorenz-63 and
Lorenz-96 (the sum of all exponents), published exponents, Parseval's theorem, SciPy's
periodogram and Wasserstein distance, exactly computable histograms.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal, stats

import hybridda
from hybridda import Resolvent, metrics
from hybridda.dynamics import Lorenz63, Lorenz96

# One compilation per model and shape; `leads`, `cycles`, `count` are static ints.
forecast_skill = eqx.filter_jit(metrics.forecast_skill)
lyapunov_spectrum = eqx.filter_jit(metrics.lyapunov_spectrum)
attractor_histograms = eqx.filter_jit(metrics.attractor_histograms)


def rotation(angle):
    return jnp.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def circle_truth(cycles=40, angle=0.3, radius=2.0):
    """``x_{k+1} = R x_k`` for a rotation ``R``: every state has norm `radius`."""
    phases = angle * np.arange(cycles)
    return radius * np.stack([np.cos(phases), np.sin(phases)], axis=-1)


# --- forecast_skill ---------------------------------------------------------------------


def test_forecast_skill_of_scaled_rotation_matches_closed_form():
    # Truth rotates on a circle of radius r; the model also scales by c each cycle, so
    # at lead k the error is (c^k - 1) R^k x_s and its RMSE |c^k - 1| r / √2 exactly.
    truth, radius, scale, leads = circle_truth(radius=2.0), 2.0, 1.1, 6
    R = rotation(0.3)
    skill = forecast_skill(lambda x: scale * (R @ x), truth, np.array([0, 5, 17, 30]), leads)
    expected = np.abs(scale ** np.arange(leads + 1) - 1.0) * radius / np.sqrt(2.0)
    np.testing.assert_allclose(skill.rmse, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(skill.rmse_per_start, np.tile(expected, (4, 1)), atol=1e-12)
    climate = np.sqrt(np.mean(np.var(truth, axis=0)))
    np.testing.assert_allclose(skill.climatological_std, climate, rtol=1e-14)
    np.testing.assert_allclose(skill.normalised_rmse, expected / climate, rtol=1e-12, atol=1e-14)


def test_forecast_skill_from_perturbed_initial_states_keeps_the_initial_error():
    # The true (norm-preserving) model from x_s + e_s: the error R^k e_s keeps its RMSE.
    truth, starts = circle_truth(), np.array([1, 4, 9])
    errors = np.array([[0.3, -0.1], [0.0, 0.2], [-0.5, 0.5]])
    R = rotation(0.3)
    skill = forecast_skill(lambda x: R @ x, truth, starts, 5, initial_states=truth[starts] + errors)
    expected = np.sqrt(np.mean(errors**2, axis=-1))
    np.testing.assert_allclose(skill.rmse_per_start, np.tile(expected[:, None], (1, 6)), rtol=1e-12)
    np.testing.assert_allclose(skill.rmse, np.full(6, expected.mean()), rtol=1e-12)


def test_forecast_skill_with_given_climatological_std_and_without_jit():
    truth, R = circle_truth(), rotation(0.3)
    skill = metrics.forecast_skill(lambda x: 0.9 * (R @ x), truth, jnp.arange(3), 4, None, 4.0)
    np.testing.assert_allclose(skill.normalised_rmse, skill.rmse / 4.0, rtol=1e-15)
    jitted = forecast_skill(lambda x: 0.9 * (R @ x), truth, jnp.arange(3), 4, None, 4.0)
    np.testing.assert_allclose(jitted.rmse, skill.rmse, rtol=1e-13)


def test_forecast_skill_true_model_beats_a_wrong_forcing_on_lorenz96():
    # Perfect model from the truth: zero error; a surrogate with F = 9 diverges, and
    # its valid time is shorter than the true model's from the same perturbed starts.
    model = Resolvent(Lorenz96(n=40, forcing=8.0), dt=0.05)
    x0 = eqx.filter_jit(hybridda.spin_up)(model, Lorenz96(n=40).default_initial_state(), 200)
    truth = eqx.filter_jit(hybridda.simulate)(model, x0, 200)
    starts, leads = jnp.arange(0, 120, 6), 60
    perfect = forecast_skill(model, truth, starts, leads)
    np.testing.assert_allclose(perfect.rmse, 0.0, atol=1e-10)
    noise = 0.1 * jax.random.normal(jax.random.key(0), (starts.shape[0], 40))
    true_skill = forecast_skill(model, truth, starts, leads, truth[starts] + noise)
    surrogate = Resolvent(Lorenz96(n=40, forcing=9.0), dt=0.05)
    surrogate_skill = forecast_skill(surrogate, truth, starts, leads, truth[starts] + noise)
    np.testing.assert_allclose(true_skill.rmse[0], surrogate_skill.rmse[0], rtol=1e-14)
    true_valid = metrics.valid_time(true_skill.normalised_rmse, 0.05, 1.68)
    surrogate_valid = metrics.valid_time(surrogate_skill.normalised_rmse, 0.05, 1.68)
    assert bool(true_valid.exceeded) and bool(surrogate_valid.exceeded)
    assert 0 < int(surrogate_valid.lead) < int(true_valid.lead)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(starts=np.array([0, 38])), "`starts` \\+ `leads`"),
        (dict(starts=np.array([-1, 3])), "`starts` \\+ `leads`"),
        (dict(leads=0), "`leads`"),
        (dict(climatological_std=0.0), "`climatological_std`"),
    ],
)
def test_forecast_skill_bad_input_raises(kwargs, match):
    arguments = (
        dict(model=lambda x: x, truth=circle_truth(), starts=np.array([0, 3]), leads=2) | kwargs
    )
    with pytest.raises(ValueError, match=match):
        metrics.forecast_skill(**arguments)


def test_forecast_skill_out_of_range_starts_raise_under_jit():
    with pytest.raises(Exception, match="`starts` out of range"):
        forecast_skill(lambda x: x, circle_truth(), jnp.array([0, 39]), 2)


# --- valid_time -------------------------------------------------------------------------


def test_valid_time_is_the_first_lead_above_threshold():
    error = jnp.array([0.0, 0.2, 0.5, 0.7, 0.4, 1.2])  # 0.5 itself does not exceed 0.5
    valid = metrics.valid_time(error, dt_cycle=0.05, lyapunov_exponent=1.68)
    assert int(valid.lead) == 3 and bool(valid.exceeded)
    np.testing.assert_allclose(valid.model_time, 0.15, rtol=1e-14)
    np.testing.assert_allclose(valid.lyapunov_time, 0.15 * 1.68, rtol=1e-14)
    strict = metrics.valid_time(error, dt_cycle=0.05, threshold=0.3)
    assert int(strict.lead) == 2 and strict.lyapunov_time is None


def test_valid_time_never_exceeded_returns_the_horizon_and_nan_counts_as_exceeded():
    errors = jnp.array([[0.0, 0.1, 0.2, 0.3], [0.1, 0.2, jnp.nan, 0.3], [0.6, 0.1, 0.1, 0.1]])
    valid = metrics.valid_time(errors, dt_cycle=0.5, lyapunov_exponent=2.0)
    np.testing.assert_array_equal(valid.lead, [3, 2, 0])
    np.testing.assert_array_equal(valid.exceeded, [False, True, True])
    np.testing.assert_allclose(valid.model_time, [1.5, 1.0, 0.0])
    np.testing.assert_allclose(valid.lyapunov_time, [3.0, 2.0, 0.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dt_cycle=0.0), "`dt_cycle`"),
        (dict(threshold=-0.5), "`threshold`"),
        (dict(lyapunov_exponent=-0.1), "`lyapunov_exponent`"),
    ],
)
def test_valid_time_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.valid_time(**(dict(normalised_error=jnp.ones(3), dt_cycle=0.1) | kwargs))


# --- lyapunov_spectrum ------------------------------------------------------------------


def test_lyapunov_spectrum_of_linear_map_is_log_abs_eigenvalues():
    # A non-normal map with eigenvalues 2, -1.5, 0.8, 0.3: after the transient the basis
    # spans the dominant invariant subspaces and |R_ii| = |eigenvalue_i| every cycle.
    eigenvalues = np.array([2.0, -1.5, 0.8, 0.3])
    V = np.random.default_rng(0).normal(size=(4, 4)) + 2.0 * np.eye(4)
    A = jnp.asarray(V @ np.diag(eigenvalues) @ np.linalg.inv(V))
    expected = np.log(np.abs(eigenvalues)) / 0.5
    exponents = lyapunov_spectrum(
        lambda x: A @ x, jnp.ones(4), 50, 0.5, key=jax.random.key(0), transient_cycles=150
    )
    np.testing.assert_allclose(exponents, expected, rtol=1e-10, atol=1e-10)
    leading = lyapunov_spectrum(
        lambda x: A @ x, jnp.ones(4), 50, 0.5, 2, key=jax.random.key(1), transient_cycles=150
    )
    np.testing.assert_allclose(leading, expected[:2], rtol=1e-10)
    # The same map as a residual surrogate x + (A - I) x; dt_cycle from its cycle_length.
    surrogate = hybridda.Surrogate(lambda x: (A - jnp.eye(4)) @ x, cycle_length=0.5)
    exponents = lyapunov_spectrum(
        surrogate, jnp.ones(4), 50, key=jax.random.key(0), transient_cycles=150
    )
    np.testing.assert_allclose(exponents, expected, rtol=1e-10, atol=1e-10)


def test_lyapunov_spectrum_lorenz63_published_values_and_exact_sum():
    # Sprott (2003): (0.9056, 0, -14.5723). The sum is the constant Jacobian trace
    # -(sigma + 1 + beta) at any averaging time (up to the RK4 error, ~1e-4 here).
    model = Resolvent(Lorenz63(), dt=0.01, steps_per_cycle=10)
    exponents = lyapunov_spectrum(
        model,
        Lorenz63().default_initial_state(),
        10_000,
        key=jax.random.key(0),
        transient_cycles=200,
    )
    np.testing.assert_allclose(exponents, [0.9056, 0.0, -14.5723], atol=0.03)
    np.testing.assert_allclose(jnp.sum(exponents), -(10.0 + 1.0 + 8.0 / 3.0), rtol=2e-5)


def test_lyapunov_spectrum_lorenz96_sum_is_minus_n():
    # The advection term is divergence-free: the Jacobian trace is -n at every state.
    model = Resolvent(Lorenz96(n=8), dt=0.01, steps_per_cycle=5)
    x0 = Lorenz96(n=8).default_initial_state()
    exponents = lyapunov_spectrum(model, x0, 200, key=jax.random.key(0), transient_cycles=20)
    np.testing.assert_allclose(jnp.sum(exponents), -8.0, rtol=1e-5)


def test_lyapunov_spectrum_lorenz96_leading_exponent():
    # n = 40, F = 8: λ_max ≈ 1.68-1.69 (e.g. Brajard et al. 2020 use 1.68); the spread of
    # finite-time estimates over T = 5000 is about ±0.015.
    model = Resolvent(Lorenz96(n=40), dt=0.05)
    leading = lyapunov_spectrum(
        model,
        Lorenz96().default_initial_state(),
        100_000,
        count=1,
        key=jax.random.key(0),
        transient_cycles=1000,
    )
    np.testing.assert_allclose(leading, [1.68], atol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(count=5), "`count`"),
        (dict(count=0), "`count`"),
        (dict(cycles=0), "`cycles`"),
        (dict(transient_cycles=-1), "`transient_cycles`"),
        (dict(dt_cycle=-0.1), "`dt_cycle`"),
        (dict(dt_cycle=None), "`dt_cycle` is needed"),
        (dict(model=lambda x: x[:2]), "same shape"),
    ],
)
def test_lyapunov_spectrum_bad_input_raises(kwargs, match):
    arguments = dict(model=lambda x: 2.0 * x, x0=jnp.ones(4), cycles=3, dt_cycle=0.1)
    with pytest.raises(ValueError, match=match):
        metrics.lyapunov_spectrum(**(arguments | kwargs), key=jax.random.key(0))


# --- power_spectral_density -------------------------------------------------------------


@pytest.mark.parametrize("points", [40, 41])
def test_power_spectral_density_parseval_and_scipy_periodogram(points):
    series = np.random.default_rng(1).normal(size=(7, points)) + 0.3
    spectrum = metrics.power_spectral_density(series, axis=-1, spacing=0.25)
    step = 1.0 / (points * 0.25)
    np.testing.assert_allclose(jnp.sum(spectrum.density) * step, np.mean(series**2), rtol=1e-12)
    frequencies, density = signal.periodogram(series, fs=4.0, detrend=False, axis=-1)
    np.testing.assert_allclose(spectrum.frequencies, frequencies, rtol=1e-14)
    np.testing.assert_allclose(spectrum.density, density.mean(axis=0), rtol=1e-12)


def test_power_spectral_density_of_a_sinusoid_is_one_wavenumber():
    # Integer wavenumbers with spacing = 1/n: density_k is the power A²/2 at k = 3 only.
    n, amplitude = 40, 1.7
    space = np.arange(n) / n
    phases = np.linspace(0.0, 2.0 * np.pi, 5, endpoint=False)[:, None]
    fields = amplitude * np.cos(2.0 * np.pi * 3 * space[None, :] + phases)
    spectrum = metrics.power_spectral_density(fields, spacing=1.0 / n)
    np.testing.assert_allclose(spectrum.frequencies, np.arange(n // 2 + 1), atol=1e-12)
    expected = np.zeros(n // 2 + 1)
    expected[3] = amplitude**2 / 2
    np.testing.assert_allclose(spectrum.density, expected, atol=1e-12)
    # In time (axis 0, a step dt): the power sits at the frequency 3 / (n dt).
    temporal = metrics.power_spectral_density(fields.T, axis=0, spacing=0.05)
    assert int(jnp.argmax(temporal.density)) == 3
    np.testing.assert_allclose(temporal.frequencies[3], 3 / (n * 0.05), rtol=1e-14)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(axis=2), "`axis`"), (dict(spacing=0.0), "`spacing`"), (dict(axis=0), ">= 2 points")],
)
def test_power_spectral_density_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.power_spectral_density(jnp.ones((1, 8)), **kwargs)


# --- attractor_histograms ---------------------------------------------------------------


def test_attractor_histograms_of_shifted_uniforms_are_exact():
    # U(0, 1) vs U(0.5, 1.5) on bins of width 0.25: half the mass overlaps, so
    # TV = 1/2, Hellinger = sqrt(1 - 1/2), W1 = the shift; densities 1 on each support.
    samples = (np.arange(1000) + 0.5) / 1000
    result = attractor_histograms(
        samples.reshape(100, 10), samples + 0.5, bins=6, value_range=(0.0, 1.5)
    )
    np.testing.assert_allclose(result.edges, np.linspace(0.0, 1.5, 7), rtol=1e-15)
    np.testing.assert_allclose(result.truth_density, [1, 1, 1, 1, 0, 0], rtol=1e-13)
    np.testing.assert_allclose(result.other_density, [0, 0, 1, 1, 1, 1], rtol=1e-13)
    np.testing.assert_allclose(result.total_variation, 0.5, rtol=1e-13)
    np.testing.assert_allclose(result.hellinger, np.sqrt(0.5), rtol=1e-13)
    np.testing.assert_allclose(result.wasserstein, 0.5, rtol=1e-12)


def test_attractor_histograms_of_the_same_distribution_are_zero_for_any_size():
    samples = np.random.default_rng(2).normal(size=(50, 8))
    result = attractor_histograms(samples, np.concatenate([samples, samples]), bins=20)
    for distance in (result.total_variation, result.hellinger, result.wasserstein):
        np.testing.assert_allclose(distance, 0.0, atol=1e-7)
    width = np.diff(np.asarray(result.edges))
    np.testing.assert_allclose(jnp.sum(result.truth_density * width), 1.0, rtol=1e-13)
    constant = attractor_histograms(np.full(5, 2.0), np.full(3, 2.0), bins=4)
    np.testing.assert_allclose(np.asarray(constant.edges)[[0, -1]], [1.5, 2.5], rtol=1e-15)
    np.testing.assert_allclose(constant.total_variation, 0.0, atol=1e-15)


def test_attractor_histograms_of_shifted_gaussians_match_closed_forms():
    # N(0, 1) vs N(mu, 1), by exact quantiles: TV = 2Φ(mu/2) - 1,
    # Hellinger² = 1 - exp(-mu²/8), W1 = mu; binning costs ~1e-3 on Hellinger.
    mu = 1.0
    quantiles = stats.norm.ppf((np.arange(20_000) + 0.5) / 20_000)
    result = attractor_histograms(quantiles, quantiles + mu, bins=200, value_range=(-6.0, 6.0 + mu))
    np.testing.assert_allclose(result.total_variation, 2 * stats.norm.cdf(mu / 2) - 1, atol=2e-4)
    np.testing.assert_allclose(result.hellinger, np.sqrt(1 - np.exp(-(mu**2) / 8)), atol=3e-3)
    np.testing.assert_allclose(result.wasserstein, mu, rtol=1e-9)


def test_wasserstein_matches_scipy_for_unequal_sizes():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.gamma(2.0, size=170)
    np.testing.assert_allclose(
        metrics.wasserstein_1(a, b), stats.wasserstein_distance(a, b), rtol=1e-12
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(other_series=np.array([0.0, np.inf])), "`other_series` has non-finite"),
        (dict(truth_series=np.array([np.nan, 1.0])), "`truth_series` has non-finite"),
        (dict(bins=0), "`bins`"),
        (dict(value_range=(1.0, 1.0)), "`value_range`"),
        (dict(other_series=np.zeros(0)), "must both hold values"),
    ],
)
def test_attractor_histograms_bad_input_raises(kwargs, match):
    arguments = dict(truth_series=np.arange(4.0), other_series=np.arange(3.0)) | kwargs
    with pytest.raises(ValueError, match=match):
        metrics.attractor_histograms(**arguments)


def test_attractor_histograms_diverged_run_raises_under_jit():
    with pytest.raises(Exception, match="`other_series` has non-finite"):
        attractor_histograms(jnp.arange(4.0), jnp.array([0.0, jnp.nan]))


# --- figures ----------------------------------------------------------------------------


def test_figures_are_written(tmp_path):
    from hybridda import plot

    truth, R = circle_truth(), rotation(0.3)
    curves = {
        "true model": forecast_skill(lambda x: R @ x, truth, jnp.arange(4), 5, truth[:4] + 0.1),
        "surrogate": jnp.array([0.1, 0.3, 0.6, 0.8, 1.0, 1.2]),
    }
    skill = plot.skill_vs_lead(curves, 0.05, tmp_path / "skill.png", lyapunov_exponent=1.68)
    histograms = metrics.attractor_histograms(truth, 1.1 * truth, bins=10)
    comparison = plot.histogram_comparison(histograms, tmp_path / "histograms.png")
    assert skill.stat().st_size > 0 and comparison.stat().st_size > 0
