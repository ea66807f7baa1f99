"""A multilayer perceptron that standardises its input and scales its output."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import concrete, require_positive
from .cnn import check_positive_int


class MLP(eqx.Module):
    r"""``output_scale · net((x - input_mean) / input_std)`` with ``net`` an `equinox.nn.MLP`.

    Physical states are rarely centred and of unit size (Lorenz-96 has mean ≈ 2.3 and
    standard deviation ≈ 3.6), and a learnt correction is usually much smaller than the
    state; standardising the input and scaling the output keeps a freshly initialised
    network well conditioned. The three statistics are fixed: they are arrays (so the
    module saves and loads as one pytree) but gradients do not flow into them, so an
    optimiser without weight decay leaves them unchanged.

    **Arguments:**

    - `in_size`, `out_size`: lengths of the input and output vectors.
    - `width`, `depth`: hidden layer size and number of hidden layers.
    - `activation`: hidden activation (the output layer is linear).
    - `input_mean`, `input_std`: a scalar or one value per input (std > 0).
    - `output_scale`: a scalar or one value per output.
    - `key`: PRNG key for the initial weights; `dtype`: parameter dtype (default: JAX's
      default float). Inputs are cast to it; the output has this dtype.
    """

    network: eqx.nn.MLP
    input_mean: Float[Array, " in_size"]
    input_std: Float[Array, " in_size"]
    output_scale: Float[Array, " out_size"]

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int = 64,
        depth: int = 2,
        activation: Callable = jax.nn.relu,
        *,
        key: PRNGKeyArray,
        dtype=None,
        input_mean: ArrayLike = 0.0,
        input_std: ArrayLike = 1.0,
        output_scale: ArrayLike = 1.0,
    ):
        for name, value in (("in_size", in_size), ("out_size", out_size), ("width", width)):
            check_positive_int(name, value)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        # Statistics first: a bad one fails before the weights are drawn.
        input_mean = _broadcast("input_mean", input_mean, in_size, dtype)
        input_std = _broadcast("input_std", input_std, in_size, dtype)
        output_scale = _broadcast("output_scale", output_scale, out_size, dtype)
        require_positive("input_std", input_std, "Pass the inputs' standard deviation.")
        scale = concrete(output_scale)
        if scale is not None and not np.all(np.isfinite(scale)):
            raise ValueError(f"`output_scale` must be finite, got {output_scale}.")
        self.network = eqx.nn.MLP(in_size, out_size, width, depth, activation, dtype=dtype, key=key)
        self.input_mean, self.input_std, self.output_scale = input_mean, input_std, output_scale

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        mean, std, scale = jax.lax.stop_gradient(
            (self.input_mean, self.input_std, self.output_scale)
        )
        return scale * self.network((x.astype(mean.dtype) - mean) / std)


def _broadcast(name: str, value, size: int, dtype) -> Array:
    array = jnp.asarray(value, dtype=dtype)
    if array.ndim > 1 or (array.ndim == 1 and array.shape[0] != size):
        raise ValueError(f"`{name}` must be a scalar or have shape ({size},), got {array.shape}.")
    return jnp.broadcast_to(array, (size,))
