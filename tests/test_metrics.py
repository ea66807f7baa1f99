"""Verification metrics against NumPy re-implementations and closed forms."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda import metrics
from hybridda.metrics import summary, time_average

# Jitted: one compilation per shape instead of one per primitive.
rmse = jax.jit(metrics.rmse)
spread = jax.jit(metrics.spread)
crps = jax.jit(metrics.crps)
rank_histogram = jax.jit(metrics.rank_histogram)


def test_rmse_matches_numpy():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(6, 10))
    estimate = truth + rng.normal(scale=0.3, size=(6, 10))
    expected = np.sqrt(np.mean((estimate - truth) ** 2, axis=-1))
    np.testing.assert_allclose(
        rmse(jnp.asarray(truth), jnp.asarray(estimate)), expected, rtol=1e-14
    )
    np.testing.assert_allclose(
        rmse(jnp.asarray(truth[2]), jnp.asarray(estimate[2])), expected[2], rtol=1e-14
    )


def test_rmse_of_constant_offset_is_the_offset():
    truth = jnp.asarray(np.random.default_rng(1).normal(size=8))
    np.testing.assert_allclose(rmse(truth, truth - 0.25), 0.25, rtol=1e-14)


def test_spread_matches_numpy():
    rng = np.random.default_rng(2)
    ensemble = rng.normal(size=(4, 7, 12)) * rng.uniform(0.1, 2.0, size=(4, 1, 12))
    expected = np.sqrt(np.mean(np.var(ensemble, axis=1, ddof=1), axis=-1))
    np.testing.assert_allclose(spread(jnp.asarray(ensemble)), expected, rtol=1e-13)
    np.testing.assert_allclose(spread(jnp.asarray(ensemble[0])), expected[0], rtol=1e-13)


def test_spread_of_two_members_is_half_distance_times_root_two():
    # Unbiased variance of {a, b} is (a - b)² / 2.
    ensemble = jnp.array([[0.0, 1.0, 2.0], [1.0, 3.0, 5.0]])
    expected = np.sqrt(np.mean(np.array([1.0, 4.0, 9.0]) / 2.0))
    np.testing.assert_allclose(spread(ensemble), expected, rtol=1e-14)


def test_crps_of_single_member_is_absolute_error():
    rng = np.random.default_rng(3)
    member = rng.normal(size=(5, 1, 9))
    truth = rng.normal(size=(5, 9))
    expected = np.mean(np.abs(member[:, 0, :] - truth), axis=-1)
    np.testing.assert_allclose(crps(jnp.asarray(member), jnp.asarray(truth)), expected, rtol=1e-14)


def crps_double_loop(ensemble, truth):
    """E|X - y| - ½ E|X - X'| per variable, averaged over variables, by explicit loops."""
    members, variables = ensemble.shape
    total = 0.0
    for v in range(variables):
        skill = sum(abs(ensemble[i, v] - truth[v]) for i in range(members)) / members
        dispersion = sum(
            abs(ensemble[i, v] - ensemble[j, v]) for i in range(members) for j in range(members)
        )
        total += skill - 0.5 * dispersion / members**2
    return total / variables


def crps_by_integration(ensemble, truth):
    """∫ (F_ens(z) - 1{z ≥ y})² dz, exactly: both CDFs are piecewise constant."""
    members, variables = ensemble.shape
    total = 0.0
    for v in range(variables):
        points = np.sort(np.append(ensemble[:, v], truth[v]))
        for left, right in zip(points[:-1], points[1:], strict=True):
            ensemble_cdf = np.mean(ensemble[:, v] <= left)
            truth_cdf = float(truth[v] <= left)
            total += (ensemble_cdf - truth_cdf) ** 2 * (right - left)
    return total / variables


def test_crps_matches_brute_force_and_integral_definition():
    rng = np.random.default_rng(4)
    ensemble = rng.normal(size=(3, 6, 5))
    truth = rng.normal(size=(3, 5))
    result = np.asarray(crps(jnp.asarray(ensemble), jnp.asarray(truth)))
    assert result.shape == (3,)
    for time in range(3):
        np.testing.assert_allclose(
            result[time], crps_double_loop(ensemble[time], truth[time]), rtol=1e-13
        )
        np.testing.assert_allclose(
            result[time], crps_by_integration(ensemble[time], truth[time]), rtol=1e-12
        )


