"""The ensemble-space inverse square root: exactness, batching, robust gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.filters._util import ensemble_transform, inverse_sqrt_from_eig, inverse_sqrt_spd


def _reference(C):
    eigenvalues, V = np.linalg.eigh(np.asarray(C))
    return (V / np.sqrt(eigenvalues)[..., None, :]) @ np.swapaxes(V, -1, -2)


def _reference_derivative(C, dC):
    """Daleckii-Krein: in the eigenbasis, d(C^{-1/2})_ij = f[λi, λj] dC_ij with the divided
    difference of f(λ) = λ^{-1/2}, which is -1 / (ri rj (ri + rj)) with r = √λ."""
    eigenvalues, V = np.linalg.eigh(np.asarray(C))
    r = np.sqrt(eigenvalues)
    divided_difference = -1 / (
        r[..., :, None] * r[..., None, :] * (r[..., :, None] + r[..., None, :])
    )
    Vt = np.swapaxes(V, -1, -2)
    return V @ (divided_difference * (Vt @ np.asarray(dC) @ V)) @ Vt


def _normal(seed, shape):
    # NumPy draws: every jax.random.normal of a new shape compiles a threefry program
    # (~0.25 s each, 22 of them here).
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


# Compiled once per shape: eagerly, every operation of the iteration and of its
# derivative compiles on its own (test_jit_and_vmap_agree_with_the_batched_call checks
# the eager call against these).
_inverse_sqrt = jax.jit(inverse_sqrt_spd)


@jax.jit
def _jvp(C, direction, lower_bound):
    return jax.jvp(lambda C: inverse_sqrt_spd(C, lower_bound), (C,), (direction,))


def _ensemble_matrix(seed, N, p, std, batch=()):
    S = std * _normal(seed, (*batch, N, p))
    S = S - S.mean(axis=-2, keepdims=True)
    return S @ jnp.swapaxes(S, -1, -2) + (N - 1) * jnp.broadcast_to(jnp.eye(N), (*batch, N, N))


@pytest.mark.parametrize("std", [0.05, 1.0, 10.0])
@pytest.mark.parametrize(("N", "batch"), [(24, ()), (7, (40,)), (5, (3, 4)), (12, (6,))])
def test_matches_the_eigendecomposition(N, batch, std):
    C = _ensemble_matrix(N, N, 30, std, batch)
    for lower_bound in (0.0, N - 1.0):
        Z = _inverse_sqrt(C, lower_bound)
        # Relative accuracy limited by conditioning (κ up to ~5e3 here).
        np.testing.assert_allclose(Z, _reference(C), rtol=0, atol=1e-12 * np.abs(Z).max())
        np.testing.assert_allclose(Z, np.swapaxes(np.asarray(Z), -1, -2), atol=1e-15)


def test_squares_to_the_inverse():
    C = _ensemble_matrix(0, 24, 40, 3.0)
    Z = inverse_sqrt_spd(C, 23.0)
    np.testing.assert_allclose(Z @ Z @ C, np.eye(24), atol=1e-11)


def test_weights_and_transform_solve_the_ensemble_space_problem():
    C = _ensemble_matrix(1, 10, 6, 1.0, (8,))
    b = _normal(2, (8, 10))
    weights, T = ensemble_transform(C, b, 9.0)
    np.testing.assert_allclose(
        weights, np.linalg.solve(np.asarray(C), np.asarray(b)[..., None])[..., 0], atol=1e-12
    )
    np.testing.assert_allclose(T, 3.0 * _reference(C), atol=1e-12)


@pytest.mark.parametrize("batch", [(), (5,)])
def test_gradient_is_finite_and_matches_finite_differences_with_repeated_eigenvalues(batch):
    # p = 3 < N - 1: S Sᵀ has N - 3 zero eigenvalues, C has a repeated eigenvalue N - 1.
    # Differentiating through eigh gives NaN here; the Lyapunov-form JVP does not.
    N = 8
    S = 0.7 * _normal(3, (*batch, N, 3))

    def loss(S):
        C = S @ jnp.swapaxes(S, -1, -2) + (N - 1) * jnp.broadcast_to(jnp.eye(N), (*batch, N, N))
        return jnp.sum(jnp.sin(inverse_sqrt_spd(C, N - 1.0)))

    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one program for all three points
    gradient = value_and_grad(S)[1]
    assert np.all(np.isfinite(gradient))
    direction = _normal(4, S.shape)
    eps = 1e-6
    finite_difference = (
        value_and_grad(S + eps * direction)[0] - value_and_grad(S - eps * direction)[0]
    ) / (2 * eps)
    assert float(jnp.sum(gradient * direction)) == pytest.approx(float(finite_difference), rel=1e-6)

    def loss_eigh(S):
        C = S @ jnp.swapaxes(S, -1, -2) + (N - 1) * jnp.broadcast_to(jnp.eye(N), (*batch, N, N))
        eigenvalues, V = jnp.linalg.eigh(C)
        Z = (V / jnp.sqrt(eigenvalues)[..., None, :]) @ jnp.swapaxes(V, -1, -2)
        return jnp.sum(jnp.sin(Z))

    # The reason the JVP is hand-written: eigh's derivative divides by λi - λj, which are
    # zero or round-off here. Whether that gives NaN or a finite but wrong gradient
    # depends on LAPACK's rounding (measured: NaN batched, 1 % off unbatched), so both
    # count as the failure the hand-written JVP avoids.
    eigh_gradient = jax.grad(loss_eigh)(S)
    eigh_derivative = float(jnp.sum(eigh_gradient * direction))
    assert not np.all(np.isfinite(eigh_gradient)) or eigh_derivative != pytest.approx(
        float(finite_difference), rel=1e-4
    )


@pytest.mark.parametrize(("std", "tolerance"), [(0.3, 1e-12), (1.0, 1e-12), (10.0, 1e-10)])
@pytest.mark.parametrize(("N", "batch"), [(24, ()), (7, (40,)), (12, (6,))])
def test_derivative_matches_the_eigenvalue_formula(N, batch, std, tolerance):
    # Forward mode against the closed form, for a direction with an antisymmetric part
    # (which the symmetrised output ignores); std=10 gives condition numbers up to ~10³.
    C = _ensemble_matrix(N, N, 30, std, batch)
    direction = _normal(6, C.shape)
    _, derivative = _jvp(C, direction, N - 1.0)
    symmetric = 0.5 * (direction + jnp.swapaxes(direction, -1, -2))
    reference = _reference_derivative(C, symmetric)
    np.testing.assert_allclose(
        derivative, reference, rtol=0, atol=tolerance * np.abs(reference).max()
    )


def test_derivative_at_a_multiple_of_the_identity():
    # Every eigenvalue equal: d(C^{-1/2}) = -c^{-3/2} dC / 2 at C = c I, exactly.
    C = 3.0 * jnp.broadcast_to(jnp.eye(5), (4, 5, 5))
    direction = _normal(7, C.shape)
    direction = direction + jnp.swapaxes(direction, -1, -2)
    _, derivative = _jvp(C, direction, 0.0)
    np.testing.assert_allclose(derivative, -0.5 * 3.0**-1.5 * direction, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(("N", "batch"), [(24, ()), (7, (40,)), (12, (3,))])
def test_reverse_mode_is_the_transpose_of_forward_mode(N, batch):
    # <G, J v> = <Jᵀ G, v>: the Lyapunov solve is transposed correctly under jax.grad.
    C = _ensemble_matrix(8, N, 10, 1.0, batch)
    v, G = _normal(9, (2, *C.shape))
    _, forward = _jvp(C, v, N - 1.0)
    reverse = jax.jit(lambda C, G: jax.vjp(lambda C: inverse_sqrt_spd(C, N - 1.0), C)[1](G)[0])(
        C, G
    )
    assert float(jnp.sum(G * forward)) == pytest.approx(float(jnp.sum(reverse * v)), rel=1e-13)


def test_from_eig_has_the_same_value_and_derivative():
    # Given an eigen-decomposition without derivative (as EnKF-N does), the derivative
    # with respect to C is still that of C^{-1/2}, repeated eigenvalues included.
    C = _ensemble_matrix(10, 9, 4, 1.0, (3,))  # rank 4 < 8: repeats
    direction = _normal(11, C.shape)

    def from_eig(C):
        eigenvalues, V = jnp.linalg.eigh(jax.lax.stop_gradient(C))
        return inverse_sqrt_from_eig(C, eigenvalues, V)

    value, derivative = jax.jvp(from_eig, (C,), (direction,))
    expected_value, expected = jax.jvp(lambda C: inverse_sqrt_spd(C, 8.0), (C,), (direction,))
    np.testing.assert_allclose(value, expected_value, atol=1e-14)
    np.testing.assert_allclose(derivative, expected, atol=1e-14)


def test_jit_and_vmap_agree_with_the_batched_call():
    C = _ensemble_matrix(5, 7, 20, 0.5, (6,))
    batched = inverse_sqrt_spd(C, 6.0)
    mapped = jax.vmap(lambda c: inverse_sqrt_spd(c, 6.0))(C)
    jitted = jax.jit(inverse_sqrt_spd)(C, 6.0)
    np.testing.assert_allclose(mapped, batched, atol=1e-13)
    np.testing.assert_allclose(jitted, batched, atol=1e-15)

    def loss(C):
        return jnp.sum(jnp.sin(inverse_sqrt_spd(C, 6.0)))

    gradient = jax.grad(loss)(C)
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss)))(C), gradient, atol=1e-13)
