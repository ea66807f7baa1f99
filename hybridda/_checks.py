"""Validation helpers shared by all modules.

Python-level checks run in `__check_init__` on concrete values and raise `ValueError`
with a message naming the argument and the fix. Inside traced code (under `jit`) the
values are unknown, so these helpers skip them; data-dependent checks there use
`eqx.error_if` instead.
"""

import jax
import jax.numpy as jnp
import numpy as np


def concrete(value) -> np.ndarray | None:
    """The value as a NumPy array, or ``None`` if it is a tracer (unknown at trace time)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def require_count(name: str, value, meaning: str) -> None:
    """Raise unless ``value`` is an integer >= 1 (``meaning`` says what it counts)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` ({meaning}) must be an integer >= 1, got {value!r}.")


def require_positive(name: str, value, fix: str = "") -> None:
    """Raise if a concrete ``value`` has an entry that is not finite and > 0."""
    array = concrete(value)
    if array is not None and not np.all(np.isfinite(array) & (array > 0)):
        hint = f" {fix}" if fix else ""
        raise ValueError(f"`{name}` must be finite and > 0, got {value}.{hint}")


def require_spd(name: str, matrix) -> None:
    """Raise if a concrete square ``matrix`` is not symmetric positive definite."""
    array = concrete(matrix)
    if array is None:
        return
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"`{name}` must be a square matrix, got shape {array.shape}.")
    if not np.allclose(array, array.T, rtol=1e-10, atol=1e-12 * np.abs(array).max()):
        raise ValueError(f"`{name}` must be symmetric; symmetrise it with (M + M.T) / 2.")
    eigenvalues = np.linalg.eigvalsh(array)
    if not np.all(np.isfinite(eigenvalues)) or eigenvalues.min() <= 0:
        raise ValueError(
            f"`{name}` must be positive definite, but its smallest eigenvalue is "
            f"{eigenvalues.min():.3g}; add a small multiple of the identity or fix the matrix."
        )


def as_float_array(value) -> jax.Array:
    """Converter for array fields: a JAX array of the default float dtype."""
    return jnp.asarray(value, dtype=float)
