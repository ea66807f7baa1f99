"""Convolutions on the zonal channel: a NumPy oracle for the periodic-x / wall-y padding,
zonal translation equivariance, mirror symmetry, shapes, dtypes, vmap and gradients."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.nn import ChannelCNN, ChannelConv2d

KEY = jax.random.key(0)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@eqx.filter_jit
def apply(net, x):
    return net(x)


def numpy_channel_conv(weight, bias, x, wall_padding):
    """out[o, j, i] = b[o] + Σ_c Σ_a Σ_b w[o, c, a, b] x̃[c, j + a - (Ky-1)//2,
    (i + b - (Kx-1)//2) mod nx], with x̃ the ghost rows of the wall rule, as loops."""
    out_channels, in_channels, ky, kx = weight.shape
    _, ny, nx = x.shape

    def value(c, row, column):
        if 0 <= row < ny:
            return x[c, row, column % nx]
        if wall_padding == "zero":
            return 0.0
        mirrored = -row if row < 0 else 2 * (ny - 1) - row  # reflect about the edge row
        return x[c, mirrored, column % nx]

    out = np.empty((out_channels, ny, nx))
    for o in range(out_channels):
        for j in range(ny):
            for i in range(nx):
                total = bias[o, 0, 0]
                for c in range(in_channels):
                    for a in range(ky):
                        for b in range(kx):
                            row, column = j + a - (ky - 1) // 2, i + b - (kx - 1) // 2
                            total += weight[o, c, a, b] * value(c, row, column)
                out[o, j, i] = total
    return out


@pytest.mark.parametrize("wall_padding", ["zero", "reflect"])
@pytest.mark.parametrize("kernel_size", [1, 3, (3, 5), (2, 4)])
def test_channel_conv_matches_numpy_loop(kernel_size, wall_padding):
    conv = ChannelConv2d(2, 3, kernel_size, key=KEY, wall_padding=wall_padding)
    x = normal(1, (2, 5, 7))
    expected = numpy_channel_conv(
        np.asarray(conv.conv.weight), np.asarray(conv.conv.bias), np.asarray(x), wall_padding
    )
    np.testing.assert_allclose(apply(conv, x), expected, rtol=1e-13, atol=1e-13)


def test_zero_padding_is_the_qg_wall_condition():
    # The QG perturbation fields vanish on the walls, one grid step outside the interior
    # rows; with a 3 x 3 kernel the zero ghost row is exactly that wall value, so the
    # convolution equals the same kernel on the field with its wall rows, cropped.
    conv = ChannelConv2d(1, 1, 3, key=KEY, use_bias=False)
    field = normal(2, (1, 6, 8))
    with_walls = jnp.pad(field, ((0, 0), (1, 1), (0, 0)))
    wrapped = jnp.concatenate([with_walls[..., -1:], with_walls, with_walls[..., :1]], axis=-1)
    valid = jax.lax.conv(wrapped[None], conv.conv.weight, (1, 1), "VALID")[0]
    np.testing.assert_allclose(apply(conv, field), valid, rtol=1e-13, atol=1e-13)


@functools.cache  # built on first use, not at collection (every xdist worker collects all)
def network(wall_padding):
    return ChannelCNN(
        2, 3, widths=(4, 5), kernel_sizes=(3, 5, 1), key=KEY, wall_padding=wall_padding
    )


@pytest.mark.parametrize("wall_padding", ["zero", "reflect"])
@settings(max_examples=8, deadline=None)
@given(shift=st.integers(-12, 12), seed=st.integers(0, 2**16))
def test_rolling_in_x_rolls_the_output(wall_padding, shift, seed):
    net = network(wall_padding)
    x = normal(seed, (2, 6, 9))
    np.testing.assert_allclose(
        apply(net, jnp.roll(x, shift, axis=-1)),
        jnp.roll(apply(net, x), shift, axis=-1),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("wall_padding", ["zero", "reflect"])
def test_both_wall_rules_commute_with_the_north_south_mirror(wall_padding):
    # With kernels symmetric in y (odd sizes), mirroring the channel north-south mirrors
    # the output: neither wall is special.
    net = network(wall_padding)
    symmetric = eqx.tree_at(
        lambda n: [layer.conv.weight for layer in n.layers],
        net,
        [0.5 * (w + jnp.flip(w, axis=2)) for w in (layer.conv.weight for layer in net.layers)],
    )
    x = normal(3, (2, 6, 9))
    np.testing.assert_allclose(
        apply(symmetric, jnp.flip(x, axis=1)),
        jnp.flip(apply(symmetric, x), axis=1),
        rtol=1e-12,
        atol=1e-12,
    )


def test_shapes_dtypes_and_bad_arguments():
    single = ChannelCNN(widths=(3,), key=KEY)
    assert apply(single, jnp.ones((20, 40))).shape == (20, 40)
    assert apply(single, jnp.ones((4, 5))).shape == (4, 5)  # any grid
    assert apply(single, jnp.ones((1, 4, 5))).shape == (1, 4, 5)
    multi = network("zero")
    assert apply(multi, jnp.ones((2, 7, 11))).shape == (3, 7, 11)
    with pytest.raises(ValueError, match=r"input of shape \(2, ny, nx\)"):
        apply(multi, jnp.ones((7, 11)))
    with pytest.raises((ValueError, TypeError), match="wall_padding"):  # beartype in tests
        ChannelCNN(key=KEY, wall_padding="periodic")
    with pytest.raises(ValueError, match="kernel_sizes"):
        ChannelCNN(widths=(3,), kernel_sizes=(3, 3, 3), key=KEY)
    with pytest.raises(ValueError, match="positive integer"):
        ChannelConv2d(1, 1, (3, 0), key=KEY)
    with pytest.raises(ValueError, match="more interior rows than ghost rows"):
        apply(ChannelConv2d(1, 1, 5, key=KEY, wall_padding="reflect"), jnp.ones((1, 2, 8)))

    float32 = ChannelCNN(2, 2, widths=(3,), key=KEY, dtype=jnp.float32)
    x = normal(4, (2, 5, 6))  # a float64 state
    out = apply(float32, x)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, apply(float32, x.astype(jnp.float32)))


def test_vmap_equals_loop_and_gradient_matches_finite_differences():
    net = network("reflect")
    batch = normal(5, (3, 2, 6, 9))
    batched = eqx.filter_jit(jax.vmap(lambda x: net(x)))(batch)
    for member, out in zip(batch, batched, strict=True):
        np.testing.assert_allclose(out, apply(net, member), rtol=1e-13, atol=1e-13)

    x, weights = normal(6, (2, 6, 9)), normal(7, (3, 6, 9))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    direction = jax.tree.map(lambda p: normal(8, p.shape), params)

    @jax.jit
    def check(params, direction):
        def loss(params):
            return jnp.sum(weights * eqx.combine(params, static)(x) ** 2)

        gradient = jax.grad(loss)(params)
        autodiff = sum(
            jnp.vdot(g, v)
            for g, v in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction), strict=True)
        )
        eps = 1e-6
        shifted = [
            loss(jax.tree.map(lambda p, v, s=sign: p + s * eps * v, params, direction))
            for sign in (1.0, -1.0)
        ]
        return autodiff, (shifted[0] - shifted[1]) / (2 * eps)

    autodiff, finite_difference = check(params, direction)
    np.testing.assert_allclose(autodiff, finite_difference, rtol=1e-6)
    assert abs(float(autodiff)) > 1e-3
