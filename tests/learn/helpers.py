"""Shared test problems: a linear "physical" resolvent and linear dynamics to learn."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from hybridda.hybrid import ResolventCorrection
from hybridda.learn import AnalysisDataset


class LinearMap(eqx.Module):
    """``x⁺ = A x``: a linear one-cycle model (satisfies hybridda.cycle.EnsembleModel)."""

    matrix: Float[Array, "n n"]
    cycle_length: float = eqx.field(static=True, default=1.0)

    def __call__(self, x: Float[Array, " n"], t0=0.0) -> Float[Array, " n"]:
        return self.matrix @ x

    def ensemble(self, E: Float[Array, "N n"], t0=0.0) -> Float[Array, "N n"]:
        return E @ self.matrix.T


def orthogonal(seed: int, n: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def linear_trajectories(matrix, trajectories: int, cycles: int, seed: int = 0) -> list[np.ndarray]:
    """Noise-free runs of ``x⁺ = matrix · x`` from standard normal starts, ``(cycles, n)`` each."""
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(trajectories):
        x = [rng.standard_normal(matrix.shape[0])]
        for _ in range(cycles - 1):
            x.append(matrix @ x[-1])
        runs.append(np.stack(x))
    return runs


def linear_correction_model(physics, seed: int = 0, out_size: int | None = None, init=None):
    """``x⁺ = A x + W x`` with ``W`` a bias-free linear layer (``W = init`` if given)."""
    n = physics.shape[0]
    layer = eqx.nn.Linear(n, out_size or n, use_bias=False, key=jax.random.key(seed))
    if init is not None:
        layer = eqx.tree_at(lambda l: l.weight, layer, jnp.asarray(init))
    return ResolventCorrection(LinearMap(jnp.asarray(physics)), layer)


def datasets(runs, variances=None) -> list[AnalysisDataset]:
    if variances is None:
        return [AnalysisDataset(run) for run in runs]
    return [AnalysisDataset(run, v) for run, v in zip(runs, variances, strict=True)]


class ForcingTwin(NamedTuple):
    """Lorenz-96 (n = 20) twin for learning the forcing online: truth F = 8, a model
    starting at F = 6, every other variable observed (std 1) every cycle, windows of
    `window` cycles (strong 4D-Var, B = I, 8 Gauss-Newton iterations)."""

    truth: Float[Array, "K n"]  # states after cycles 1..K
    y_windows: Float[Array, "W L p"]
    x0: Float[Array, " n"]  # the true initial state
    start_model: object
    observation: object
    method: object


def lorenz96_forcing_twin(windows: int = 40, window: int = 4) -> ForcingTwin:
    import hybridda as hda
    from hybridda.dynamics import Lorenz96
    from hybridda.observe import GaussianError, every_kth
    from hybridda.variational import FourDVar

    n = 20
    truth_model = hda.Resolvent(Lorenz96(n=n, forcing=8.0), dt=0.05)
    observation = every_kth(n, 2, GaussianError(1.0))
    x0 = hda.spin_up(truth_model, truth_model.dynamics.default_initial_state(), 300)
    truth = hda.simulate(truth_model, x0, window * windows)[1:]
    y = hda.synthesise_observations(observation, truth, jax.random.key(2))
    return ForcingTwin(
        truth,
        y.reshape(windows, window, -1),
        x0,
        hda.Resolvent(Lorenz96(n=n, forcing=6.0), dt=0.05),
        observation,
        FourDVar(jnp.eye(n), window=window, outer_loops=8),
    )
