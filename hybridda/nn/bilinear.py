"""The bilinear periodic CNN used to learn Lorenz-96-like dynamics from data."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .cnn import as_channels, check_positive_int, from_channels, periodic_conv1d


def _identity(x):
    return x


class BilinearCNN(eqx.Module):
    r"""Periodic CNN whose first layer is bilinear: it can hold quadratic advection exactly.

    The first layer is one periodic convolution to ``3 w`` channels (``w`` =
    `bilinear_width`), split into groups ``a, b, c`` of ``w`` channels; its output is
    the concatenation ``[a, b ⊙ c]`` (``2 w`` channels), so products of neighbouring
    values, such as Lorenz-96's $(x_{i+1} - x_{i-2})\,x_{i-1}$, are one layer away. Then
    come periodic hidden convolutions with an activation and a linear readout
    convolution of kernel size 1. Every layer pads circularly, so the network is
    translation-equivariant and works for any domain size.

    With no hidden layer (``hidden_widths=()``), ``w = 1`` and kernel size 5 the network
    is exactly the Lorenz-96 tendency for suitable weights (``a = F - x_i``,
    ``b = x_{i+1} - x_{i-2}``, ``c = x_{i-1}``, readout ``a + b c``).

    **Arguments:**

    - `in_channels`, `out_channels`: fields per grid point in and out.
    - `bilinear_width`: ``w``, channels per group of the bilinear layer.
    - `kernel_size`: kernel of the bilinear layer (5 reaches ``i-2 .. i+2``).
    - `hidden_widths`, `hidden_kernel_size`: the hidden periodic convolutions.
    - `activation`: after each hidden layer; `bilinear_activation`: applied to each of
      ``a, b, c`` (default: none, so the layer is exactly linear + quadratic; some
      implementations apply the hidden activation there too).
    - `key`: PRNG key for the initial weights; `dtype`: parameter dtype (inputs are cast).

    Input ``(n,)`` (when `in_channels` is 1) or ``(in_channels, n)``; output ``(n,)`` for
    a 1-D input with `out_channels` 1, else ``(out_channels, n)``. The network gives a
    tendency or an increment; adding it to the state (a residual step) is the job of
    [`hybridda.hybrid.Surrogate`][] or [`hybridda.hybrid.NeuralDynamics`][].

    !!! cite "References"
        Bocquet, Brajard, Carrassi and Bertino (2019), Data assimilation as a learning
        tool to infer ordinary differential equation representations of dynamical
        models, *Nonlin. Processes Geophys.* 26, 143-162. Brajard, Carrassi, Bocquet and
        Bertino (2020), Combining data assimilation and machine learning to emulate a
        dynamical model from sparse and noisy observations: a case study with the
        Lorenz 96 model, *J. Comput. Sci.* 44, 101171.
    """

    bilinear: eqx.nn.Conv1d
    hidden: tuple[eqx.nn.Conv1d, ...]
    readout: eqx.nn.Conv1d
    activation: Callable
    bilinear_activation: Callable
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    bilinear_width: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        bilinear_width: int = 24,
        kernel_size: int = 5,
        hidden_widths: Sequence[int] = (37,),
        hidden_kernel_size: int = 5,
        activation: Callable = jax.nn.relu,
        bilinear_activation: Callable = _identity,
        *,
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_positive_int("bilinear_width", bilinear_width)
        hidden_widths = tuple(hidden_widths)
        for i, width in enumerate(hidden_widths):
            check_positive_int(f"hidden_widths[{i}]", width)
        keys = jax.random.split(key, len(hidden_widths) + 2)
        self.bilinear = periodic_conv1d(
            in_channels, 3 * bilinear_width, kernel_size, key=keys[0], dtype=dtype
        )
        sizes = (2 * bilinear_width, *hidden_widths)
        self.hidden = tuple(
            periodic_conv1d(c_in, c_out, hidden_kernel_size, key=k_layer, dtype=dtype)
            for c_in, c_out, k_layer in zip(sizes[:-1], sizes[1:], keys[1:-1], strict=True)
        )
        self.readout = periodic_conv1d(sizes[-1], out_channels, 1, key=keys[-1], dtype=dtype)
        self.activation = activation
        self.bilinear_activation = bilinear_activation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.bilinear_width = bilinear_width

    def __call__(
        self, x: Float[Array, " n"] | Float[Array, "c_in n"]
    ) -> Float[Array, " n"] | Float[Array, "c_out n"]:
        h = as_channels(x, self.in_channels, self.bilinear.weight.dtype)
        a, b, c = jnp.split(self.bilinear_activation(self.bilinear(h)), 3)
        h = jnp.concatenate([a, b * c])
        for layer in self.hidden:
            h = self.activation(layer(h))
        return from_channels(self.readout(h), x, self.out_channels)