def test_rank_histogram_truth_below_all_members():
    rng = np.random.default_rng(5)
    K, N, n = 4, 6, 3
    ensemble = rng.uniform(0.0, 1.0, size=(K, N, n))
    counts = np.asarray(rank_histogram(jnp.asarray(ensemble), jnp.full((K, n), -1.0)))
    assert counts.shape == (N + 1,)
    np.testing.assert_array_equal(counts, [K * n] + [0] * N)
    above = np.asarray(rank_histogram(jnp.asarray(ensemble), jnp.full((K, n), 2.0)))
    np.testing.assert_array_equal(above, [0] * N + [K * n])


def test_rank_histogram_matches_numpy_counting():
    rng = np.random.default_rng(6)
    K, N, n = 7, 5, 4
    ensemble = rng.normal(size=(K, N, n))
    truth = rng.normal(size=(K, n))
    expected = np.zeros(N + 1, dtype=int)
    for time in range(K):
        for variable in range(n):
            expected[np.sum(ensemble[time, :, variable] < truth[time, variable])] += 1
    counts = np.asarray(rank_histogram(jnp.asarray(ensemble), jnp.asarray(truth)))
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == K * n


def test_rank_histogram_of_exchangeable_truth_is_flat():
    # Truth drawn from the members' distribution: every rank has probability 1 / (N + 1).
    K, N, n = 2000, 4, 5
    draws = np.random.default_rng(7).normal(size=(K, N + 1, n))
    counts = np.asarray(rank_histogram(jnp.asarray(draws[:, :N, :]), jnp.asarray(draws[:, N, :])))
    total, p = K * n, 1.0 / (N + 1)
    assert np.all(np.abs(counts - total * p) < 5 * np.sqrt(total * p * (1 - p))), counts


def test_time_average_with_burn_in():
    series = jnp.asarray(np.random.default_rng(8).normal(size=(10, 3)))
    np.testing.assert_allclose(time_average(series), np.mean(series, axis=0), rtol=1e-14)
    np.testing.assert_allclose(time_average(series, burn_in=4), np.mean(series[4:], axis=0))
    np.testing.assert_allclose(time_average(series[:, 0], burn_in=9), series[9, 0])


@pytest.mark.parametrize("burn_in", [10, 11, -1])
def test_time_average_burn_in_out_of_range_raises(burn_in):
    with pytest.raises(ValueError, match="`burn_in`"):
        time_average(jnp.ones(10), burn_in=burn_in)


def test_summary_combines_metrics():
    rng = np.random.default_rng(9)
    truth = rng.normal(size=(6, 4))
    analysis_mean = truth + 0.1 * rng.normal(size=(6, 4))
    forecast_mean = truth + 0.5 * rng.normal(size=(6, 4))
    trajectory = types.SimpleNamespace(
        analysis_mean=jnp.asarray(analysis_mean),
        forecast_mean=jnp.asarray(forecast_mean),
        analysis_spread=jnp.asarray(rng.uniform(size=6)),
        forecast_spread=jnp.asarray(rng.uniform(size=6)),
    )
    result = summary(jnp.asarray(truth), trajectory, burn_in=2)

    def averaged_rmse(estimate):
        return np.mean(np.sqrt(np.mean((estimate - truth) ** 2, axis=-1))[2:])

    assert result["rmse_analysis"] == pytest.approx(averaged_rmse(analysis_mean), rel=1e-13)
    assert result["rmse_forecast"] == pytest.approx(averaged_rmse(forecast_mean), rel=1e-13)
    spread_analysis = np.mean(np.asarray(trajectory.analysis_spread)[2:])
    spread_forecast = np.mean(np.asarray(trajectory.forecast_spread)[2:])
    assert result["spread_analysis"] == pytest.approx(spread_analysis, rel=1e-13)
    assert result["spread_forecast"] == pytest.approx(spread_forecast, rel=1e-13)


# ---------------------------------------------------------------- probability forecasts

# Jitted: one compilation per shape instead of one per primitive.
brier_score = jax.jit(metrics.brier_score, static_argnums=2)
reliability_diagram = jax.jit(metrics.reliability_diagram, static_argnums=2)
PROBABILITY = jnp.array([0.0, 0.25, 0.3, 0.5, 0.95, 1.0])
OUTCOME = jnp.array([False, False, True, True, True, True])


def test_brier_score_exact():
    # (0 + 0.25² + 0.7² + 0.5² + 0.05² + 0) / 6 = 0.805 / 6
    assert float(brier_score(PROBABILITY, OUTCOME)) == pytest.approx(0.805 / 6, rel=1e-14)
    per_row = metrics.brier_score(PROBABILITY.reshape(2, 3), OUTCOME.reshape(2, 3), axis=-1)
    np.testing.assert_allclose(per_row, [0.5525 / 3, 0.2525 / 3], rtol=1e-14)
    # A perfect forecast scores 0; climatology q scores q(1 - q).
    assert float(brier_score(OUTCOME.astype(float), OUTCOME)) == 0.0
    q = float(OUTCOME.mean())
    assert float(brier_score(jnp.full(6, q), OUTCOME)) == pytest.approx(q * (1 - q))


