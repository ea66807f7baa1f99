"""Ensemble-space linear algebra shared by the square-root filters.

The symmetric square root ``C^{-1/2}`` of the small (N × N) ensemble-space matrix is
the ETKF family's main cost. `inverse_sqrt_spd` computes it with the coupled
Newton-Schulz iteration (matrix products only: on CPU 2-3× faster than `eigh` at N=24)
and differentiates it by solving a Lyapunov equation, again with matrix products only
(measured about 3× cheaper than the `eigh` formula it replaces). Nothing divides by
``λi - λj``, so gradients stay finite when eigenvalues repeat (sparse observations),
where differentiating through `jnp.linalg.eigh` gives NaN.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

# Below this size, batched products are faster as unrolled sums of broadcasts than as
# XLA's batched dot, which loops over tiny GEMM calls on CPU (measured: 40 × (7 × 7),
# 2-3× faster; see `inverse_sqrt_spd`).
_UNROLL_MAX = 8
_MAX_ITERATIONS = 64
# Steps of the derivative's Lyapunov solve: a cap against non-termination only (measured:
# 7 for the matrices of cycled DA, 51 at condition number 5·10⁴, 93 at 5·10⁶).
_MAX_SEMI_ITERATIONS = 1000


def _is_batch_last(A):
    return A.ndim > 2 and A.shape[-1] <= _UNROLL_MAX


def _matmul(A, B):
    if _is_batch_last(A):
        return sum(A[..., :, k, None] * B[..., None, k, :] for k in range(A.shape[-1]))
    return A @ B


def _matmul_batch_last(A, B):
    """``A @ B`` for stacks of small matrices stored batch-last, shape (N, N, batch)."""
    return sum(A[:, k, None, :] * B[None, k, :, :] for k in range(A.shape[1]))


def symmetric_eig(matrix: Float[Array, "*b N N"]):
    """Eigen-decomposition of symmetric matrices (batched), symmetrised first."""
    sym = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    return jnp.linalg.eigh(sym, symmetrize_input=False)


class _Layout(NamedTuple):
    """How stacks of matrices are stored for fast products; see `_layout`."""

    to_internal: Callable
    from_internal: Callable
    matmul: Callable
    transpose: Callable
    identity: Callable  # the identity, shaped like its (internal) argument


def _layout(A) -> _Layout:
    """The layout for stacks of matrices shaped like `A` (*b, N, N).

    Stacks of tiny matrices go batch-last, (N, N, batch), so that every product is one
    fused elementwise loop; anything else stays as it is.
    """
    n = A.shape[-1]
    if _is_batch_last(A):
        batch_shape = A.shape[:-2]
        return _Layout(
            # also for per-matrix scalars, shaped (*b, 1, 1)
            to_internal=lambda X: jnp.moveaxis(X.reshape(-1, *X.shape[-2:]), 0, -1),
            from_internal=lambda X: jnp.moveaxis(X, -1, 0).reshape(*batch_shape, n, n),
            matmul=_matmul_batch_last,
            transpose=lambda X: jnp.swapaxes(X, 0, 1),
            identity=lambda X: jnp.broadcast_to(jnp.eye(n, dtype=X.dtype)[:, :, None], X.shape),
        )
    return _Layout(
        to_internal=lambda X: X,
        from_internal=lambda X: X,
        matmul=jnp.matmul,
        transpose=lambda X: jnp.swapaxes(X, -1, -2),
        identity=lambda X: jnp.broadcast_to(jnp.eye(n, dtype=X.dtype), X.shape),
    )


def _symmetrise(X):
    return 0.5 * (X + jnp.swapaxes(X, -1, -2))


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

    Its derivative solves a Lyapunov equation with matrix products only (see
    `_lyapunov_solve`): no eigen-decomposition, finite when eigenvalues repeat, and
    transposable, so `jax.grad` works as well as `jax.jvp`.
    """
    upper = jnp.max(jnp.sum(jnp.abs(C), axis=-1), axis=-1)[..., None, None]
    scale = jnp.where(lower_bound > 0, 0.5 * (lower_bound + upper), upper)
    tolerance = 8 * jnp.sqrt(jnp.finfo(C.dtype).eps)
    layout = _layout(C)
    matmul = layout.matmul
    A = layout.to_internal(C / scale)
    eye = layout.identity(A)
    # Batch-last, M is materialised (or XLA recomputes it inside both products).
    materialise = jax.lax.optimization_barrier if _is_batch_last(C) else (lambda x: x)

    def not_converged(state):
        iteration, _, _, residual = state
        return (residual > tolerance) & (iteration < _MAX_ITERATIONS)

    def step(state):
        iteration, Y, Z, _ = state
        M = materialise(1.5 * eye - 0.5 * matmul(Z, Y))
        return iteration + 1, matmul(Y, M), matmul(M, Z), jnp.max(jnp.abs(M - eye))

    start = (0, A, eye, jnp.asarray(jnp.inf, C.dtype))
    _, _, Z, _ = jax.lax.while_loop(not_converged, step, start)
    return _symmetrise(layout.from_internal(Z)) / jnp.sqrt(scale)


