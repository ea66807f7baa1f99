r"""A convolutional VAE for gridded fields: a latent field on a coarser grid.

The [`VAE`][] works on vectors; [`ConvEncoder`][] and [`ConvDecoder`][] are its encoder
and decoder for fields ``(channels, ny, nx)`` flattened in C order. The encoder
standardises each channel, applies residual-free convolution stages (SiLU) with 2 × 2
average pooling between them, and gives the mean and log-variance of a latent *field*
``(latent_channels, ny / 2^s, nx / 2^s)`` (``s = len(widths) - 1`` poolings), flattened;
the decoder mirrors it with nearest-neighbour upsampling and returns the likelihood's
parameters ``θ(z)`` per channel, scaled by the data's channel std around its mean (fixed
statistics: a fresh decoder starts near the climatological mean). Any likelihood of
[`hybridda.generative.vae`][] works, in particular the censored Gaussian with one bound
per channel (Finn et al. 2024; [`channel_values`][] spreads per-channel bounds over the
flattened field). The convolutions are [`hybridda.nn.ChannelConv2d`][]: periodic in x,
reflecting walls in y (``padding="channel"``), or periodic in both axes.

This is the autoencoder of latent diffusion (Rombach et al. 2022): diffusion then runs
on the latent field ([`hybridda.generative.LatentDiffusion`][]).

```python
vae = conv_vae((2, 32, 32), latent_channels=4, widths=(16, 32, 32), key=k0, data=flat,
               likelihood=CensoredGaussian(lower, upper, std, learn_std=True))
vae = fit_vae(vae, flat, key=k1, steps=3000, beta=1e-3).vae
```

!!! cite "References"
    Rombach, Blattmann, Lorenz, Esser and Ommer (2022), High-resolution image synthesis
    with latent diffusion models, *CVPR*.
    Finn, Durand, Farchi, Bocquet, Rampal and Carrassi (2024), Towards diffusion models
    for large-scale sea-ice modelling, *ICML 2024 workshop* (arXiv 2406.18417).
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import require_count
from ..nn import ChannelConv2d
from .vae import VAE, AbstractLikelihood, Gaussian, check_data

PADDINGS = ("channel", "periodic")


def _conv(c_in: int, c_out: int, kernel_size: int, padding: str, *, key, dtype) -> Callable:
    if padding == "channel":
        return ChannelConv2d(c_in, c_out, kernel_size, key=key, wall_padding="reflect", dtype=dtype)
    pad = (kernel_size - 1) // 2
    return eqx.nn.Conv2d(
        c_in, c_out, kernel_size, padding=pad, padding_mode="CIRCULAR", dtype=dtype, key=key
    )


def _pool(h: Array) -> Array:
    c, ny, nx = h.shape
    return h.reshape(c, ny // 2, 2, nx // 2, 2).mean(axis=(2, 4))


def _upsample(h: Array) -> Array:
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


def _stage_convs(sizes, kernel_size, padding, key, dtype) -> tuple:
    keys = jax.random.split(key, len(sizes))
    return tuple(
        _conv(c_in, c_out, kernel_size, padding, key=k, dtype=dtype)
        for (c_in, c_out), k in zip(sizes, keys, strict=True)
    )


class ConvEncoder(eqx.Module):
    """``x ↦ (μ, log σ²)`` of a latent field: convolutions with pooling, flattened I/O.

    Built by [`conv_vae`][]. Input: a field ``(channels, ny, nx)`` flattened (length
    ``channels · ny · nx``); output: two flattened latent fields
    ``(latent_channels, ny / 2^s, nx / 2^s)``. The channel mean and std used to
    standardise the input are fixed (no gradient).
    """

    convs: tuple
    head: Callable
    mean: Float[Array, " channels"]
    std: Float[Array, " channels"]
    shape: tuple[int, int, int] = eqx.field(static=True)
    latent_shape: tuple[int, int, int] = eqx.field(static=True)
    activation: Callable

    def __call__(self, x: Float[Array, " n"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        mean, std = jax.lax.stop_gradient((self.mean, self.std))
        h = x.reshape(self.shape).astype(mean.dtype)
        h = (h - mean[:, None, None]) / std[:, None, None]
        for index, conv in enumerate(self.convs):
            if index:
                h = _pool(h)
            h = self.activation(conv(h))
        out = self.head(h).reshape(2, -1).astype(x.dtype)
        return out[0], out[1]


class ConvDecoder(eqx.Module):
    """``z ↦ θ``: the mirror of [`ConvEncoder`][], upsampling back to the data grid.

    Output ``offset + scale · net(z)`` flattened, with ``net`` giving
    ``head_channels`` fields on the data grid and the fixed `offset` and `scale` from
    the likelihood's [`AbstractLikelihood.head_statistics`][] of the data.
    """

    head: Callable
    convs: tuple
    output: Callable
    offset: Float[Array, "head_channels ny nx"]
    scale: Float[Array, "head_channels ny nx"]
    latent_shape: tuple[int, int, int] = eqx.field(static=True)
    activation: Callable

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " h"]:
        offset, scale = jax.lax.stop_gradient((self.offset, self.scale))
        h = self.activation(self.head(z.reshape(self.latent_shape).astype(offset.dtype)))
        for index, conv in enumerate(self.convs):
            if index:
                h = _upsample(h)
            h = self.activation(conv(h))
        return (offset + scale * self.output(h)).reshape(-1).astype(z.dtype)


def conv_vae(
    shape: tuple[int, ...],
    latent_channels: int,
    *,
    key: PRNGKeyArray,
    likelihood: AbstractLikelihood | None = None,
    widths: Sequence[int] = (16, 32),
    kernel_size: int = 3,
    padding: str = "channel",
    activation: Callable = jax.nn.silu,
    data: Float[Array | np.ndarray, "M n"] | None = None,
    dtype=None,
) -> VAE:
    """A [`VAE`][] with a convolutional encoder and decoder for fields of `shape`.

    **Arguments:**

    - `shape`: ``(channels, ny, nx)`` of one field; ``ny`` and ``nx`` must be divisible
      by ``2^(len(widths) - 1)``. The VAE works on the field flattened in C order
      (``data_size = channels · ny · nx``).
    - `latent_channels`: channels of the latent field (≥ 1); ``latent_size`` is
      ``latent_channels · ny · nx / 4^(len(widths) - 1)``.
    - `key`: PRNG key of the initial weights.
    - `likelihood`: default ``Gaussian(0.1 × data std, learn_std=True)`` (per channel).
      Its ``head_size`` must be a multiple of ``ny · nx`` (a field per head channel).
    - `widths`: channels of the convolution stages, finest first; one 2 × 2 pooling
      between consecutive stages.
    - `kernel_size`: odd; `padding`: ``"channel"`` (periodic x, reflecting walls in y)
      or ``"periodic"``; `activation`: SiLU by default.
    - `data`: flattened training fields ``(M, n)`` for the fixed channel statistics
      (optional: mean 0, std 1 without).
    - `dtype`: parameter dtype (default JAX's default float; float32 is faster).
    """
    if (
        not isinstance(shape, tuple)
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ValueError(
            f"`shape` must be a tuple (channels, ny, nx) of integers >= 1, got {shape!r}."
        )
    require_count("latent_channels", latent_channels, "channels of the latent field")
    widths = tuple(widths)
    if not widths:
        raise ValueError("`widths` needs at least one stage, e.g. (16, 32).")
    for index, width in enumerate(widths):
        require_count(f"widths[{index}]", width, "channels of a convolution stage")
    require_count("kernel_size", kernel_size, "size of the convolution kernels")
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be odd (a centred stencil), got {kernel_size}.")
    if padding not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}, got {padding!r}.")
    channels, ny, nx = shape
    factor = 2 ** (len(widths) - 1)
    if ny % factor or nx % factor:
        raise ValueError(
            f"{len(widths) - 1} poolings (len(widths) = {len(widths)}) need a grid divisible "
            f"by {factor}, got (ny, nx) = ({ny}, {nx}); use fewer `widths` or another grid."
        )
    dtype = jnp.result_type(float) if dtype is None else dtype
    data_size = channels * ny * nx
    latent_shape = (latent_channels, ny // factor, nx // factor)
    if data is None:
        mean, std = np.zeros(channels), np.ones(channels)
    else:
        check_data(data, "data", data_size)
        fields = np.asarray(data, dtype=float).reshape(-1, channels, ny * nx)
        mean = fields.mean(axis=(0, 2))
        spread = fields.std(axis=(0, 2))
        std = np.where(spread > 0, spread, 1.0)
    flat_mean = np.repeat(mean, ny * nx)
    flat_std = np.repeat(std, ny * nx)
    if likelihood is None:
        likelihood = Gaussian(jnp.asarray(0.1 * flat_std), learn_std=True)
    likelihood.check_data_size(data_size)
    head_size = likelihood.head_size(data_size)
    if head_size % (ny * nx):
        raise ValueError(
            f"{type(likelihood).__name__} needs {head_size} decoder outputs, not a whole "
            f"number of fields on the {ny} x {nx} grid: conv_vae cannot decode to it."
        )
    head_channels = head_size // (ny * nx)
    offset, scale = likelihood.head_statistics(jnp.asarray(flat_mean), jnp.asarray(flat_std))
    keys = jax.random.split(key, 6)
    encoder_sizes = [(channels, widths[0])] + list(zip(widths[:-1], widths[1:], strict=True))
    encoder = ConvEncoder(
        convs=_stage_convs(encoder_sizes, kernel_size, padding, keys[0], dtype),
        head=_conv(widths[-1], 2 * latent_channels, 1, padding, key=keys[1], dtype=dtype),
        mean=jnp.asarray(mean, dtype),
        std=jnp.asarray(std, dtype),
        shape=shape,
        latent_shape=latent_shape,
        activation=activation,
    )
    reversed_widths = widths[::-1]
    decoder_sizes = [(reversed_widths[0], reversed_widths[0])] + list(
        zip(reversed_widths[:-1], reversed_widths[1:], strict=True)
    )
    decoder = ConvDecoder(
        head=_conv(latent_channels, widths[-1], kernel_size, padding, key=keys[2], dtype=dtype),
        convs=_stage_convs(decoder_sizes, kernel_size, padding, keys[3], dtype),
        output=_conv(widths[0], head_channels, 1, padding, key=keys[4], dtype=dtype),
        offset=jnp.asarray(offset, dtype).reshape(head_channels, ny, nx),
        scale=jnp.asarray(scale, dtype).reshape(head_channels, ny, nx),
        latent_shape=latent_shape,
        activation=activation,
    )
    return VAE(encoder, decoder, likelihood, data_size, int(np.prod(latent_shape)))
