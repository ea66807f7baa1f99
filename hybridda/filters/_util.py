"""Ensemble-space linear algebra shared by the square-root filters."""

import jax.numpy as jnp
from jaxtyping import Array, Float


def symmetric_eig(matrix: Float[Array, "*b N N"]):
    """Eigen-decomposition of symmetric matrices (batched), symmetrised first."""
    sym = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    return jnp.linalg.eigh(sym, symmetrize_input=False)


def transform_from_eig(eigenvalues, eigenvectors, projected, scale):
    """Given ``C = V diag(λ) V^T``, return ``w = C^{-1} projected`` and ``T = √scale C^{-1/2}``.

    Used by the ETKF family: ``C = S Sᵀ + (N-1) I`` (Hunt et al. 2007, eqs. 21-24).
    """
    V = eigenvectors
    weights = V @ ((V.swapaxes(-1, -2) @ projected[..., None])[..., 0] / eigenvalues)[..., None]
    transform = (V * (scale / eigenvalues)[..., None, :] ** 0.5) @ V.swapaxes(-1, -2)
    return weights[..., 0], transform
