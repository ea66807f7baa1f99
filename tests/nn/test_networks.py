"""Networks: a NumPy oracle for the periodic convolution, exact Lorenz-96 weights for the
bilinear CNN, translation equivariance, vmap = loop, gradients against finite differences."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.dynamics import Lorenz96
from hybridda.nn import MLP, BilinearCNN, PeriodicCNN, periodic_conv1d

KEY = jax.random.key(0)
T0 = jnp.asarray(0.0)


def normal(seed, shape):
    """Standard normal test data (NumPy: an eager `jax.random` call compiles per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@eqx.filter_jit
def apply(net, x):
    """``net(x)``, compiled: op-by-op execution costs a compilation per primitive."""
    return net(x)


def lorenz96_bilinear(forcing: float = 8.0, dtype=None) -> BilinearCNN:
    """A `BilinearCNN` whose output is exactly the Lorenz-96 tendency (hand-set weights).

    Bilinear layer (kernel 5, taps = offsets -2..+2): ``a = F - x_i``,
    ``b = x_{i+1} - x_{i-2}``, ``c = x_{i-1}``; readout ``a + b c``.
    """
    net = BilinearCNN(bilinear_width=1, kernel_size=5, hidden_widths=(), key=KEY, dtype=dtype)
    weight = np.zeros((3, 1, 5))
    weight[0, 0, 2] = -1.0  # a: -x_i
    weight[1, 0, 3], weight[1, 0, 0] = 1.0, -1.0  # b: x_{i+1} - x_{i-2}
    weight[2, 0, 1] = 1.0  # c: x_{i-1}
    bias = np.array([forcing, 0.0, 0.0]).reshape(3, 1)
    dtype = net.bilinear.weight.dtype
    return eqx.tree_at(
        lambda m: (m.bilinear.weight, m.bilinear.bias, m.readout.weight, m.readout.bias),
        net,
        (
            jnp.asarray(weight, dtype),
            jnp.asarray(bias, dtype),
            jnp.ones((1, 2, 1), dtype),
            jnp.zeros((1, 1), dtype),
        ),
    )


def numpy_periodic_conv(weight, bias, x):
    """out[o, i] = b[o] + Σ_c Σ_j w[o, c, j] x[c, (i + j - (K-1)//2) mod n], as loops."""
    out_channels, in_channels, K = weight.shape
    n = x.shape[1]
    out = np.empty((out_channels, n))
    for o in range(out_channels):
        for i in range(n):
            total = bias[o, 0]
            for c in range(in_channels):
                for j in range(K):
                    total += weight[o, c, j] * x[c, (i + j - (K - 1) // 2) % n]
            out[o, i] = total
    return out


def directional_fd_check(loss, params, seed, eps=1e-6, rtol=1e-6):
    """∇loss · v (reverse mode) against (loss(p + εv) - loss(p - εv)) / 2ε, v random."""
    leaves, treedef = jax.tree.flatten(params)
    direction = jax.tree.unflatten(
        treedef, [normal(seed + i, leaf.shape) for i, leaf in enumerate(leaves)]
    )

    @jax.jit  # one compilation for the gradient and both shifted losses
    def both(params, direction):
        grads = jax.grad(loss)(params)
        pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        autodiff = sum(jnp.vdot(g, v) for g, v in pairs)
        plus = loss(jax.tree.map(lambda p, v: p + eps * v, params, direction))
        minus = loss(jax.tree.map(lambda p, v: p - eps * v, params, direction))
        return autodiff, (plus - minus) / (2 * eps)

    autodiff, finite_difference = both(params, direction)
    np.testing.assert_allclose(autodiff, finite_difference, rtol=rtol)
    assert abs(float(autodiff)) > 1e-3  # a real check, not 0 = 0


# ------------------------------------------------------------------ periodic convolution


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_periodic_conv1d_matches_numpy_loop(kernel_size):
    conv = periodic_conv1d(2, 3, kernel_size, key=KEY)
    x = normal(1, (2, 7))
    expected = numpy_periodic_conv(np.asarray(conv.weight), np.asarray(conv.bias), np.asarray(x))
    np.testing.assert_allclose(apply(conv, x), expected, rtol=1e-13, atol=1e-13)


def test_periodic_conv1d_kernel_wider_than_domain_wraps_around():
    conv = periodic_conv1d(1, 1, 7, key=KEY)
    x = normal(1, (1, 4))
    expected = numpy_periodic_conv(np.asarray(conv.weight), np.asarray(conv.bias), np.asarray(x))
    np.testing.assert_allclose(apply(conv, x), expected, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------ shapes and dtypes


def networks(in_channels=1, out_channels=1, dtype=None):
    keys = jax.random.split(KEY, 2)
    return {
        "periodic_cnn": PeriodicCNN(
            in_channels,
            out_channels,
            widths=(6, 5),
            kernel_sizes=(5, 3, 1),
            key=keys[0],
            dtype=dtype,
        ),
        "bilinear_cnn": BilinearCNN(
            in_channels,
            out_channels,
            bilinear_width=3,
            hidden_widths=(4,),
            key=keys[1],
            dtype=dtype,
        ),
    }


@functools.cache  # built on first use, not at collection (every xdist worker collects all)
def multi_channel_networks():
    return networks(in_channels=2, out_channels=3) | {
        "mlp": MLP(26, 39, width=8, depth=2, key=KEY, input_mean=1.0, input_std=2.0)
    }


@pytest.mark.parametrize("name", ["periodic_cnn", "bilinear_cnn"])
def test_periodic_network_shapes(name):
    single = networks()[name]
    assert apply(single, jnp.ones(40)).shape == (40,)
    assert apply(single, jnp.ones(9)).shape == (9,)  # any domain size
    assert apply(single, jnp.ones((1, 9))).shape == (1, 9)
    multi = multi_channel_networks()[name]
    assert apply(multi, jnp.ones((2, 11))).shape == (3, 11)
    with pytest.raises(ValueError, match=r"input of shape \(2, n\)"):
        apply(multi, jnp.ones(11))


@pytest.mark.parametrize(
    "net",
    [
        PeriodicCNN(widths=(), kernel_sizes=3, key=KEY, dtype=jnp.float32),
        lorenz96_bilinear(dtype=jnp.float32),
    ],
    ids=["periodic_cnn", "bilinear_cnn"],
)
def test_float32_network_computes_in_float32(net):
    x = normal(0, (12,))  # float64 state
    out = apply(net, x)
    assert out.dtype == jnp.float32
    reference = apply(net, x.astype(jnp.float32))
    np.testing.assert_array_equal(out, reference)


def test_mlp_standardises_input_and_scales_output():
    mean, std, scale = jnp.array([1.0, -2.0, 3.0]), jnp.array([2.0, 0.5, 4.0]), 0.1
    mlp = MLP(3, 2, width=8, depth=2, key=KEY, input_mean=mean, input_std=std, output_scale=scale)
    x = normal(1, (3,))
    np.testing.assert_allclose(
        apply(mlp, x), apply(mlp.network, (x - mean) / std) * scale, rtol=1e-14
    )
    # The statistics are fixed: no gradient reaches them.
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2)))(mlp)
    for stat in (grads.input_mean, grads.input_std, grads.output_scale):
        np.testing.assert_array_equal(stat, 0.0)
    assert jnp.any(grads.network.layers[0].weight != 0)


def test_mlp_float32():
    mlp = MLP(4, 4, width=8, depth=1, key=KEY, dtype=jnp.float32, input_std=3.0)
    out = apply(mlp, jnp.ones(4))
    assert out.dtype == jnp.float32 and mlp.input_std.dtype == jnp.float32


# ------------------------------------------------------------------ equivariance, vmap


@pytest.mark.parametrize("name", ["periodic_cnn", "bilinear_cnn"])
@settings(max_examples=10, deadline=None)
@given(shift=st.integers(-20, 20), seed=st.integers(0, 2**16))
def test_rolling_the_input_rolls_the_output(name, shift, seed):
    net = multi_channel_networks()[name]
    x = normal(seed, (2, 13))
    rolled_then_applied = apply(net, jnp.roll(x, shift, axis=-1))
    applied_then_rolled = jnp.roll(apply(net, x), shift, axis=-1)
    np.testing.assert_allclose(rolled_then_applied, applied_then_rolled, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["periodic_cnn", "bilinear_cnn", "mlp"])
def test_vmap_equals_loop(name):
    net = multi_channel_networks()[name]
    shape = (26,) if name == "mlp" else (2, 13)
    batch = normal(3, (5, *shape))
    batched = eqx.filter_jit(eqx.filter_vmap(lambda net, x: net(x), in_axes=(None, 0)))(net, batch)
    looped = jnp.stack([apply(net, x) for x in batch])
    np.testing.assert_allclose(batched, looped, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", ["periodic_cnn", "bilinear_cnn", "mlp"])
def test_parameter_gradients_match_finite_differences(name):
    net = multi_channel_networks()[name]
    x = normal(4, (26,) if name == "mlp" else (2, 13))
    # The MLP's input/output statistics are fixed, not parameters: perturb its network.
    part = net.network if name == "mlp" else net
    params, static = eqx.partition(part, eqx.is_inexact_array)

    def loss(p):
        rebuilt = eqx.combine(p, static)
        model = eqx.tree_at(lambda m: m.network, net, rebuilt) if name == "mlp" else rebuilt
        return jnp.sum(jnp.sin(model(x)))

    directional_fd_check(loss, params, seed=5)


# ------------------------------------------------------------------ Lorenz-96 exactly


@pytest.mark.parametrize("n", [40, 7])
@pytest.mark.parametrize("forcing", [8.0, 6.0])
def test_bilinear_cnn_with_hand_set_weights_is_the_lorenz96_tendency(n, forcing):
    net = lorenz96_bilinear(forcing)
    x = 3.0 * normal(6, (n,)) + 2.0
    expected = Lorenz96(n=n, forcing=forcing).tendency(T0, x)
    np.testing.assert_allclose(apply(net, x), expected, rtol=1e-14, atol=1e-12)


# ------------------------------------------------------------------ construction errors


def test_bad_configurations_name_the_argument():
    with pytest.raises(ValueError, match="kernel_sizes"):
        PeriodicCNN(widths=(4, 4), kernel_sizes=(3, 3), key=KEY)
    with pytest.raises(ValueError, match=r"widths\[1\]"):
        PeriodicCNN(widths=(4, 0), key=KEY)
    with pytest.raises(ValueError, match="bilinear_width"):
        BilinearCNN(bilinear_width=0, key=KEY)
    with pytest.raises(ValueError, match=r"hidden_widths\[0\]"):
        BilinearCNN(hidden_widths=(-1,), key=KEY)
    with pytest.raises(ValueError, match="kernel_size"):
        periodic_conv1d(1, 1, 0, key=KEY)
    with pytest.raises(ValueError, match="input_std"):
        MLP(3, 3, key=KEY, input_std=jnp.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="input_mean"):
        MLP(3, 3, key=KEY, input_mean=jnp.ones(4))
    with pytest.raises(ValueError, match="depth"):
        MLP(3, 3, depth=-1, key=KEY)
