"""Strong-constraint 4D-Var on the 40 x 20 QG channel (issue 6, target 3).

One window of the imperfect model of OOPS (``QG().perturbed(depths=(5500, 4500))``)
observed at 100 random streamfunction points per cycle, synthesised from the "truth"
``QG()``: the tangent-linear model of the window's trajectory passes the Taylor test,
its adjoint the dot-product test. The jit-compiled incremental minimisation of the same
window (outer and inner loops) is tested through the benchmark that times it,
``tests/test_qg_fourdvar_benchmark.py`` (one compilation of that program, not two).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda as hda
from hybridda.dynamics import QG
from hybridda.observe import GaussianError, RandomQGPointObservation
from hybridda.variational import StrongFourDVar, channel_gaussian_covariance

WINDOW, STEPS_PER_CYCLE, DT = 4, 2, 0.05
OBS_COUNT, OBS_STD, BACKGROUND_STD = 100, 0.05, 0.3


SPIN_UP_CYCLES = 200  # 400 RK4 steps from the default state: turbulent, saturating


@eqx.filter_jit
def truth_run(resolvent, observation, key):
    """Spin-up and the true window in one `lax.scan` (one compiled RK4 body), and the
    window's observations."""
    states = hda.simulate(
        resolvent, resolvent.dynamics.default_initial_state(), SPIN_UP_CYCLES + WINDOW
    )
    start, window = states[SPIN_UP_CYCLES], states[SPIN_UP_CYCLES + 1 :]
    return start, window, hda.synthesise_observations(observation, window, key)


def make_window():
    """The truth, the imperfect model, the true window and the 4D-Var cost of the window."""
    truth_model = QG()
    model = truth_model.perturbed(depths=(5500.0, 4500.0))
    truth_resolvent = hda.Resolvent(truth_model, dt=DT, steps_per_cycle=STEPS_PER_CYCLE)
    key_network, key_noise = jax.random.split(jax.random.key(0))
    # The same points for both models; each diagnoses the streamfunction from its own PV.
    truth_network = RandomQGPointObservation(
        truth_model, OBS_COUNT, GaussianError(OBS_STD), key_network
    )
    network = RandomQGPointObservation(model, OBS_COUNT, GaussianError(OBS_STD), key_network)
    start, truth, y = truth_run(truth_resolvent, truth_network, key_noise)
    B = channel_gaussian_covariance(model, BACKGROUND_STD, length=1.0, layer_correlation=0.5)
    noise = np.linalg.cholesky(B) @ np.random.default_rng(1).standard_normal(B.shape[0])
    background = start + jnp.asarray(noise)
    cost = StrongFourDVar(
        hda.Resolvent(model, dt=DT, steps_per_cycle=STEPS_PER_CYCLE),
        network,
        y,
        background,
        jnp.asarray(B),
    )
    return truth_model, model, start, truth, cost


@pytest.fixture(scope="module")
def window():
    return make_window()


@eqx.filter_jit
def linearised_window(cost, x, dx, dy, epsilons):
    """The window's trajectory at ``x`` and at ``x + ε dx`` (every ε), its tangent-linear
    ``M' dx`` (`jax.linearize`) and adjoint ``M'ᵀ dy`` (`jax.linear_transpose`, as the
    Gauss-Newton minimisers use them)."""
    base, tangent = jax.linearize(cost.trajectory, x)
    perturbed = jax.vmap(lambda eps: cost.trajectory(x + eps * dx))(epsilons)
    (adjoint,) = jax.linear_transpose(tangent, x)(dy)
    return base, perturbed, tangent(dx), adjoint


def test_window_tangent_linear_taylor_and_adjoint_dot_product(window):
    *_, start, _, cost = window
    rng = np.random.default_rng(2)
    n = start.shape[0]
    # Background-like directions: smooth, of the size of the background error.
    factor = np.linalg.cholesky(np.asarray(cost.background_covariance))
    dx = jnp.asarray(factor @ rng.standard_normal(n))
    dy = jnp.asarray(rng.standard_normal((WINDOW, n)))
    epsilons = 2.0 ** -np.arange(1, 12)
    base, perturbed, tangent, adjoint = linearised_window(cost, start, dx, dy, epsilons)
    assert tangent.shape == (WINDOW, n) and adjoint.shape == (n,)

    # Taylor test: ||M(x + ε dx) - M(x) - ε M' dx|| = O(ε²), so it falls by 4 when ε
    # halves, over three decades of ε (float64; at ε = 1/2 the step is half the
    # background error, at 2^-11 roundoff is still far below the remainder).
    remainders = np.array(
        [
            float(jnp.linalg.norm(p - base - eps * tangent))
            for eps, p in zip(epsilons, perturbed, strict=True)
        ]
    )
    ratios = remainders[:-1] / remainders[1:]
    np.testing.assert_allclose(ratios, 4.0, rtol=0.01)
    # ... and at small ε the tangent-linear term carries the whole difference.
    first_order = float(jnp.linalg.norm(epsilons[-1] * tangent))
    assert remainders[-1] < 1e-3 * first_order

    # Dot-product test: <M' dx, dy> = <dx, M'^T dy>.
    left = float(jnp.vdot(tangent, dy))
    right = float(jnp.vdot(dx, adjoint))
    assert abs(left - right) <= 1e-12 * abs(left)