@inverse_sqrt_spd.defjvp
def _inverse_sqrt_spd_jvp(primals, tangents):
    (C, lower_bound), (dC, _) = primals, tangents
    Z = inverse_sqrt_spd(C, lower_bound)
    # Y = C Z (one product), not the iteration's own Y: with that one live, XLA compiled
    # Z's final scaling differently in plain and checkpointed gradients of the same loss
    # (values 1 ulp apart; they should be bitwise equal, tests/test_losses.py).
    return Z, _inverse_sqrt_tangent(_symmetrise(_matmul(C, Z)), Z, dC)


@jax.custom_jvp
def inverse_sqrt_from_eig(
    C: Float[Array, "*b N N"],
    eigenvalues: Float[Array, "*b N"],
    eigenvectors: Float[Array, "*b N N"],
) -> Float[Array, "*b N N"]:
    """As [`inverse_sqrt_spd`][], from ``C = V diag(λ) Vᵀ`` when that is known anyway.

    Differentiated as a function of `C` alone, like `inverse_sqrt_spd`: the tangents of
    `eigenvalues` and `eigenvectors` are ignored (they are functions of ``C``, and
    differentiating `eigh` divides by ``λi - λj``).
    """
    del C
    V = eigenvectors
    return _symmetrise((V / jnp.sqrt(eigenvalues)[..., None, :]) @ jnp.swapaxes(V, -1, -2))


@inverse_sqrt_from_eig.defjvp
def _inverse_sqrt_from_eig_jvp(primals, tangents):
    (C, eigenvalues, V), (dC, _, _) = primals, tangents
    Vt = jnp.swapaxes(V, -1, -2)
    Y = _symmetrise((V * jnp.sqrt(eigenvalues)[..., None, :]) @ Vt)
    Z = inverse_sqrt_from_eig(C, eigenvalues, V)
    return Z, _inverse_sqrt_tangent(Y, Z, dC)


def _inverse_sqrt_tangent(Y, Z, dC):
    """The derivative of ``C^{-1/2}`` in direction `dC`, from ``Y = C^{1/2}`` and ``Z = Y⁻¹``."""
    # The derivative of Y = C^{1/2} solves Y dY + dY Y = dC (Higham 2008, §6.1), and
    # that of Z = Y⁻¹ is -Z dY Z. The output is symmetric, so only the symmetric part of
    # dC matters (for symmetric C, the derivative in direction Eᵀ is the transpose of
    # that in direction E). The map dC ↦ dZ is self-adjoint in the Frobenius inner
    # product (Z commutes with the Lyapunov operator), so custom_linear_solve with
    # symmetric=True makes it transposable for reverse mode as one hand-written
    # function: its loop has a data-dependent trip count (not transposable by
    # autodiff), and autodiff's transposes of the unrolled small products around it
    # were slower than the products themselves (10 % on the LETKF's 40 × (7 × 7)).

    def derivative(_, dC):
        dZ = _matmul(Z, _matmul(_lyapunov_solve(Y, Z, dC), Z))
        return -_symmetrise(dZ)

    def inverse(dZ):  # dC = -(Y (Y dZ Y) + (Y dZ Y) Y), used for higher derivatives
        dY = _matmul(Y, _matmul(dZ, Y))
        return -(_matmul(Y, dY) + _matmul(dY, Y))

    return jax.lax.custom_linear_solve(inverse, dC, derivative, symmetric=True)


