"""Ensemble-space linear algebra shared by the square-root filters.

The symmetric square root ``C^{-1/2}`` of the small (N × N) ensemble-space matrix is
the ETKF family's main cost. `inverse_sqrt_spd` computes it with the coupled
Newton-Schulz iteration (matrix products only: on CPU 2-3× faster than `eigh` at N=24)
and differentiates it with an eigenvalue formula that has no ``1/(λi - λj)`` terms, so
gradients stay finite when eigenvalues repeat (sparse observations), where
differentiating through `jnp.linalg.eigh` gives NaN.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

# Below this size, batched products are faster as unrolled sums of broadcasts than as
# XLA's batched dot, which loops over tiny GEMM calls on CPU (measured: 40 × (7 × 7),
# 2-3× faster; see `inverse_sqrt_spd`).
_UNROLL_MAX = 8
_MAX_ITERATIONS = 64


def _matmul(A, B):
    n = A.shape[-1]
    if A.ndim > 2 and n <= _UNROLL_MAX:
        return sum(A[..., :, k, None] * B[..., None, k, :] for k in range(n))
    return A @ B


def _matmul_batch_last(A, B):
    """``A @ B`` for stacks of small matrices stored batch-last, shape (N, N, batch)."""
    return sum(A[:, k, None, :] * B[None, k, :, :] for k in range(A.shape[1]))


def symmetric_eig(matrix: Float[Array, "*b N N"]):
    """Eigen-decomposition of symmetric matrices (batched), symmetrised first."""
    sym = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    return jnp.linalg.eigh(sym, symmetrize_input=False)


@jax.custom_jvp
def inverse_sqrt_spd(C: Float[Array, "*b N N"], lower_bound=0.0) -> Float[Array, "*b N N"]:
    """Symmetric inverse square root ``C^{-1/2}`` of symmetric positive-definite matrices.

    Coupled Newton-Schulz iteration (Higham 2008, *Functions of Matrices*, eq. 6.35) on
    ``C / c``. With ``u`` the max absolute row sum (≥ the largest eigenvalue) and
    `lower_bound` ``l`` ≤ the smallest eigenvalue (``N-1`` for ``S Sᵀ + (N-1) I``),
    ``c = (l + u) / 2`` centres the spectrum of ``C / c`` on 1, inside (0, 2) where the
    iteration converges. It converges quadratically: the loop stops once the residual
    ``max |I - Z Y|`` of the step just taken is below ``8 √ε`` (the next residual would be
    ~ε), in about 5 iterations for the matrices of cycled DA, at most 64.
    """
    n = C.shape[-1]
    upper = jnp.max(jnp.sum(jnp.abs(C), axis=-1), axis=-1)[..., None, None]
    scale = jnp.where(lower_bound > 0, 0.5 * (lower_bound + upper), upper)
    tolerance = 8 * jnp.sqrt(jnp.finfo(C.dtype).eps)
    A = C / scale
    batch_last = A.ndim > 2 and n <= _UNROLL_MAX
    if batch_last:
        # Stacks of tiny matrices: batch on the last axis, so every product is one fused
        # elementwise loop (and M is materialised, or XLA recomputes it inside both).
        batch_shape = A.shape[:-2]
        A = jnp.moveaxis(A.reshape(-1, n, n), 0, -1)
        matmul, materialise = _matmul_batch_last, jax.lax.optimization_barrier
        eye = jnp.broadcast_to(jnp.eye(n, dtype=C.dtype)[:, :, None], A.shape)
    else:
        matmul, materialise = jnp.matmul, lambda x: x
        eye = jnp.broadcast_to(jnp.eye(n, dtype=C.dtype), A.shape)

    def not_converged(state):
        iteration, _, _, residual = state
        return (residual > tolerance) & (iteration < _MAX_ITERATIONS)

    def step(state):
        iteration, Y, Z, _ = state
        M = materialise(1.5 * eye - 0.5 * matmul(Z, Y))
        return iteration + 1, matmul(Y, M), matmul(M, Z), jnp.max(jnp.abs(M - eye))

    start = (0, A, eye, jnp.asarray(jnp.inf, C.dtype))
    _, _, Z, _ = jax.lax.while_loop(not_converged, step, start)
    if batch_last:
        Z = jnp.moveaxis(Z, -1, 0).reshape(*batch_shape, n, n)
    Z = 0.5 * (Z + jnp.swapaxes(Z, -1, -2))
    return Z / jnp.sqrt(scale)


@inverse_sqrt_spd.defjvp
def _inverse_sqrt_spd_jvp(primals, tangents):
    # With C = V diag(λ) Vᵀ and r = √λ: Y = C^{1/2} solves Y dY + dY Y = dC, and
    # d(C^{-1/2}) = -C^{-1/2} dY C^{-1/2}, i.e. in the eigenbasis
    # dZ'_ij = -dC'_ij / (r_i r_j (r_i + r_j)): no eigenvalue differences.
    (C, lower_bound), (dC, _) = primals, tangents
    Z = inverse_sqrt_spd(C, lower_bound)
    eigenvalues, V = symmetric_eig(C)
    r = jnp.sqrt(eigenvalues)
    Vt = jnp.swapaxes(V, -1, -2)
    denominator = r[..., :, None] * r[..., None, :] * (r[..., :, None] + r[..., None, :])
    dZ = V @ (-(Vt @ dC @ V) / denominator) @ Vt
    return Z, dZ


def ensemble_transform(C, projected, scale):
    """``w = C⁻¹ projected`` and ``T = √scale C^{-1/2}`` for ``C = PSD + scale I`` (batched).

    The ETKF family's analysis in ensemble space: ``C = S Sᵀ + (N-1) I``
    (Hunt et al. 2007, eqs. 21-24).
    """
    Z = inverse_sqrt_spd(C, jnp.asarray(scale, dtype=C.dtype))
    weights = (_matmul(Z, _matmul(Z, projected[..., None])))[..., 0]
    return weights, jnp.sqrt(scale) * Z


def transform_from_eig(eigenvalues, eigenvectors, projected, scale):
    """As [`ensemble_transform`][] from ``C = V diag(λ) Vᵀ`` (when λ is needed anyway)."""
    V = eigenvectors
    weights = V @ ((V.swapaxes(-1, -2) @ projected[..., None])[..., 0] / eigenvalues)[..., None]
    transform = (V * (scale / eigenvalues)[..., None, :] ** 0.5) @ V.swapaxes(-1, -2)
    return weights[..., 0], transform
