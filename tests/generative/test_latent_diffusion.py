"""Latent diffusion: standardised latents, decoding through a censored VAE, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.generative import (
    DDIM,
    CensoredGaussian,
    Diffusion,
    LatentDiffusion,
    SeaIceFields,
    channel_values,
    conv_vae,
    fit_latent_diffusion,
)
from hybridda.nn import TimeMLP

KEY = jax.random.key(0)
SHAPE = (2, 8, 8)


@pytest.fixture(scope="module")
def setting():
    generator = SeaIceFields(grid=SHAPE[1:], edge_scale=2.0)
    fields = np.asarray(jax.jit(jax.vmap(generator))(jax.random.split(KEY, 64)))
    grid = SHAPE[1:]
    likelihood = CensoredGaussian(
        channel_values(SeaIceFields.lower, grid),
        channel_values(SeaIceFields.upper, grid),
        channel_values([0.1, 0.2], grid),
    )
    vae = conv_vae(
        SHAPE, 1, key=KEY, likelihood=likelihood, widths=(4, 4), data=fields.reshape(64, -1)
    )
    diffusion = Diffusion(TimeMLP(vae.latent_size, width=16, depth=1, key=jax.random.key(1)))
    model, fit = fit_latent_diffusion(
        vae, diffusion, fields, key=jax.random.key(2), steps=3, batch_size=16
    )
    return fields, vae, model, fit


@eqx.filter_jit
def encode_all(model, fields):
    return jax.vmap(model.encode)(fields)


@eqx.filter_jit
def generate(model, keys):
    return jax.vmap(lambda key: model.sample(DDIM(steps=3), key))(keys)


def test_latents_are_standardised_and_decode_like_the_vae(setting):
    fields, vae, model, fit = setting
    assert fit.losses.shape == (3,) and np.all(np.isfinite(fit.losses))
    latents = np.asarray(encode_all(model, jnp.asarray(fields)))
    assert latents.shape == (64, 16)
    np.testing.assert_allclose(latents.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(latents.std(axis=0), 1.0, rtol=1e-8)
    # decode(encode(x)) is the VAE's own reconstruction.
    direct = vae.decode_point(vae.encode_mean(jnp.asarray(fields[0]).reshape(-1)))
    np.testing.assert_allclose(
        model.decode(jnp.asarray(latents[0])), direct.reshape(SHAPE), rtol=1e-6, atol=1e-12
    )


def test_generated_fields_have_the_data_shape_and_respect_the_bounds(setting):
    _, _, model, _ = setting
    draws = np.asarray(generate(model, jax.random.split(jax.random.key(3), 16)))
    assert draws.shape == (16, *SHAPE)
    assert draws[:, 0].min() >= 0.0 and draws[:, 0].max() <= 1.0
    assert draws[:, 1].min() >= 0.0 and np.all(np.isfinite(draws))


def test_bad_input_gives_clear_errors(setting):
    fields, vae, model, _ = setting
    diffusion = model.diffusion
    with pytest.raises(ValueError, match="`data` must hold fields of 128 values"):
        fit_latent_diffusion(vae, diffusion, fields[:, :1], key=KEY, steps=1)
    bad = fields.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="`data` holds non-finite values"):
        fit_latent_diffusion(vae, diffusion, bad, key=KEY, steps=1)
    with pytest.raises(ValueError, match="`latent_shape` \\(4, 5\\) holds 20 values"):
        fit_latent_diffusion(vae, diffusion, fields, latent_shape=(4, 5), key=KEY, steps=1)
    with pytest.raises(ValueError, match="`latent_mean` must have one value per latent"):
        LatentDiffusion(vae, diffusion, jnp.zeros(3), jnp.ones(3), SHAPE, (16,))
    with pytest.raises(ValueError, match="`data_shape` \\(2, 8, 7\\) holds 112 values"):
        LatentDiffusion(vae, diffusion, jnp.zeros(16), jnp.ones(16), (2, 8, 7), (16,))
