"""Shared oracles for the DA tests: linear-Gaussian problems and exact updates in NumPy.

Everything here is written independently of `hybridda` (plain NumPy), so the tests
compare the library against textbook formulas rather than against itself.
"""

import dataclasses
import math
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from hybridda.dynamics import AbstractDynamics
from hybridda.observe import (
    CorrelatedGaussianError,
    GaussianError,
    IndexObservation,
    LinearObservation,
    every_kth,
    full_observation,
)


class LinearDynamics(AbstractDynamics):
    """dx/dt = A x: RK4 makes the resolvent an exactly linear map."""

    matrix: jnp.ndarray

    @property
    def state_size(self) -> int:
        return self.matrix.shape[0]

    def tendency(self, t, x, args=None):
        return self.matrix @ x


@eqx.filter_jit
def analyse(method, E, y, observation, key):
    """``method.analysis(E, y, observation, key)``, compiled (much faster than op-by-op)."""
    return method.analysis(E, y, observation, key)


def random_spd(rng: np.random.Generator, size: int, jitter: float = 0.5) -> np.ndarray:
    """A well-conditioned random symmetric positive-definite matrix."""
    G = rng.standard_normal((size, size))
    return G @ G.T / size + jitter * np.eye(size)


def ensemble_with_moments(
    rng: np.random.Generator, mean: np.ndarray, covariance: np.ndarray, members: int
) -> np.ndarray:
    """An ensemble (rows = members) whose sample mean and covariance are exactly given.

    Draw, centre, whiten the anomalies (so their sample covariance is I), recolour with
    ``chol(covariance)``. Needs ``members > n``.
    """
    n = mean.shape[0]
    if members <= n:
        raise ValueError("exact moments need more members than state variables")
    Z = rng.standard_normal((members, n))
    Z -= Z.mean(axis=0, keepdims=True)
    L_z = np.linalg.cholesky(Z.T @ Z / (members - 1))
    Z = np.linalg.solve(L_z, Z.T).T  # sample covariance now exactly I
    return mean[None, :] + Z @ np.linalg.cholesky(covariance).T


def sample_moments(E) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and (unbiased) covariance of an ensemble with members as rows."""
    E = np.asarray(E)
    return E.mean(axis=0), np.cov(E, rowvar=False, ddof=1)


def kalman_update(m, P, H, R, y) -> tuple[np.ndarray, np.ndarray]:
    """Exact Kalman analysis: ``K = P Hᵀ (H P Hᵀ + R)⁻¹``, ``m + K(y - Hm)``, ``(I - KH) P``."""
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    m_a = m + K @ (y - H @ m)
    P_a = (np.eye(P.shape[0]) - K @ H) @ P
    return m_a, 0.5 * (P_a + P_a.T)


def relative_error(a, b) -> float:
    """``‖a - b‖ / ‖b‖`` (Frobenius)."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@dataclasses.dataclass
class LinearGaussianProblem:
    """A prior (m, P) held exactly by ensemble `E`, a linear observation and its y."""

    mean: np.ndarray
    covariance: np.ndarray
    E: jnp.ndarray  # (N, n) with sample moments exactly (mean, covariance)
    observation: object  # a hybridda observation operator
    H: np.ndarray  # (p, n) dense operator
    R: np.ndarray  # (p, p) dense error covariance
    y: jnp.ndarray  # (p,)

    def kalman(self, y=None, prior_scale: float = 1.0):
        """The exact Kalman analysis (mean, covariance) with prior covariance × prior_scale."""
        y = np.asarray(self.y if y is None else y)
        return kalman_update(self.mean, prior_scale * self.covariance, self.H, self.R, y)


OPERATORS = ("full-diag", "every-2nd-diag", "index-correlated", "linear-correlated")


def linear_gaussian_problem(
    kind: str, seed: int = 0, state_size: int = 5, members: int = 9
) -> LinearGaussianProblem:
    """One of the `OPERATORS` test problems, with a fixed NumPy seed."""
    rng = np.random.default_rng(seed)
    n = state_size
    mean = rng.standard_normal(n)
    covariance = random_spd(rng, n)
    if kind == "full-diag":
        std = 0.5 + rng.uniform(size=n)
        observation = full_observation(n, GaussianError(std))
        H, R = np.eye(n), np.diag(std**2)
    elif kind == "every-2nd-diag":
        observation = every_kth(n, 2, GaussianError(0.7), offset=1)
        H = np.eye(n)[1::2]
        R = 0.49 * np.eye(H.shape[0])
    elif kind == "index-correlated":
        indices = np.array([0, 2, 3])
        R = random_spd(rng, indices.size)
        observation = IndexObservation(indices, n, CorrelatedGaussianError(R))
        H = np.eye(n)[indices]
    elif kind == "linear-correlated":
        H = rng.standard_normal((4, n))
        R = random_spd(rng, 4)
        observation = LinearObservation(H, CorrelatedGaussianError(R))
    else:
        raise ValueError(kind)
    truth = mean + np.linalg.cholesky(covariance) @ rng.standard_normal(n)
    y = H @ truth + np.linalg.cholesky(R) @ rng.standard_normal(H.shape[0])
    E = ensemble_with_moments(rng, mean, covariance, members)
    return LinearGaussianProblem(
        mean, covariance, jnp.asarray(E), observation, H, R, jnp.asarray(y)
    )


