"""U-Net and time-MLP denoisers: output shapes for every layout, translation equivariance
with periodic padding (1-D ring, 2-D channel), the effect of the time and the condition,
and clear errors for bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.nn import TimeMLP, UNet, sinusoidal_embedding
from tests.nn.helpers import numpy_init

KEY = jax.random.key(0)
T = jnp.asarray(0.3)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
    "spatial_dims, padding, channels, condition_channels, grid",
    [
        (1, "periodic", 1, 0, (16,)),
        (1, "zero", 2, 1, (12,)),
        (2, "channel", 1, 2, (8, 16)),
        (2, "periodic", 3, 0, (4, 8)),
        (2, "zero", 1, 1, (4, 4)),
    ],
)
def test_output_has_the_input_layout(spatial_dims, padding, channels, condition_channels, grid):
    net = eqx.filter_eval_shape(  # abstract: no weights drawn, nothing compiled
        lambda key: UNet(
            spatial_dims,
            channels,
            channels,
            condition_channels=condition_channels,
            widths=(4, 8),
            time_features=8,
            padding=padding,
            key=key,
            dtype=jnp.float32,
        ),
        KEY,
    )
    x = jax.ShapeDtypeStruct(grid if channels == 1 else (channels, *grid), jnp.float32)
    condition = None
    if condition_channels:
        shape = grid if condition_channels == 1 else (condition_channels, *grid)
        condition = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = eqx.filter_eval_shape(net, x, T, condition)
    assert out.shape == x.shape and out.dtype == jnp.float32


@eqx.filter_jit
def apply_batch(net, xs, ts, conditions):
    return jax.vmap(net)(xs, ts, conditions)


def test_periodic_unets_commute_with_translations_and_feel_time_and_condition():
    ring = numpy_init(
        lambda key: UNet(
            1, condition_channels=1, widths=(4, 8), time_features=8, key=key, dtype=jnp.float32
        )
    )
    x, c = normal(1, (16,)), normal(2, (16,))
    xs = jnp.stack([x, jnp.roll(x, 2), jnp.roll(x, 1), x, x])
    cs = jnp.stack([c, jnp.roll(c, 2), jnp.roll(c, 1), c, 2 * c])
    ts = jnp.array([0.3, 0.3, 0.3, 0.8, 0.3], jnp.float32)
    out = np.asarray(apply_batch(ring, xs, ts, cs))
    # Shifts by multiples of 2^(levels - 1) = 2 commute with the network ...
    np.testing.assert_allclose(out[1], np.roll(out[0], 2), rtol=1e-5, atol=1e-6)
    # ... an odd shift does not (pooling ties the grid to pairs of points).
    assert np.abs(out[2] - np.roll(out[0], 1)).max() > 1e-4
    # The time embedding and the condition change the output.
    assert np.abs(out[3] - out[0]).max() > 1e-3
    assert np.abs(out[4] - out[0]).max() > 1e-3

    channel = numpy_init(
        lambda key: UNet(2, 2, 2, widths=(4, 8), time_features=8, key=key, dtype=jnp.float32)
    )
    field = normal(3, (2, 8, 12))
    fields = jnp.stack([field, jnp.roll(field, 4, axis=-1)])
    out = np.asarray(apply_batch(channel, fields, jnp.full(2, 0.5, jnp.float32), None))
    np.testing.assert_allclose(out[1], np.roll(out[0], 4, axis=-1), rtol=1e-5, atol=1e-6)
    # The walls in y break the symmetry in y.
    assert np.abs(np.roll(out[0], 2, axis=-2) - out[0]).max() > 1e-4


def test_time_mlp_and_embedding():
    features = sinusoidal_embedding(jnp.asarray(0.25), 8)
    frequencies = 10_000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(features[:4], np.sin(250.0 * frequencies), rtol=1e-12)
    np.testing.assert_allclose(features[4:], np.cos(250.0 * frequencies), rtol=1e-12)
    net = numpy_init(lambda key: TimeMLP(3, 2, width=8, depth=1, time_features=4, key=key))
    out = jax.jit(lambda t, c: net(jnp.ones(3), t, c))
    assert out(T, jnp.zeros(2)).shape == (3,)
    assert np.abs(out(T, jnp.zeros(2)) - out(jnp.asarray(0.9), jnp.zeros(2))).max() > 1e-4


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="padding"):
        UNet(1, padding="channel", key=KEY)
    with pytest.raises(ValueError, match="odd"):
        UNet(1, kernel_size=4, key=KEY)
    with pytest.raises(ValueError, match="time_features"):
        UNet(1, time_features=7, key=KEY)
    net = eqx.filter_eval_shape(
        lambda key: UNet(1, condition_channels=1, widths=(4, 8, 8), time_features=8, key=key),
        KEY,
    )
    shape = jax.ShapeDtypeStruct
    with pytest.raises(ValueError, match="divisible by 4"):
        eqx.filter_eval_shape(net, shape((18,), float), T, shape((18,), float))
    with pytest.raises(ValueError, match="pass a `condition`"):
        eqx.filter_eval_shape(net, shape((16,), float), T, None)
    with pytest.raises(ValueError, match="state's grid"):
        eqx.filter_eval_shape(net, shape((16,), float), T, shape((8,), float))
    with pytest.raises(ValueError, match="shape"):
        eqx.filter_eval_shape(net, shape((2, 16), float), T, shape((16,), float))
    with pytest.raises(ValueError, match="condition_size"):
        eqx.filter_eval_shape(lambda key: TimeMLP(3, key=key)(jnp.ones(3), T, jnp.ones(2)), KEY)