def _lyapunov_solve(Y, Z, B):
    """``X`` with ``Y X + X Y = B``, for ``Y`` SPD, ``Z = Y⁻¹`` and ``B`` symmetric (batched).

    The sign function of ``[[μY, μB], [0, -μY]]`` is ``[[I, 2X], [0, -I]]`` (Higham 2008,
    §2.4), and one step of Newton's iteration for it (§5.3) is free because ``Y⁻¹ = Z``
    is known: it leaves the same solution of ``A X + X A = G``, ``A = (μY + Z/μ) / 2``,
    ``G = (μB + Z B Z / μ) / 2``. The norm scaling ``μ = (‖Z‖ / ‖Y‖)^{1/2}`` (§5.5;
    ∞-norms) centres the spectrum of ``μY`` on 1, so with ``ρ = ‖Y‖ ‖Z‖`` (≥ the
    condition number of ``Y``) the eigenvalues ``(t + 1/t) / 2`` of ``A`` lie in
    ``[1, a]``, ``a = (ρ^{1/2} + ρ^{-1/2}) / 2``: within a few percent of each other for
    the ensemble-space matrices of cycled DA. Then ``A = c (I + F)``, ``c = (1 + a) / 2``,
    and ``X = G / 2c - (F X + X F) / 2`` is a contraction with rate at most
    ``r = (a - 1) / (a + 1)``, accelerated by Chebyshev semi-iteration (Golub and Varga
    1961; Saad 2003, *Iterative Methods for Sparse Linear Systems*, §12.1) to about
    ``r / 2`` per step. The number of steps follows from that bound, so a step is one
    product and one fused update (conjugate gradients, whose inner products cost more
    than the product at this size, measured 1.5× slower). No eigenvalue enters:
    repeated eigenvalues are harmless.
    """

    def norm(X):  # max absolute row sum of each matrix, axes kept
        return jnp.max(jnp.sum(jnp.abs(X), axis=-1, keepdims=True), axis=-2, keepdims=True)

    norm_Y, norm_Z = norm(Y), norm(Z)
    mu = jnp.sqrt(norm_Z / norm_Y)
    B = _symmetrise(B)
    A = 0.5 * (mu * Y + Z / mu)
    G = 0.5 * (mu * B + _matmul(Z, _matmul(B, Z)) / mu)
    root_rho = jnp.sqrt(norm_Y * norm_Z)
    a = 0.5 * (root_rho + 1 / root_rho)
    c = 0.5 * (1 + a)
    r = (a - 1) / (a + 1)
    # The loop in the layout of the primal's loop (batch-last for stacks of tiny matrices).
    layout = _layout(Y)
    matmul, transpose = layout.matmul, layout.transpose
    F = layout.to_internal(A / c)
    F = F - layout.identity(F)
    half_G = layout.to_internal(G / (2 * c))
    r2 = layout.to_internal(r * r)
    # Error after k steps ≤ 2 τ^k / (1 + τ^2k) of the first, τ = r / (1 + (1 - r²)^{1/2}).
    tau = r / (1 + jnp.sqrt(1 - r * r))
    tolerance = 64 * jnp.finfo(B.dtype).eps
    steps = jnp.ceil(jnp.log(tolerance / 2) / jnp.log(tau))
    steps = jnp.clip(jnp.max(jnp.where(tau > 0, steps, 1)), 1, _MAX_SEMI_ITERATIONS).astype(int)

    def sweep(X, X_previous, omega):
        # X_{k+1} = ω_{k+1} (G/2c - sym(F X_k) - X_{k-1}) + X_{k-1}
        Q = matmul(F, X)
        return omega * (half_G - 0.5 * (Q + transpose(Q)) - X_previous) + X_previous

    def step(_, state):
        X, X_previous, omega = state  # ω_{k+1} = 1 / (1 - r² ω_k / 4)
        return sweep(X, X_previous, omega), X, 1 / (1 - 0.25 * r2 * omega)

    # ω_1 = 1 (a plain fixed-point step), ω_2 = 1 / (1 - r²/2).
    start = (sweep(half_G, half_G, 1.0), half_G, 1 / (1 - 0.5 * r2))
    X, _, _ = jax.lax.fori_loop(1, steps, step, start)
    return layout.from_internal(X)


def ensemble_transform(C, projected, scale):
    """``w = C⁻¹ projected`` and ``T = √scale C^{-1/2}`` for ``C = PSD + scale I`` (batched).

    The ETKF family's analysis in ensemble space: ``C = S Sᵀ + (N-1) I``
    (Hunt et al. 2007, eqs. 21-24).
    """
    Z = inverse_sqrt_spd(C, jnp.asarray(scale, dtype=C.dtype))
    weights = (_matmul(Z, _matmul(Z, projected[..., None])))[..., 0]
    return weights, jnp.sqrt(scale) * Z


def transform_from_eig(C, eigenvalues, eigenvectors, projected, scale):
    """As [`ensemble_transform`][], from ``C = V diag(λ) Vᵀ`` (when λ is needed anyway).

    Differentiated as a function of `C` (see [`inverse_sqrt_from_eig`][]).
    """
    Z = inverse_sqrt_from_eig(C, eigenvalues, eigenvectors)
    weights = (_matmul(Z, _matmul(Z, projected[..., None])))[..., 0]
    return weights, jnp.sqrt(scale) * Z
