"""Convolutional networks on a zonal channel: periodic in x, bounded by walls in y.

The domain of [`hybridda.dynamics.QG`][]: fields of shape ``(channels, ny, nx)`` with
axis -1 (x) periodic and axis -2 (y) between two rigid walls. Every layer pads the input
itself (circularly in x, with the `wall_padding` rule in y) and then convolves without
padding, so each layer maps a field on the grid to a field on the same grid and commutes
with zonal translations (rolling the input along x rolls the output).

**Wall padding** (``wall_padding``):

- ``"zero"`` (default): the ghost rows beyond each wall are zero. For the QG
  perturbation streamfunction and PV, which vanish on the walls (rows ``0`` and
  ``ny + 1`` one grid step outside the interior rows), the first ghost row *is* the wall
  value, so a 3 x 3 kernel sees exactly the model's own wall boundary condition.
- ``"reflect"``: the ghost rows mirror the interior rows about the first/last interior
  row (``jnp.pad`` mode ``"reflect"``: ghost row ``-1`` = row ``1``), a Neumann-like rule
  that assumes nothing about the wall value (for fields such as ``u`` that do not vanish
  there). Needs fewer ghost rows than interior rows.

Either way hidden features are not forced to vanish on the walls; the padding only says
what a kernel sees beyond them.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .cnn import check_positive_int

WALL_PADDINGS = ("zero", "reflect")


def _check_wall_padding(wall_padding) -> None:
    if wall_padding not in WALL_PADDINGS:
        raise ValueError(f"`wall_padding` must be one of {WALL_PADDINGS}, got {wall_padding!r}.")


def _kernel_pair(kernel_size, name: str) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; ``(ky, kx)`` checked."""
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(pair) != 2:
        raise ValueError(f"`{name}` must be an integer or a pair (ky, kx), got {kernel_size!r}.")
    for size in pair:
        check_positive_int(name, size)
    return pair


