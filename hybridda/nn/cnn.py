"""Convolutional networks on a periodic 1-D domain (a latitude circle, Lorenz-96's ring)."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray


def periodic_conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    key: PRNGKeyArray,
    use_bias: bool = True,
    dtype=None,
) -> eqx.nn.Conv1d:
    r"""A 1-D convolution with circular padding: same output length, translation-equivariant.

    Output ``o`` at grid point ``i`` is
    $b_o + \sum_c \sum_{j=0}^{K-1} w_{o,c,j}\, x_{c,\,(i + j - \lfloor (K-1)/2 \rfloor) \bmod n}$
    (a cross-correlation): for an odd kernel size ``K`` tap ``j = (K-1)/2`` is the point
    itself, taps below it look left (``i-1``, ``i-2``, ...), taps above look right.

    Returns an `equinox.nn.Conv1d` (weight shape ``(out_channels, in_channels, K)``)
    acting on inputs of shape ``(in_channels, n)``.
    """
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("kernel_size", kernel_size)
    return eqx.nn.Conv1d(
        in_channels,
        out_channels,
        kernel_size,
        padding=(((kernel_size - 1) // 2, kernel_size // 2),),
        padding_mode="CIRCULAR",
        use_bias=use_bias,
        dtype=dtype,
        key=key,
    )


class PeriodicCNN(eqx.Module):
    """A stack of periodic convolutions: hidden layers with an activation, a linear readout.

    Every layer pads circularly ([`periodic_conv1d`][]), so the network maps a field on
    ``n`` periodic grid points to a field on the same points and commutes with
    translations: rolling the input rolls the output. Works for any ``n``.

    **Arguments:**

    - `in_channels`, `out_channels`: fields per grid point in and out.
    - `widths`: channels of each hidden layer, e.g. ``(32, 32)``; ``()`` gives one
      linear convolution.
    - `kernel_sizes`: one size for every layer, or one per layer (hidden layers then the
      readout: ``len(widths) + 1`` values).
    - `activation`: applied after every hidden layer (not after the readout).
    - `key`: PRNG key for the initial weights; `dtype`: parameter dtype (default: JAX's
      default float). Inputs are cast to it, so a float32 network runs in float32 inside
      a float64 model.

    Input ``(n,)`` (when `in_channels` is 1) or ``(in_channels, n)``; output ``(n,)`` for
    a 1-D input with `out_channels` 1, else ``(out_channels, n)``.
    """

    layers: tuple[eqx.nn.Conv1d, ...]
    activation: Callable
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 32),
        kernel_sizes: int | Sequence[int] = 5,
        activation: Callable = jax.nn.relu,
        *,
        key: PRNGKeyArray,
        dtype=None,
    ):
        widths = tuple(widths)
        for i, width in enumerate(widths):
            check_positive_int(f"widths[{i}]", width)
        if isinstance(kernel_sizes, int):
            kernel_sizes = (kernel_sizes,) * (len(widths) + 1)
        kernel_sizes = tuple(kernel_sizes)
        if len(kernel_sizes) != len(widths) + 1:
            raise ValueError(
                f"`kernel_sizes` needs one size per layer ({len(widths)} hidden + 1 readout "
                f"= {len(widths) + 1}), got {len(kernel_sizes)}; or pass a single integer."
            )
        sizes = (in_channels, *widths, out_channels)
        keys = jax.random.split(key, len(kernel_sizes))
        self.layers = tuple(
            periodic_conv1d(c_in, c_out, k, key=k_layer, dtype=dtype)
            for c_in, c_out, k, k_layer in zip(
                sizes[:-1], sizes[1:], kernel_sizes, keys, strict=True
            )
        )
        self.activation = activation
        self.in_channels = in_channels
        self.out_channels = out_channels

    def __call__(
        self, x: Float[Array, " n"] | Float[Array, "c_in n"]
    ) -> Float[Array, " n"] | Float[Array, "c_out n"]:
        h = as_channels(x, self.in_channels, self.layers[0].weight.dtype)
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return from_channels(self.layers[-1](h), x, self.out_channels)


def as_channels(x, in_channels: int, dtype) -> Array:
    """``(n,)`` → ``(1, n)``; check the channel count; cast to the parameters' dtype."""
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] != in_channels:
        raise ValueError(
            f"The network expects input of shape ({in_channels}, n)"
            + (" or (n,)" if in_channels == 1 else "")
            + f", got {x.shape}."
        )
    return x.astype(dtype)


def from_channels(h, x, out_channels: int) -> Array:
    """Drop the channel axis again for a 1-D input mapped to one output channel."""
    return h[0] if x.ndim == 1 and out_channels == 1 else h


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
