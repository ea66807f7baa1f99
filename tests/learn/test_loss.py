"""The rollout loss against hand computations: inverse-variance weights with a floor,
discounted steps, one- and two-step rollouts, the L2 penalty on weight matrices only."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.learn import AnalysisDataset, RolloutLoss, rollout, rollout_pairs

from .helpers import linear_correction_model

ANALYSIS = np.array([[1.0, 2.0], [3.0, 1.0], [5.0, 6.0]])
VARIANCE = np.array([[0.5, 1.0], [2.0, 0.25], [1.0, 3.0]])
FLOOR = 0.5


def doubling(x):
    return 2.0 * x


# x⁺ = I x + I x = 2 x, as a hybrid model (physics + bias-free linear correction).
DOUBLING_HYBRID = linear_correction_model(np.eye(2), init=np.eye(2))


def test_rollout_applies_the_model_repeatedly():
    x0 = jnp.asarray([1.0, -3.0])
    np.testing.assert_array_equal(
        rollout(doubling, x0, 3), [[2.0, -6.0], [4.0, -12.0], [8.0, -24.0]]
    )


@pytest.mark.parametrize("steps", [1, 8, 9, 12])  # unrolled (<= 8 steps) and scanned
def test_rollout_unrolled_and_scanned_agree(steps):
    x0 = jnp.asarray([1.0, -3.0])
    expected = np.asarray(x0)[None, :] * 2.0 ** np.arange(1, steps + 1)[:, None]
    np.testing.assert_array_equal(rollout(doubling, x0, steps), expected)
    np.testing.assert_array_equal(
        jax.jit(rollout, static_argnums=(0, 2))(doubling, x0, steps), expected
    )


@pytest.mark.parametrize("model", [doubling, DOUBLING_HYBRID], ids=["function", "hybrid"])
def test_weighted_two_step_loss_by_hand(model):
    pairs = rollout_pairs(AnalysisDataset(ANALYSIS, VARIANCE), rollout=2)  # one window
    loss = RolloutLoss(discount=0.5, variance_floor=FLOOR)
    # Step 1: 2·(1, 2) = (2, 4) against (3, 1): errors (-1, 3), variances (2, 0.25) + 0.5.
    # Step 2: 4·(1, 2) = (4, 8) against (5, 6): errors (-1, 2), variances (1, 3) + 0.5.
    step_1 = (1 / 2.5 + 9 / 0.75) / 2
    step_2 = (1 / 1.5 + 4 / 3.5) / 2
    expected = (1.0 * step_1 + 0.5 * step_2) / (1.0 + 0.5)
    np.testing.assert_allclose(loss(model, pairs), expected, rtol=1e-14)


def test_weighted_one_step_loss_by_hand():
    pairs = rollout_pairs(AnalysisDataset(ANALYSIS, VARIANCE), rollout=1)  # two windows
    loss = RolloutLoss(discount=0.5, variance_floor=FLOOR)  # discount: nothing to discount
    # Window 0: (2, 4) against (3, 1); window 1: 2·(3, 1) = (6, 2) against (5, 6).
    window_0 = (1 / 2.5 + 9 / 0.75) / 2
    window_1 = (1 / 1.5 + 16 / 3.5) / 2
    np.testing.assert_allclose(
        loss.window_losses(doubling, pairs), [window_0, window_1], rtol=1e-14
    )
    np.testing.assert_allclose(loss(doubling, pairs), (window_0 + window_1) / 2, rtol=1e-14)


def test_without_variance_the_weights_are_one():
    pairs = rollout_pairs(AnalysisDataset(ANALYSIS), rollout=2)
    loss = RolloutLoss(discount=0.5, variance_floor=FLOOR)  # the floor plays no part
    expected = (1.0 * (1 + 9) / 2 + 0.5 * (1 + 4) / 2) / 1.5
    np.testing.assert_allclose(loss(doubling, pairs), expected, rtol=1e-14)
    # With per-cycle variances (K,) broadcast over the variables.
    per_cycle = rollout_pairs(AnalysisDataset(ANALYSIS, np.array([9.0, 1.5, 3.5])), rollout=2)
    expected = (1.0 * (1 + 9) / 2 / 2.0 + 0.5 * (1 + 4) / 2 / 4.0) / 1.5
    np.testing.assert_allclose(loss(doubling, per_cycle), expected, rtol=1e-14)


def test_penalty_covers_weight_matrices_only():
    layer = eqx.nn.Linear(3, 2, key=jax.random.key(0))  # weight (2, 3), bias (2,)
    loss = RolloutLoss(l2=0.1)
    expected = 0.1 * float(jnp.sum(layer.weight**2))
    np.testing.assert_allclose(loss.penalty(layer), expected, rtol=1e-14)
    assert float(RolloutLoss().penalty(layer)) == 0.0
    np.testing.assert_allclose(RolloutLoss(discount=0.5).step_weights(3), np.array([4, 2, 1]) / 7)


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"discount": 0.0}, "discount"),
        ({"discount": float("inf")}, "discount"),
        ({"variance_floor": 0.0}, "variance_floor"),
        ({"variance_floor": -1e-3}, "variance_floor"),
        ({"l2": -1.0}, "l2"),
    ],
)
def test_bad_loss_settings(settings, name):
    with pytest.raises(ValueError, match=f"`{name}` must be a finite number"):
        RolloutLoss(**settings)
