r"""Denoising networks for diffusion models: a small 1-D / 2-D U-Net and a time-MLP.

Both are called as ``network(x_t, t, condition)``, the interface of
[`hybridda.generative.Diffusion`][]: a noisy state ``x_t``, the diffusion time
``t`` in [0, 1] (a scalar) and an optional conditioning field (``None`` for an
unconditional model). The time enters through sinusoidal features
([`sinusoidal_embedding`][], Vaswani et al. 2017; Ho et al. 2020, appendix B) passed
through a small MLP and added to every residual block (a per-channel shift).

- [`UNet`][]: convolutional, for fields on a grid: a 1-D ring (``spatial_dims=1``,
  periodic padding as [`hybridda.nn.periodic_conv1d`][]) or a 2-D field
  (``spatial_dims=2``: ``"channel"`` padding as [`hybridda.nn.ChannelConv2d`][],
  periodic in x with walls in y; or doubly periodic). Conditioning fields are extra
  input channels on the same grid (Ronneberger et al. 2015 for the U-Net shape).
- [`TimeMLP`][]: an MLP of ``(x_t, time features, condition)`` for vector states
  (a latent space, a few variables).

**References:** Ronneberger, Fischer & Brox (2015), "U-Net: convolutional networks for
biomedical image segmentation", MICCAI. Ho, Jain & Abbeel (2020), "Denoising diffusion
probabilistic models", NeurIPS.
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .cnn import check_positive_int, periodic_conv1d
from .cnn2d import ChannelConv2d

PADDINGS = {1: ("periodic", "zero"), 2: ("channel", "periodic", "zero")}


def sinusoidal_embedding(
    t: Float[ArrayLike, ""], features: int, max_period: float = 10_000.0
) -> Float[Array, " features"]:
    r"""Sinusoidal features of a diffusion time ``t`` in [0, 1].

    With ``h = features // 2`` frequencies $\omega_k = \text{max\_period}^{-k/h}$,
    the features are $[\sin(1000\,t\,\omega_k),\ \cos(1000\,t\,\omega_k)]_{k<h}$
    (the transformer position encoding of Vaswani et al. 2017 at position ``1000 t``, as
    for the 1000 discrete steps of Ho et al. 2020). `features` must be even.
    """
    if features < 2 or features % 2:
        raise ValueError(f"`features` must be an even integer >= 2, got {features!r}.")
    half = features // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
    angles = 1000.0 * jnp.asarray(t) * frequencies
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


class _TimeEmbedding(eqx.Module):
    """Sinusoidal features of ``t`` through a one-hidden-layer MLP (SiLU)."""

    mlp: eqx.nn.MLP
    features: int = eqx.field(static=True)

    def __init__(self, features: int, *, key: PRNGKeyArray, dtype):
        self.features = features
        self.mlp = eqx.nn.MLP(features, features, features, 1, jax.nn.silu, dtype=dtype, key=key)

    def __call__(self, t, dtype) -> Array:
        return self.mlp(sinusoidal_embedding(t, self.features).astype(dtype))


# ---------------------------------------------------------------------------- U-Net


def _conv(spatial_dims, padding, c_in, c_out, kernel_size, *, key, dtype) -> Callable:
    """A same-grid convolution with the U-Net's boundary rule."""
    if spatial_dims == 1:
        if padding == "periodic":
            return periodic_conv1d(c_in, c_out, kernel_size, key=key, dtype=dtype)
        pads = (((kernel_size - 1) // 2, kernel_size // 2),)
        return eqx.nn.Conv1d(c_in, c_out, kernel_size, padding=pads, dtype=dtype, key=key)
    if padding == "channel":
        return ChannelConv2d(c_in, c_out, kernel_size, key=key, dtype=dtype)
    pads = (((kernel_size - 1) // 2, kernel_size // 2),) * 2
    mode = "CIRCULAR" if padding == "periodic" else "ZEROS"
    return eqx.nn.Conv2d(
        c_in, c_out, kernel_size, padding=pads, padding_mode=mode, dtype=dtype, key=key
    )


class _ResBlock(eqx.Module):
    """``h = act(conv1(x)) + shift(time); out = act(conv2(h)) + skip(x)``."""

    conv1: Callable
    conv2: Callable
    time_shift: eqx.nn.Linear
    skip: Callable | None
    activation: Callable

    def __init__(
        self, spatial_dims, padding, c_in, c_out, kernel_size, time_features, act, *, key, dtype
    ):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.conv1 = _conv(spatial_dims, padding, c_in, c_out, kernel_size, key=k1, dtype=dtype)
        self.conv2 = _conv(spatial_dims, padding, c_out, c_out, kernel_size, key=k2, dtype=dtype)
        self.time_shift = eqx.nn.Linear(time_features, c_out, dtype=dtype, key=k3)
        self.skip = (
            None
            if c_in == c_out
            else _conv(spatial_dims, padding, c_in, c_out, 1, key=k4, dtype=dtype)
        )
        self.activation = act

    def __call__(self, x, time_features):
        shift = self.time_shift(time_features)
        h = self.activation(self.conv1(x))
        h = h + shift.reshape(shift.shape + (1,) * (x.ndim - 1))
        h = self.activation(self.conv2(h))
        return h + (x if self.skip is None else self.skip(x))


def _pool(h):
    """Average over 2 (x 2) blocks: ``(c, n)`` -> ``(c, n/2)``; ``(c, ny, nx)`` -> halves."""
    if h.ndim == 2:
        c, n = h.shape
        return h.reshape(c, n // 2, 2).mean(axis=-1)
    c, ny, nx = h.shape
    return h.reshape(c, ny // 2, 2, nx // 2, 2).mean(axis=(2, 4))


def _upsample(h):
    """Nearest-neighbour upsampling by 2 along every grid axis."""
    for axis in range(1, h.ndim):
        h = jnp.repeat(h, 2, axis=axis)
    return h


class UNet(eqx.Module):
    r"""A small U-Net denoiser ``(x_t, t, condition) -> output`` on a 1-D or 2-D grid.

    Levels ``l = 0 .. L-1`` (``L = len(widths)``) work on the grid coarsened ``2^l``
    times: one residual block of `widths[l]` channels per level on the way down
    (2 x 2 average pooling between levels), and on the way up nearest-neighbour
    upsampling, concatenation with the same level's features (the skip connection) and
    a residual block. Every residual block adds a learnt per-channel shift of the time
    features (sinusoidal features of ``t`` through an MLP). The input convolution sees
    the state's channels and the conditioning channels stacked; a final linear
    convolution gives `out_channels`.

    **Boundaries** (`padding`, every convolution):

    - 1-D: ``"periodic"`` (a ring, e.g. Lorenz-96: circular padding,
      [`hybridda.nn.periodic_conv1d`][]) or ``"zero"``.
    - 2-D: ``"channel"`` (periodic in x, zero ghost rows beyond the walls in y:
      [`hybridda.nn.ChannelConv2d`][], the QG channel), ``"periodic"`` (both axes) or
      ``"zero"``.

    With periodic padding the network commutes with translations by multiples of
    ``2^(L-1)`` grid points along the periodic axes (pooling ties the grid to blocks
    of that size); each periodic grid size must be divisible by ``2^(L-1)``, and so
    must a walled one.

    **Arguments:**

    - `spatial_dims`: 1 or 2.
    - `in_channels`, `out_channels`: fields of the state in and of the output (for a
      denoiser both are the state's channels).
    - `condition_channels`: extra conditioning fields on the same grid (0: none, the
      network is then called with ``condition=None``).
    - `widths`: channels per level, e.g. ``(16, 32)``.
    - `kernel_size`: odd size of the convolutions (3).
    - `time_features`: size of the time embedding (even).
    - `padding`: see above; `activation`: SiLU by default.
    - `key`: PRNG key of the initial weights; `dtype`: parameter dtype (inputs are cast
      to it, the output has it).

    Input ``(n,)`` / ``(ny, nx)`` when `in_channels` is 1, else ``(in_channels, n)`` /
    ``(in_channels, ny, nx)``; a condition likewise with `condition_channels`; the
    output has the input's layout with `out_channels`.
    """

    input_conv: Callable
    down: tuple[_ResBlock, ...]
    up: tuple[_ResBlock, ...]
    output_conv: Callable
    time_embedding: _TimeEmbedding
    spatial_dims: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    condition_channels: int = eqx.field(static=True)
    padding: str = eqx.field(static=True)

    def __init__(
        self,
        spatial_dims: Literal[1, 2],
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        condition_channels: int = 0,
        widths: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        time_features: int = 32,
        padding: str | None = None,
        activation: Callable = jax.nn.silu,
        key: PRNGKeyArray,
        dtype=None,
    ):
        if spatial_dims not in PADDINGS:
            raise ValueError(f"`spatial_dims` must be 1 or 2, got {spatial_dims!r}.")
        padding = PADDINGS[spatial_dims][0] if padding is None else padding
        if padding not in PADDINGS[spatial_dims]:
            raise ValueError(
                f"`padding` for spatial_dims={spatial_dims} must be one of "
                f"{PADDINGS[spatial_dims]}, got {padding!r}."
            )
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        if isinstance(condition_channels, bool) or not isinstance(condition_channels, int):
            raise ValueError(
                f"`condition_channels` must be an integer >= 0, got {condition_channels!r}."
            )
        if condition_channels < 0:
            raise ValueError(
                f"`condition_channels` must be an integer >= 0, got {condition_channels!r}."
            )
        widths = tuple(widths)
        if not widths:
            raise ValueError("`widths` needs at least one level, e.g. (16, 32).")
        for i, width in enumerate(widths):
            check_positive_int(f"widths[{i}]", width)
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd (a centred stencil), got {kernel_size}.")
        if time_features < 2 or time_features % 2:
            raise ValueError(
                f"`time_features` must be an even integer >= 2, got {time_features!r}."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        levels = len(widths)
        keys = iter(jax.random.split(key, 2 * levels + 2))

        def block(c_in, c_out):
            return _ResBlock(
                spatial_dims,
                padding,
                c_in,
                c_out,
                kernel_size,
                time_features,
                activation,
                key=next(keys),
                dtype=dtype,
            )

        self.time_embedding = _TimeEmbedding(time_features, key=next(keys), dtype=dtype)
        self.input_conv = _conv(
            spatial_dims,
            padding,
            in_channels + condition_channels,
            widths[0],
            kernel_size,
            key=next(keys),
            dtype=dtype,
        )
        self.down = tuple(block(widths[max(l - 1, 0)], widths[l]) for l in range(levels))
        self.up = tuple(block(widths[l + 1] + widths[l], widths[l]) for l in range(levels - 1))
        self.output_conv = _conv(
            spatial_dims,
            padding,
            widths[0],
            out_channels,
            1,
            key=jax.random.fold_in(key, 1),
            dtype=dtype,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.condition_channels = condition_channels
        self.padding = padding

    def _channels(self, field, channels: int, name: str) -> Array:
        if field.ndim == self.spatial_dims and channels == 1:
            field = field[None]
        if field.ndim != self.spatial_dims + 1 or field.shape[0] != channels:
            grid = "n" if self.spatial_dims == 1 else "ny, nx"
            raise ValueError(
                f"The U-Net expects `{name}` of shape ({channels}, {grid})"
                + (f" or ({grid})" if channels == 1 else "")
                + f", got {field.shape}."
            )
        return field

    def __call__(
        self,
        x: Float[Array, "*channels_and_grid"],
        t: Float[ArrayLike, ""],
        condition: Float[Array, "*condition_and_grid"] | None = None,
    ) -> Float[Array, "*out_channels_and_grid"]:
        dtype = self.time_embedding.mlp.layers[0].weight.dtype
        h = self._channels(x, self.in_channels, "x").astype(dtype)
        if self.condition_channels:
            if condition is None:
                raise ValueError(
                    f"This U-Net has {self.condition_channels} condition channel(s): pass a "
                    "`condition` (zeros for the unconditional model)."
                )
            c = self._channels(condition, self.condition_channels, "condition")
            if c.shape[1:] != h.shape[1:]:
                raise ValueError(
                    f"`condition` must be on the state's grid {h.shape[1:]}, got {c.shape[1:]}."
                )
            h = jnp.concatenate([h, c.astype(dtype)])
        elif condition is not None:
            raise ValueError(
                "This U-Net has no condition channels (condition_channels=0) but got a "
                "`condition`; build it with condition_channels=..."
            )
        factor = 2 ** (len(self.down) - 1)
        if any(size % factor for size in h.shape[1:]):
            raise ValueError(
                f"A U-Net with {len(self.down)} levels needs grid sizes divisible by "
                f"{factor}, got {h.shape[1:]}."
            )
        time_features = self.time_embedding(t, dtype)
        h = self.input_conv(h)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, time_features)
            if level < len(self.down) - 1:
                skips.append(h)
                h = _pool(h)
        for block, skip in zip(reversed(self.up), reversed(skips), strict=True):
            h = block(jnp.concatenate([_upsample(h), skip]), time_features)
        out = self.output_conv(h)
        return out[0] if x.ndim == self.spatial_dims and self.out_channels == 1 else out


# ---------------------------------------------------------------------------- time-MLP


class TimeMLP(eqx.Module):
    r"""An MLP denoiser for vector states: ``net([x_t, φ(t), condition])``.

    ``φ(t)`` are `time_features` sinusoidal features of the diffusion time
    ([`sinusoidal_embedding`][]). For latent spaces and low-dimensional states where a
    convolution has no grid to act on.

    **Arguments:**

    - `state_size`: length of ``x_t`` (and of the output).
    - `condition_size`: length of the condition vector (0: none; the network is then
      called with ``condition=None``).
    - `width`, `depth`, `activation`: of the `equinox.nn.MLP` (SiLU by default).
    - `time_features`: number of time features (even).
    - `key`, `dtype`: initial weights and parameter dtype (inputs are cast to it).
    """

    mlp: eqx.nn.MLP
    state_size: int = eqx.field(static=True)
    condition_size: int = eqx.field(static=True)
    time_features: int = eqx.field(static=True)

    def __init__(
        self,
        state_size: int,
        condition_size: int = 0,
        width: int = 64,
        depth: int = 2,
        activation: Callable = jax.nn.silu,
        *,
        time_features: int = 16,
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_positive_int("state_size", state_size)
        check_positive_int("width", width)
        if (
            isinstance(condition_size, bool)
            or not isinstance(condition_size, int)
            or condition_size < 0
        ):
            raise ValueError(f"`condition_size` must be an integer >= 0, got {condition_size!r}.")
        if time_features < 2 or time_features % 2:
            raise ValueError(
                f"`time_features` must be an even integer >= 2, got {time_features!r}."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.mlp = eqx.nn.MLP(
            state_size + time_features + condition_size,
            state_size,
            width,
            depth,
            activation,
            dtype=dtype,
            key=key,
        )
        self.state_size = state_size
        self.condition_size = condition_size
        self.time_features = time_features

    def __call__(
        self,
        x: Float[Array, " state_size"],
        t: Float[ArrayLike, ""],
        condition: Float[Array, " condition_size"] | None = None,
    ) -> Float[Array, " state_size"]:
        dtype = self.mlp.layers[0].weight.dtype
        if (condition is None) != (self.condition_size == 0):
            raise ValueError(
                f"This TimeMLP has condition_size={self.condition_size}: pass a condition "
                "of that length"
                + (
                    " (zeros for the unconditional model)."
                    if self.condition_size
                    else " only if it is > 0."
                )
            )
        parts = [x.astype(dtype), sinusoidal_embedding(t, self.time_features).astype(dtype)]
        if condition is not None:
            parts.append(condition.astype(dtype))
        return self.mlp(jnp.concatenate(parts))
