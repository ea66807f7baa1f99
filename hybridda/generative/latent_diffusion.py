r"""Latent diffusion: a diffusion model in the latent space of a (convolutional) VAE.

Rombach et al. (2022): encode the training fields with a pretrained autoencoder, train a
denoising diffusion model on the encoded latents, and generate by sampling a latent with
the diffusion model and decoding it. Finn et al. (2024) use it for sea ice, with a
censored Gaussian likelihood in data space so that the decoded fields respect the
physical bounds (the decoder's point output ``clip(θ, lower, upper)`` lies on a bound
wherever the decoded mean is beyond it).

[`LatentDiffusion`][] holds the VAE, the latent [`Diffusion`][] and the standardisation
of the latents (each latent variable centred and scaled by its std over the training
set, as Rombach et al.'s scale factor, per variable); [`fit_latent_diffusion`][] encodes
the data, fits the standardisation and trains the diffusion model with
[`fit_diffusion`][] (all its options, checkpoints and ``resume`` included).

```python
vae = fit_vae(conv_vae(shape, 4, key=k0, data=flat, likelihood=censored), flat, ...).vae
model, fit = fit_latent_diffusion(vae, Diffusion(UNet(2, 4, 4, key=k1)), fields,
                                  latent_shape=(4, 8, 8), key=k2, steps=4000)
draws = jax.vmap(lambda k: model.sample(DDIM(steps=50), k))(keys)   # (N, *field shape)
```

!!! cite "References"
    Rombach, Blattmann, Lorenz, Esser and Ommer (2022), High-resolution image synthesis
    with latent diffusion models, *CVPR*.
    Finn, Durand, Farchi, Bocquet, Rampal and Carrassi (2024), Towards diffusion models
    for large-scale sea-ice modelling, *ICML 2024 workshop* (arXiv 2406.18417).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .diffusion import AbstractSampler, Diffusion, DiffusionFit, fit_diffusion, sample
from .vae import VAE


def _check_shape(name: str, shape, size: int, what: str) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(f"`{name}` must be a tuple of integers >= 1, got {shape!r}.")
    if math.prod(shape) != size:
        raise ValueError(
            f"`{name}` {shape} holds {math.prod(shape)} values but the VAE's {what} is {size}."
        )
    return shape


class LatentDiffusion(eqx.Module):
    """A diffusion model on the standardised latents of a VAE, decoded to data space.

    **Arguments:**

    - `vae`: the (trained) [`VAE`][]; its decoder's point output is the generated field.
    - `diffusion`: a [`Diffusion`][] on latents of `latent_shape`.
    - `latent_mean`, `latent_std`: the standardisation ``u = (z - mean) / std`` of the
      flattened latent ``z`` (``std > 0``), one value per latent variable.
    - `data_shape`: shape of one field (its size is the VAE's ``data_size``).
    - `latent_shape`: shape of the latent the diffusion network sees (its size is the
      VAE's ``latent_size``): ``(latent_size,)`` for a [`hybridda.nn.TimeMLP`][],
      ``(channels, h, w)`` for a [`hybridda.nn.UNet`][] on the latent grid.

    Build it with [`fit_latent_diffusion`][].
    """

    vae: VAE
    diffusion: Diffusion
    latent_mean: Float[Array, " d"]
    latent_std: Float[Array, " d"]
    data_shape: tuple[int, ...] = eqx.field(static=True)
    latent_shape: tuple[int, ...] = eqx.field(static=True)

    def __check_init__(self):
        _check_shape("data_shape", self.data_shape, self.vae.data_size, "data_size")
        _check_shape("latent_shape", self.latent_shape, self.vae.latent_size, "latent_size")
        for name in ("latent_mean", "latent_std"):
            if getattr(self, name).shape != (self.vae.latent_size,):
                raise ValueError(
                    f"`{name}` must have one value per latent variable, shape "
                    f"({self.vae.latent_size},), got {getattr(self, name).shape}."
                )

    def encode(self, field: Float[Array, "*data"]) -> Float[Array, "*latent"]:
        """The standardised latent mean of one field, shaped `latent_shape`."""
        z = self.vae.encode_mean(field.reshape(-1))
        return ((z - self.latent_mean) / self.latent_std).reshape(self.latent_shape)

    def decode(self, latent: Float[Array, "*latent"]) -> Float[Array, "*data"]:
        """The field decoded from a standardised latent (the VAE's point output)."""
        z = latent.reshape(-1) * self.latent_std + self.latent_mean
        return self.vae.decode_point(z).reshape(self.data_shape)

    def sample(
        self, sampler: AbstractSampler, key: PRNGKeyArray, **kwargs
    ) -> Float[Array, "*data"]:
        """One generated field: a latent drawn with `sampler`, decoded. `kwargs` go to
        [`sample`][] (a `condition`, a `guidance_scale`, the noise `dtype`)."""
        latent = sample(self.diffusion, sampler, key, shape=self.latent_shape, **kwargs)
        return self.decode(latent)


@eqx.filter_jit
def _encode_all(vae: VAE, flat: Array) -> Array:
    return jax.vmap(vae.encode_mean)(flat)


def fit_latent_diffusion(
    vae: VAE,
    diffusion: Diffusion,
    data: Float[Array | np.ndarray, " M *data"],
    *,
    latent_shape: tuple[int, ...] | None = None,
    key: PRNGKeyArray,
    steps: int,
    batch_size: int = 64,
    **fit_options,
) -> tuple[LatentDiffusion, DiffusionFit]:
    """Encode `data`, standardise the latents, train `diffusion` on them.

    **Arguments:**

    - `vae`: a trained [`VAE`][] (kept fixed); `diffusion`: the initial latent model.
    - `data`: training fields ``(M, *data_shape)``, finite, each of the VAE's
      ``data_size`` values.
    - `latent_shape`: as in [`LatentDiffusion`][] (default ``(latent_size,)``).
    - `key`, `steps`, `batch_size` and any other keyword (``learning_rate``,
      ``ema_decay``, ``checkpoint_dir``, ``resume``, ``progress``, ...): passed to
      [`fit_diffusion`][].

    **Returns:** the [`LatentDiffusion`][] with the EMA weights, and the
    [`DiffusionFit`][] (losses, last weights).
    """
    data = jnp.asarray(data)
    if data.ndim < 2 or math.prod(data.shape[1:]) != vae.data_size:
        raise ValueError(
            f"`data` must hold fields of {vae.data_size} values each (the VAE's data_size), "
            f"shape (M, ...), got shape {data.shape}."
        )
    if not np.all(np.isfinite(np.asarray(data))):
        raise ValueError("`data` holds non-finite values; remove or fill them.")
    latent_shape = (vae.latent_size,) if latent_shape is None else latent_shape
    _check_shape("latent_shape", latent_shape, vae.latent_size, "latent_size")
    flat = data.reshape(data.shape[0], -1)
    latents = _encode_all(vae, flat)
    mean = latents.mean(axis=0)
    std = latents.std(axis=0)
    std = jnp.where(std > 1e-8 * jnp.max(std), std, 1.0)
    standardised = ((latents - mean[None]) / std[None]).reshape(latents.shape[0], *latent_shape)
    fit = fit_diffusion(
        diffusion, standardised, key=key, steps=steps, batch_size=batch_size, **fit_options
    )
    model = LatentDiffusion(vae, fit.ema, mean, std, tuple(data.shape[1:]), tuple(latent_shape))
    return model, fit