# ---------------------------------------------------------------- localisation oracles


def gaspari_cohn(distance, half_width) -> np.ndarray:
    """Gaspari and Cohn (1999), eq. (4.10), with half-width ``c`` (support ``2c``)."""
    z = np.abs(np.asarray(distance, dtype=float)) / half_width
    out = np.zeros_like(z)
    inner = z <= 1
    outer = (z > 1) & (z <= 2)
    zi = z[inner]
    out[inner] = -0.25 * zi**5 + 0.5 * zi**4 + 0.625 * zi**3 - 5 / 3 * zi**2 + 1
    zo = z[outer]
    out[outer] = (
        zo**5 / 12 - 0.5 * zo**4 + 0.625 * zo**3 + 5 / 3 * zo**2 - 5 * zo + 4 - 2 / (3 * zo)
    )
    return out


def gc_half_width(radius: float) -> float:
    """Half-width making the GC taper ≈ exp(-1/2) at ``radius`` (Sakov 2011; DAPPER)."""
    return radius * math.sqrt(10 / 3)


def ring_distance(i: float, j: float, period: float) -> float:
    """Distance between two points on a circle of length `period`."""
    d = abs(i - j) % period
    return min(d, period - d)


def brute_force_letkf(E, y, indices, std, radius) -> np.ndarray:
    """LETKF on a periodic ring, one grid point at a time (Hunt et al. 2007, section 2.3).

    For each state variable ``i``: taper ``R⁻¹`` by the Gaspari-Cohn weight of each
    observation's distance from ``i``, form ``P̃ = [(N-1) I + Yᵀ R̃⁻¹ Y]⁻¹`` in
    ensemble space, the mean weights ``w = P̃ Yᵀ R̃⁻¹ (y - ȳ)`` and the symmetric square
    root ``W = [(N-1) P̃]^{1/2}`` (by `eigh`), and update column ``i`` only.
    """
    E = np.asarray(E, dtype=float)
    y = np.asarray(y, dtype=float)
    N, n = E.shape
    mean = E.mean(axis=0)
    A = E - mean  # (N, n)
    HE = E[:, indices]
    Y = HE - HE.mean(axis=0)  # (N, p)
    dy = y - HE.mean(axis=0)
    std = np.broadcast_to(std, y.shape)
    out = np.empty_like(E)
    for i in range(n):
        weights = np.array(
            [gaspari_cohn(ring_distance(i, j, n), gc_half_width(radius)) for j in indices]
        )
        R_inv = np.diag(weights / std**2)
        P_tilde = np.linalg.inv((N - 1) * np.eye(N) + Y @ R_inv @ Y.T)
        w = P_tilde @ Y @ R_inv @ dy
        eigenvalues, V = np.linalg.eigh((N - 1) * P_tilde)
        W = V @ np.diag(np.sqrt(eigenvalues)) @ V.T
        out[:, i] = mean[i] + (w[None, :] + W) @ A[:, i]  # member m: x̄ + Σ_k (w_k + W_mk) A_ki
    return out


