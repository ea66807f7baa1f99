"""Shared helpers of the network tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

KEY = jax.random.key(0)


def numpy_init(factory, seed=0):
    """``factory(key)`` with NumPy weights, U(±1/√fan_in) as Equinox draws them: an eager
    `jax.random` init compiles one program per parameter shape (seconds for a U-Net)."""
    abstract = eqx.filter_eval_shape(factory, KEY)
    rng = np.random.default_rng(seed)

    def fill(module):
        if not isinstance(module, eqx.nn.Linear | eqx.nn.Conv):
            return module
        limit = 1 / np.sqrt(np.prod(module.weight.shape[1:]))
        return eqx.tree_at(
            lambda m: (m.weight, m.bias),
            module,
            tuple(
                jnp.asarray(rng.uniform(-limit, limit, a.shape), a.dtype)
                for a in (module.weight, module.bias)
            ),
        )

    return jax.tree.map(
        fill, abstract, is_leaf=lambda m: isinstance(m, eqx.nn.Linear | eqx.nn.Conv)
    )
