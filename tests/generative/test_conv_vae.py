"""Convolutional VAE: shapes of the latent field, decoded fields inside censored bounds, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.generative import (
    CensoredGaussian,
    HeteroscedasticGaussian,
    SeaIceFields,
    channel_values,
    conv_vae,
)

KEY = jax.random.key(0)
SHAPE = (2, 8, 8)


@pytest.fixture(scope="module")
def data():
    generator = SeaIceFields(grid=SHAPE[1:], edge_scale=2.0)
    return np.asarray(jax.jit(jax.vmap(generator))(jax.random.split(KEY, 64))).reshape(64, -1)


def censored(grid=SHAPE[1:]):
    lower = channel_values(SeaIceFields.lower, grid)
    upper = channel_values(SeaIceFields.upper, grid)
    return CensoredGaussian(lower, upper, channel_values([0.1, 0.2], grid), learn_std=True)


@eqx.filter_jit
def encode_decode(vae, flat, z, key):
    mean, log_var = jax.vmap(vae.encode)(flat)
    points = jax.vmap(vae.decode_point)(z)
    draws = jax.vmap(vae.likelihood.sample)(jax.vmap(vae.decode)(z), jax.random.split(key, len(z)))
    return mean, log_var, points, draws


def test_censored_conv_vae_decodes_inside_the_bounds_with_mass_on_them(data):
    vae = conv_vae(SHAPE, 3, key=KEY, likelihood=censored(), widths=(4, 4), data=data)
    assert vae.data_size == 128 and vae.latent_size == 3 * 4 * 4
    assert vae.encoder.latent_shape == (3, 4, 4)
    # Spread the (untrained) decoder's outputs far beyond the bounds: whatever the
    # decoded mean, the decoded point and the draws must stay inside them.
    shift = jax.random.normal(jax.random.key(3), vae.decoder.offset.shape)
    wide = eqx.tree_at(
        lambda v: (v.decoder.offset, v.decoder.scale),
        vae,
        (vae.decoder.offset + shift, 10.0 * vae.decoder.scale),
    )
    z = jax.random.normal(jax.random.key(1), (100, vae.latent_size))
    mean, log_var, points, draws = encode_decode(wide, jnp.asarray(data), z, jax.random.key(2))
    assert mean.shape == log_var.shape == (64, 48)
    for fields in (points, draws):
        fields = np.asarray(fields).reshape(-1, *SHAPE)
        assert fields[:, 0].min() == 0.0 and fields[:, 0].max() == 1.0  # mass on both bounds
        assert fields[:, 1].min() == 0.0 and np.all(np.isfinite(fields))
        assert np.mean(fields[:, 0] == 0.0) > 0.01 and np.mean(fields[:, 0] == 1.0) > 0.01
    # The decoder starts near the data's channel means (its fixed offset).
    offset = np.asarray(vae.decoder.offset).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(offset, data.reshape(64, 2, -1).mean(axis=(0, 2)), rtol=1e-6)


def test_heteroscedastic_likelihood_gets_two_fields_per_channel(data):
    vae = conv_vae(SHAPE, 1, key=KEY, likelihood=HeteroscedasticGaussian(), widths=(4,))
    assert vae.latent_size == 64
    head = eqx.filter_jit(vae.decode)(jnp.zeros(64))
    assert head.shape == (256,)


def test_bad_input_gives_clear_errors(data):
    with pytest.raises(ValueError, match=r"`shape` must be a tuple \(channels, ny, nx\)"):
        conv_vae((8, 8), 2, key=KEY)
    with pytest.raises(ValueError, match="`latent_channels`"):
        conv_vae(SHAPE, 0, key=KEY)
    with pytest.raises(ValueError, match="need a grid divisible by 8"):
        conv_vae((2, 12, 12), 2, key=KEY, widths=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="`kernel_size` must be odd"):
        conv_vae(SHAPE, 2, key=KEY, kernel_size=4)
    with pytest.raises(ValueError, match="`padding` must be one of"):
        conv_vae(SHAPE, 2, key=KEY, padding="zero")
    with pytest.raises(ValueError, match="`data` has 100 variables per example"):
        conv_vae(SHAPE, 2, key=KEY, data=np.zeros((4, 100)))
    bad = data.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="`data` contains 1 non-finite"):
        conv_vae(SHAPE, 2, key=KEY, data=bad)
    with pytest.raises(ValueError, match=r"`lower` must be a scalar or have shape \(128,\)"):
        conv_vae(SHAPE, 2, key=KEY, likelihood=censored(grid=(4, 4)))