@dataclasses.dataclass(frozen=True)
class LinearTwin:
    """A cycled linear-Gaussian twin: x⁺ = M x exactly, every other variable observed."""

    model: object  # hybridda.Resolvent of LinearDynamics
    observation: object
    y: jnp.ndarray  # (cycles, p), NaN where missing
    E0: jnp.ndarray  # (members, n), with exactly the prior's mean and covariance
    mean: np.ndarray
    covariance: np.ndarray
    M: np.ndarray  # the model's matrix (one cycle)
    H: np.ndarray
    obs_std: float

    def kalman_filter(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact Kalman filter: analysis means and covariances after each cycle."""
        m, P, means, covariances = self.mean, self.covariance, [], []
        y = np.asarray(self.y)
        for k in range(y.shape[0]):
            m, P = self.M @ m, self.M @ P @ self.M.T
            seen = np.isfinite(y[k])
            Hk = self.H[seen]
            S = Hk @ P @ Hk.T + self.obs_std**2 * np.eye(seen.sum())
            K = P @ Hk.T @ np.linalg.inv(S)
            m, P = m + K @ (y[k][seen] - Hk @ m), (np.eye(len(m)) - K @ Hk) @ P
            means.append(m)
            covariances.append(P)
        return np.array(means), np.array(covariances)


def linear_twin(
    seed: int, n: int = 4, members: int = 7, cycles: int = 12, obs_std: float = 0.7,
    missing: tuple[tuple[int, int], ...] = (),
) -> LinearTwin:  # fmt: skip
    """A random stable-ish linear model (two RK4 steps of ẋ = A x), its truth and data."""
    import hybridda as hda  # the twin is built with the library; the oracle is NumPy

    rng = np.random.default_rng(seed)
    A = 0.4 * rng.standard_normal((n, n))
    model = hda.Resolvent(LinearDynamics(jnp.asarray(A)), dt=0.1, steps_per_cycle=2)
    observation = every_kth(n, 2, GaussianError(obs_std))
    mean, covariance = rng.standard_normal(n), random_spd(rng, n)
    truth = hda.simulate(model, jnp.asarray(rng.standard_normal(n)), cycles)[1:]
    y = np.array(hda.synthesise_observations(observation, truth, jax.random.key(0)))
    for cycle, index in missing:
        y[cycle, index] = np.nan
    E0 = ensemble_with_moments(rng, mean, covariance, members)
    M = np.asarray(jax.jacfwd(lambda x: model(x, 0.0))(jnp.asarray(mean)))  # exactly linear
    H = np.asarray(observation.linearise(jnp.asarray(mean)))
    return LinearTwin(
        model, observation, jnp.asarray(y), jnp.asarray(E0), mean, covariance, M, H, obs_std
    )


class AffineDynamics(AbstractDynamics):
    """dx/dt = A x + b: with RK4, x⁺ = M x + G b is linear in the augmented state [x; b]."""

    matrix: jnp.ndarray
    bias: jnp.ndarray

    @property
    def state_size(self) -> int:
        return self.matrix.shape[0]

    def tendency(self, t, x, args=None):
        return self.matrix @ x + self.bias


def rk4_affine_step(A: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """One RK4 step of dx/dt = A x + b as ``x⁺ = M x + G b`` (the truncated exponential)."""
    n = A.shape[0]
    powers = [np.eye(n)]
    for _ in range(4):
        powers.append(powers[-1] @ (h * A))
    M = sum(p / f for p, f in zip(powers, (1, 1, 2, 6, 24), strict=True))
    G = h * sum(p / f for p, f in zip(powers[:4], (1, 2, 6, 24), strict=True))
    return M, G


class AffineTwin(typing.NamedTuple):
    """A linear twin of the augmented state ``z = [x; b]`` of ``dx/dt = A x + b``."""

    rng: np.random.Generator
    model: object  # AugmentedModel learning b
    observation: IndexObservation  # x_0 and x_2, stds 0.5 and 0.8
    F: np.ndarray  # z⁺ = F z (one RK4 step), F = [[M, G], [0, I]]
    H_z: np.ndarray  # [H, 0]
    R: np.ndarray
    truths: np.ndarray  # (cycles, n): the state block of the true z_k
    y_seq: np.ndarray  # (cycles, 2)
    mean: np.ndarray  # the prior of z_0 ...
    covariance: np.ndarray
    init: jnp.ndarray  # ... held exactly by this ensemble


def affine_twin(seed: int, cycles: int, members: int, bias, dt: float = 0.1) -> AffineTwin:
    """3 variables, the bias ``b`` learnt (`AugmentedModel`), a random prior of ``z_0``."""
    from hybridda import Resolvent
    from hybridda.filters import AugmentedModel

    rng = np.random.default_rng(seed)
    n = 3
    A = 0.5 * rng.standard_normal((n, n)) - 0.3 * np.eye(n)
    model = AugmentedModel(
        Resolvent(AffineDynamics(jnp.asarray(A), jnp.zeros(n)), dt),
        where=lambda m: m.dynamics.bias,
    )
    observation = IndexObservation([0, 2], n, GaussianError(jnp.asarray([0.5, 0.8])))
    R = np.diag([0.25, 0.64])
    M, G = rk4_affine_step(A, dt)
    F = np.block([[M, G], [np.zeros((n, n)), np.eye(n)]])
    H_z = np.hstack([np.eye(n)[[0, 2]], np.zeros((2, n))])
    truth = np.concatenate([rng.standard_normal(n), np.asarray(bias, dtype=float)])
    truths, y_seq = [], []
    for _ in range(cycles):
        truth = F @ truth
        truths.append(truth[:n])
        y_seq.append(H_z @ truth + np.sqrt(np.diag(R)) * rng.standard_normal(2))
    mean, covariance = np.zeros(2 * n), random_spd(rng, 2 * n)
    init = jnp.asarray(ensemble_with_moments(rng, mean, covariance, members))
    return AffineTwin(
        rng,
        model,
        observation,
        F,
        H_z,
        R,
        np.array(truths),
        np.array(y_seq),
        mean,
        covariance,
        init,
    )