class ChannelConv2d(eqx.Module):
    r"""A 2-D convolution on the channel: circular padding in x, wall padding in y.

    Output ``o`` at row ``j``, column ``i`` is
    $b_o + \sum_c \sum_{a=0}^{K_y-1}\sum_{b=0}^{K_x-1} w_{o,c,a,b}\,
    \tilde x_{c,\,j + a - \lfloor (K_y-1)/2\rfloor,\,(i + b - \lfloor (K_x-1)/2\rfloor) \bmod n_x}$
    (a cross-correlation, as `equinox.nn.Conv2d`), where $\tilde x$ is the input with the
    ghost rows of `wall_padding` beyond the walls. For odd kernel sizes the centre tap is
    the point itself. Same output grid as the input; any ``(ny, nx)`` (for ``"reflect"``
    ``ny`` must exceed the padding).

    **Arguments:**

    - `in_channels`, `out_channels`: fields per grid point in and out.
    - `kernel_size`: ``K`` or ``(K_y, K_x)``.
    - `wall_padding`: ``"zero"`` or ``"reflect"`` (see the module docstring).
    - `use_bias`, `key`, `dtype`: as for `equinox.nn.Conv2d` (weight shape
      ``(out_channels, in_channels, K_y, K_x)``).

    Input and output shape ``(channels, ny, nx)``.
    """

    conv: eqx.nn.Conv2d
    kernel_size: tuple[int, int] = eqx.field(static=True)
    wall_padding: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        key: PRNGKeyArray,
        wall_padding: Literal["zero", "reflect"] = "zero",
        use_bias: bool = True,
        dtype=None,
    ):
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        _check_wall_padding(wall_padding)
        self.kernel_size = _kernel_pair(kernel_size, "kernel_size")
        self.wall_padding = wall_padding
        self.conv = eqx.nn.Conv2d(
            in_channels,
            out_channels,
            self.kernel_size,
            padding=0,
            use_bias=use_bias,
            dtype=dtype,
            key=key,
        )

    def pad(self, x: Float[Array, "c ny nx"]) -> Array:
        """The input with its ghost rows (y) and wrapped columns (x) for a valid convolution."""
        ky, kx = self.kernel_size
        rows = ((ky - 1) // 2, ky // 2)
        columns = ((kx - 1) // 2, kx // 2)
        if self.wall_padding == "reflect" and max(rows) >= x.shape[-2]:
            raise ValueError(
                f"`wall_padding='reflect'` needs more interior rows than ghost rows: kernel "
                f"{ky} in y pads {max(rows)} rows but the field has ny={x.shape[-2]}. Use a "
                "smaller kernel or wall_padding='zero'."
            )
        # x first (wrap), then y: the corner ghosts are the y-padding of wrapped columns.
        x = jnp.pad(x, ((0, 0), (0, 0), columns), mode="wrap")
        mode = "constant" if self.wall_padding == "zero" else "reflect"
        return jnp.pad(x, ((0, 0), rows, (0, 0)), mode=mode)

    def __call__(self, x: Float[Array, "c_in ny nx"]) -> Float[Array, "c_out ny nx"]:
        return self.conv(self.pad(x))


class ChannelCNN(eqx.Module):
    """A stack of [`ChannelConv2d`][] layers: hidden layers with an activation, a linear readout.

    The 2-D counterpart of [`hybridda.nn.PeriodicCNN`][] for fields on a zonal channel
    (periodic in x, walls in y), e.g. the two layers of the QG model as two input
    channels. It maps a field on ``(ny, nx)`` points to a field on the same points,
    commutes with zonal translations, and works for any grid size.

    **Arguments:**

    - `in_channels`, `out_channels`: fields per grid point in and out.
    - `widths`: channels of each hidden layer, e.g. ``(32, 32)``; ``()`` gives one
      linear convolution.
    - `kernel_sizes`: one size (``K`` or ``(K_y, K_x)``) for every layer, or one per
      layer (hidden layers then the readout: ``len(widths) + 1`` values).
    - `activation`: applied after every hidden layer (not after the readout).
    - `wall_padding`: ``"zero"`` (default) or ``"reflect"``, for every layer (see the
      module docstring).
    - `key`: PRNG key for the initial weights; `dtype`: parameter dtype (default: JAX's
      default float). Inputs are cast to it, so a float32 network runs in float32 inside
      a float64 model; the output has this dtype.

    Input ``(ny, nx)`` (when `in_channels` is 1) or ``(in_channels, ny, nx)``; output
    ``(ny, nx)`` for a 2-D input with `out_channels` 1, else ``(out_channels, ny, nx)``.
    """

    layers: tuple[ChannelConv2d, ...]
    activation: Callable
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 32),
        kernel_sizes: int | Sequence[int] | Sequence[Sequence[int]] = 3,
        activation: Callable = jax.nn.relu,
        *,
        key: PRNGKeyArray,
        wall_padding: Literal["zero", "reflect"] = "zero",
        dtype=None,
    ):
        widths = tuple(widths)
        for i, width in enumerate(widths):
            check_positive_int(f"widths[{i}]", width)
        _check_wall_padding(wall_padding)
        layer_count = len(widths) + 1
        if isinstance(kernel_sizes, int):
            kernel_sizes = (kernel_sizes,) * layer_count
        kernel_sizes = tuple(kernel_sizes)
        if len(kernel_sizes) != layer_count:
            raise ValueError(
                f"`kernel_sizes` needs one size per layer ({len(widths)} hidden + 1 readout "
                f"= {layer_count}), got {len(kernel_sizes)}; or pass a single integer."
            )
        sizes = (in_channels, *widths, out_channels)
        keys = jax.random.split(key, layer_count)
        self.layers = tuple(
            ChannelConv2d(c_in, c_out, k, key=k_layer, wall_padding=wall_padding, dtype=dtype)
            for c_in, c_out, k, k_layer in zip(
                sizes[:-1], sizes[1:], kernel_sizes, keys, strict=True
            )
        )
        self.activation = activation
        self.in_channels = in_channels
        self.out_channels = out_channels

    def __call__(
        self, x: Float[Array, "ny nx"] | Float[Array, "c_in ny nx"]
    ) -> Float[Array, "ny nx"] | Float[Array, "c_out ny nx"]:
        if x.ndim == 2:
            h = x[None]
        else:
            h = x
        if h.ndim != 3 or h.shape[0] != self.in_channels:
            raise ValueError(
                f"The network expects input of shape ({self.in_channels}, ny, nx)"
                + (" or (ny, nx)" if self.in_channels == 1 else "")
                + f", got {x.shape}."
            )
        h = h.astype(self.layers[0].conv.weight.dtype)
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        out = self.layers[-1](h)
        return out[0] if x.ndim == 2 and self.out_channels == 1 else out