def test_crps_of_a_binary_ensemble_is_the_brier_score_of_its_fraction():
    members = jnp.array([[[1.0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1]]])  # 1 time, N=4, n=3
    truth = jnp.array([[1.0, 0, 0]])
    fraction = members.mean(axis=1)  # 0.75, 0.25, 0.75
    expected = (0.25**2 + 0.25**2 + 0.75**2) / 3
    assert float(metrics.brier_score(fraction, truth)) == pytest.approx(expected, rel=1e-14)
    assert float(metrics.crps(members, truth)[0]) == pytest.approx(expected, rel=1e-14)


def test_reliability_diagram_exact():
    diagram = reliability_diagram(PROBABILITY, OUTCOME, 4)
    np.testing.assert_allclose(diagram.bin_edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(diagram.counts, [1, 2, 1, 2])  # 0.25 opens bin 1, 1.0 closes 3
    np.testing.assert_allclose(diagram.forecast_probability, [0, 0.275, 0.5, 0.975], rtol=1e-14)
    np.testing.assert_allclose(diagram.observed_frequency, [0, 0.5, 1, 1], rtol=1e-14)
    # (2 · 0.225² + 0.5² + 2 · 0.025²) / 6
    assert float(diagram.reliability()) == pytest.approx(0.3525 / 6, rel=1e-14)


def test_reliability_diagram_empty_bins_and_event_frequencies():
    probability = jnp.array([0.1, 0.2, 0.9])
    diagram = reliability_diagram(probability, jnp.array([0.0, 1.0, 1.0]), 3)
    np.testing.assert_array_equal(diagram.counts, [2, 0, 1])
    np.testing.assert_allclose(diagram.forecast_probability, [0.15, np.nan, 0.9], rtol=1e-14)
    np.testing.assert_allclose(diagram.observed_frequency, [0.5, np.nan, 1.0], rtol=1e-14)
    assert float(diagram.reliability()) == pytest.approx((2 * 0.35**2 + 0.1**2) / 3, rel=1e-14)
    # Outcomes may be event frequencies (e.g. over an ensemble of truths).
    frequencies = reliability_diagram(probability, jnp.array([0.2, 0.4, 1.0]), 3)
    np.testing.assert_allclose(frequencies.observed_frequency, [0.3, np.nan, 1.0], rtol=1e-14)


def test_bad_probability_forecasts_raise_clear_errors():
    with pytest.raises(ValueError, match="`probability` must lie in"):
        metrics.brier_score(jnp.array([0.5, 1.2]), jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="`outcome` must be binary"):
        metrics.brier_score(jnp.array([0.5, 0.2]), jnp.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="`outcome` must lie in"):
        metrics.reliability_diagram(jnp.array([0.5, 0.2]), jnp.array([0.0, 2.0]))
    with pytest.raises((ValueError, TypeError), match="shape"):  # jaxtyping's check first
        metrics.brier_score(jnp.array([0.5, 0.2]), jnp.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="bins"):
        metrics.reliability_diagram(PROBABILITY, OUTCOME, 0)


# ---------------------------------------------------------------- energy score


def energy_double_loop(ensemble, truth):
    members = len(ensemble)
    skill = np.mean([np.linalg.norm(x - truth) for x in ensemble])
    pairs = sum(np.linalg.norm(a - b) for a in ensemble for b in ensemble)
    return skill - 0.5 * pairs / members**2


def test_energy_score_matches_brute_force_and_the_crps_in_one_dimension():
    rng = np.random.default_rng(0)
    # Three scales and an offset: the Gram-matrix form must not lose precision.
    ensemble = rng.normal(size=(3, 7, 5)) * np.array([1.0, 10.0, 100.0])[:, None, None] + 3.0
    truth = rng.normal(size=(3, 5))
    result = np.asarray(jax.jit(metrics.energy_score)(jnp.asarray(ensemble), jnp.asarray(truth)))
    assert result.shape == (3,)
    for k in range(3):
        np.testing.assert_allclose(result[k], energy_double_loop(ensemble[k], truth[k]), rtol=1e-10)
    one = jnp.asarray(ensemble[0, :, :1]), jnp.asarray(truth[0, :1])
    np.testing.assert_allclose(
        float(metrics.energy_score(*one)), float(metrics.crps(*one)), rtol=1e-12
    )
