"""Analysis datasets: rollout windows by hand, missing analyses skipped, variances from a
trajectory, and a deterministic block split in which no window straddles train and
validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.cycle import Trajectory
from hybridda.learn import AnalysisDataset, rollout_pairs, train_validation_split

KEY = jax.random.key(0)


def counting(cycles: int, n: int = 2, offset: float = 0.0) -> np.ndarray:
    """Row ``k`` is ``offset + 10 k + (0, 1, ...)``: every value names its cycle."""
    return offset + 10.0 * np.arange(cycles)[:, None] + np.arange(n)[None, :]


def test_windows_are_consecutive_analyses():
    analysis = counting(5)
    variance = 0.1 * np.arange(1, 6)  # one per cycle
    pairs = rollout_pairs(AnalysisDataset(analysis, variance), rollout=2)
    assert len(pairs) == 3 and pairs.rollout == 2 and pairs.state_size == 2
    for k in range(3):
        np.testing.assert_array_equal(pairs.inputs[k], analysis[k])
        np.testing.assert_array_equal(pairs.targets[k], analysis[k + 1 : k + 3])
        np.testing.assert_allclose(
            pairs.variance[k], np.repeat(variance[k + 1 : k + 3, None], 2, 1)
        )


def test_windows_never_cross_trajectories_and_skip_missing_analyses():
    first, second = counting(6), counting(4, offset=1000.0)
    first[2, 1] = np.nan  # one missing value removes the windows through cycle 2
    pairs = rollout_pairs([AnalysisDataset(first), AnalysisDataset(second)], rollout=1)
    starts = [float(x) for x in pairs.inputs[:, 0]]
    # first: windows (0,1), (3,4), (4,5); second: (0,1), (1,2), (2,3) — none from 5 to 1000.
    assert starts == [0.0, 30.0, 40.0, 1000.0, 1010.0, 1020.0]
    assert pairs.variance is None
    # A non-finite variance counts as missing too.
    variance = np.ones((6, 2))
    variance[4, 0] = np.inf
    pairs = rollout_pairs(AnalysisDataset(counting(6), variance), rollout=1)
    assert [float(x) for x in pairs.inputs[:, 0]] == [0.0, 10.0, 20.0, 40.0]


def test_variance_from_trajectory():
    rng = np.random.default_rng(0)
    ensemble = rng.standard_normal((4, 5, 3))  # (K, N, n)
    spread = np.sqrt(np.mean(np.var(ensemble, axis=1, ddof=1), axis=1))
    trajectory = Trajectory(
        times=jnp.arange(4.0),
        forecast_mean=jnp.zeros((4, 3)),
        analysis_mean=jnp.asarray(ensemble.mean(axis=1)),
        forecast_spread=jnp.ones(4),
        analysis_spread=jnp.asarray(spread),
        final_ensemble=jnp.asarray(ensemble[-1]),
        analysis_ensemble=jnp.asarray(ensemble),
    )
    per_variable = AnalysisDataset.from_trajectory(trajectory)
    np.testing.assert_allclose(per_variable.variance, np.var(ensemble, axis=1, ddof=1))
    np.testing.assert_allclose(per_variable.analysis, ensemble.mean(axis=1))
    per_cycle = AnalysisDataset.from_trajectory(trajectory, ensemble=False)
    np.testing.assert_allclose(per_cycle.variance, np.repeat(spread[:, None] ** 2, 3, axis=1))


def test_split_is_deterministic_disjoint_and_by_blocks():
    data = [AnalysisDataset(counting(100)), AnalysisDataset(counting(37, offset=1e4))]
    train, validation = train_validation_split(data, 0.3, key=KEY, block_length=10)
    again = train_validation_split(data, 0.3, key=KEY, block_length=10)
    assert [np.asarray(s.analysis).tolist() for s in train + validation] == [
        np.asarray(s.analysis).tolist() for s in again[0] + again[1]
    ]
    other = train_validation_split(data, 0.3, key=jax.random.key(1), block_length=10)
    assert [s.cycles for s in validation] != [s.cycles for s in other[1]]

    def cycles(segments):
        return {tuple(row) for s in segments for row in np.asarray(s.analysis).tolist()}

    train_cycles, validation_cycles = cycles(train), cycles(validation)
    assert not train_cycles & validation_cycles
    assert len(train_cycles) + len(validation_cycles) == 137  # nothing lost with gap=0
    # 14 blocks (10 + 4), round(0.3 * 14) = 4 held out: 3 of 10 cycles and maybe the 7-cycle one.
    assert len(validation_cycles) in (40, 37)
    for segment in validation:  # each segment is whole blocks of consecutive cycles
        steps = np.diff(np.asarray(segment.analysis)[:, 0])
        assert np.all(steps == 10.0)
        assert segment.cycles % 10 == 0 or segment.analysis[-1, 0] % 1e4 == 360.0
    # Rollout windows built from the segments stay on their side.
    inputs = {float(x) for x in rollout_pairs(validation, 3).inputs[:, 0]}
    assert inputs <= {row[0] for row in validation_cycles}


def test_split_gap_separates_the_sets():
    data = AnalysisDataset(counting(200, n=1))
    train, validation = train_validation_split(data, 0.5, key=KEY, block_length=20, gap=5)
    train_cycles = np.concatenate([np.asarray(s.analysis)[:, 0] for s in train]) / 10
    validation_cycles = np.concatenate([np.asarray(s.analysis)[:, 0] for s in validation]) / 10
    distance = np.abs(train_cycles[:, None] - validation_cycles[None, :]).min()
    assert distance == 6  # 5 cycles dropped between them
    assert len(train_cycles) == 100  # the gap comes out of the validation side


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="`validation_fraction` must be a number strictly"):
        train_validation_split(AnalysisDataset(counting(50)), fraction, key=KEY)


@pytest.mark.parametrize("fraction", [True, "0.2"])
def test_split_rejects_fraction_of_wrong_type(fraction):
    # Our check, or the runtime type check (jaxtyping + beartype) when it is switched on.
    expected = "`validation_fraction` must be a number strictly|parameter 'validation_fraction'"
    with pytest.raises((ValueError, TypeError), match=expected):
        train_validation_split(AnalysisDataset(counting(50)), fraction, key=KEY)


def test_bad_datasets():
    with pytest.raises(ValueError, match="`rollout` .* must be an integer >= 1, got 0"):
        rollout_pairs(AnalysisDataset(counting(5)), 0)
    missing = np.full((30, 2), np.nan)
    with pytest.raises(ValueError, match="no training window .* 30 of them with a missing"):
        rollout_pairs(AnalysisDataset(missing), 1)
    with pytest.raises(ValueError, match="no training window"):
        rollout_pairs(AnalysisDataset(counting(3)), 3)  # shorter than rollout + 1
    with pytest.raises(ValueError, match="`variance` must have shape"):
        AnalysisDataset(counting(5), np.ones((5, 3)))
    with pytest.raises(ValueError, match="`variance` must be >= 0"):
        AnalysisDataset(counting(5), -np.ones(5))
    with pytest.raises(ValueError, match="`analysis` must have shape"):
        AnalysisDataset(np.ones(5))
    with pytest.raises(ValueError, match="at least 2"):
        train_validation_split(AnalysisDataset(counting(5)), 0.2, key=KEY, block_length=10)
    with pytest.raises(ValueError, match="Either every dataset"):
        rollout_pairs([AnalysisDataset(counting(5)), AnalysisDataset(counting(5), np.ones(5))], 1)
