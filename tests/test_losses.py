"""`cycled_loss`: finite-difference gradients, dense oracles, checkpointing, bad input."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda import Resolvent, assimilate, cycled_loss
from hybridda.dynamics import AbstractDynamics, Lorenz96
from hybridda.filters import ETKF, EnKF, EnKFN, Multiplicative
from hybridda.losses import LOSS_KINDS
from hybridda.observe import GaussianError, every_kth, full_observation
from hybridda.variational import Var3D, climatological_covariance

N_STATE, MEMBERS, CYCLES, BURN_IN, DT = 10, 8, 24, 2, 0.05


@dataclasses.dataclass
class Twin:
    model: Resolvent
    observation: object
    truth: jax.Array
    y: jax.Array
    E0: jax.Array  # (MEMBERS, n)
    x_b: jax.Array  # (1, n): a first guess for 3D-Var, off the truth
    B: jax.Array  # a climatological background covariance


@pytest.fixture(scope="module")
def twin():
    model = Resolvent(Lorenz96(n=N_STATE, forcing=8.0), dt=DT)
    keys = jax.random.split(jax.random.key(0), 3)
    x_start = Lorenz96(n=N_STATE).default_initial_state()
    states = eqx.filter_jit(hybridda.simulate)(model, x_start, 2000)[300:]  # on the attractor
    x0, truth = states[0], states[1 : CYCLES + 1]
    observation = full_observation(N_STATE, GaussianError(1.0))
    y = eqx.filter_jit(hybridda.synthesise_observations)(observation, truth, keys[0])
    # Missing values, which every cycle must skip (and the gradients with them).
    y = y.at[5, 3].set(jnp.nan).at[9, :2].set(jnp.nan)
    E0 = hybridda.initial_ensemble(keys[1], x0, MEMBERS, 1.0)
    x_b = (x0 + 0.5 * jax.random.normal(keys[2], (N_STATE,)))[None, :]
    B = 0.05 * climatological_covariance(states)
    return Twin(model, observation, truth, y, E0, x_b, B)


def build(twin, method_name, forcing, second):
    """Model and method from (forcing, inflation factor) -- or (forcing, B scale) for 3D-Var."""
    model = eqx.tree_at(lambda m: m.dynamics.forcing, twin.model, forcing)
    if method_name == "etkf":
        return model, ETKF(inflation=Multiplicative(second)), twin.E0
    if method_name == "enkf-n":
        return model, EnKFN(inflation=Multiplicative(second)), twin.E0
    return model, Var3D(second * twin.B), twin.x_b


# ------------------------------------------------------------- finite differences


# Every kind with the ETKF; the observation-space likelihood (its ensemble and static-B
# forms) with EnKF-N and 3D-Var. (Each kind is one more compiled scan: ~2 s.)
@pytest.mark.parametrize(
    ("method_name", "kinds"),
    [
        ("etkf", LOSS_KINDS),
        ("enkf-n", ("negative_log_likelihood",)),
        ("3dvar", ("negative_log_likelihood",)),
    ],
)
def test_gradients_match_central_finite_differences(twin, method_name, kinds):
    # d(loss)/d(forcing) and d(loss)/d(inflation factor) -- or d/d(B scale) for 3D-Var,
    # which has no inflation -- by reverse mode through every forecast and analysis of
    # 24 cycles, against central differences of the same float64 loss.
    key = jax.random.key(1)

    def losses(params):
        model, method, E0 = build(twin, method_name, params[0], params[1])
        return jnp.stack(
            [
                cycled_loss(
                    model,
                    twin.observation,
                    method,
                    twin.y,
                    E0,
                    key,
                    kind=kind,
                    truth=twin.truth,
                    burn_in=BURN_IN,
                )
                for kind in kinds
            ]
        )

    params = jnp.array([8.0, 1.0 if method_name == "3dvar" else 1.02])
    h = 1e-5
    # One compiled function: values and reverse-mode Jacobian at p, p ± h e_i.
    points = params[None, :] + jnp.concatenate([jnp.zeros((1, 2)), h * jnp.eye(2), -h * jnp.eye(2)])
    values, jacobians = eqx.filter_jit(jax.vmap(lambda p: (losses(p), jax.jacrev(losses)(p))))(
        points
    )
    values, jacobian = np.asarray(values), np.asarray(jacobians[0])  # (5, kinds), (kinds, 2)
    central = ((values[1:3] - values[3:5]) / (2 * h)).T  # (kinds, 2)
    assert np.all(np.isfinite(jacobian))
    assert np.all(np.abs(central).max(axis=0) > 1e-2), central  # real sensitivities
    np.testing.assert_allclose(jacobian, central, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------- dense oracles


def test_assimilate_checkpointing_and_the_rmse_kinds_match_their_definitions(twin):
    # `assimilate(checkpoint=7)` (3 blocks and a remainder of 3) is bitwise the plain run;
    # `cycled_loss` runs the same cycles and keys (a stochastic EnKF exercises the key
    # schedule): its RMSE kinds are time averages of the trajectory's errors.
    method = EnKF(inflation=Multiplicative(1.05))
    key = jax.random.key(2)
    run = eqx.filter_jit(assimilate)
    args = (twin.model, twin.observation, method, twin.y, twin.E0, key)
    trajectory = run(*args, store_ensembles=True)
    blocked = run(*args, store_ensembles=True, checkpoint=7)
    for a, b in zip(jax.tree.leaves(trajectory), jax.tree.leaves(blocked), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="checkpoint"):
        assimilate(*args, checkpoint=0)

    @eqx.filter_jit
    def loss(kind):
        return cycled_loss(*args, kind=kind, truth=twin.truth, burn_in=BURN_IN)

    truth, y = np.asarray(twin.truth), np.asarray(twin.y)
    analysis, forecast = np.asarray(trajectory.analysis_mean), np.asarray(trajectory.forecast_mean)

    def rmse(a, b):
        return np.sqrt(np.mean((a - b) ** 2, axis=-1))

    np.testing.assert_allclose(
        loss("analysis_rmse"), rmse(analysis, truth)[BURN_IN:].mean(), rtol=1e-13
    )
    np.testing.assert_allclose(
        loss("forecast_rmse"), rmse(forecast, truth)[BURN_IN:].mean(), rtol=1e-13
    )
    misfit = [np.sqrt(np.nanmean((y[k] - forecast[k]) ** 2)) for k in range(BURN_IN, CYCLES)]
    np.testing.assert_allclose(loss("innovation_rmse"), np.mean(misfit), rtol=1e-13)


def _gaussian_nll(y, mean, covariance):
    """-log N(y; mean, covariance) over the observed (non-NaN) entries, dense NumPy."""
    observed = ~np.isnan(y)
    d = (y - mean)[observed]
    S = covariance[np.ix_(observed, observed)]
    _, log_det = np.linalg.slogdet(S)
    return 0.5 * (d @ np.linalg.solve(S, d) + log_det + observed.sum() * np.log(2 * np.pi))


@pytest.mark.parametrize("method_name", ["etkf", "3dvar"])
def test_negative_log_likelihood_equals_the_dense_gaussian_density(twin, method_name):
    # Two cycles (the second with a missing value), every-2nd observation with a
    # per-observation std: -log N(y_k; H x̄ᶠ, H Pᶠ Hᵀ + R) with Pᶠ the forecast ensemble's
    # sample covariance after prior inflation (ETKF) or B (3D-Var), averaged.
    std = np.linspace(0.5, 1.5, N_STATE // 2)
    observation = every_kth(N_STATE, 2, GaussianError(std))
    H = np.eye(N_STATE)[::2]
    R = np.diag(std**2)
    y = np.asarray(twin.y[:2, ::2]).copy()
    y[1, 2] = np.nan
    model = twin.model
    if method_name == "etkf":
        method, E0 = ETKF(inflation=Multiplicative(1.1, when="prior")), twin.E0
    else:
        method, E0 = Var3D(twin.B), twin.x_b
    key = jax.random.key(3)
    trajectory = eqx.filter_jit(assimilate)(
        model, observation, method, jnp.asarray(y), E0, key, store_ensembles=True
    )
    expected = []
    for k in range(2):
        E = np.asarray(trajectory.forecast_ensemble[k])
        mean = E.mean(axis=0)
        if method_name == "etkf":
            P = 1.1**2 * np.cov(E, rowvar=False, ddof=1)
        else:
            P = np.asarray(twin.B)
        expected.append(_gaussian_nll(y[k], H @ mean, H @ P @ H.T + R))
    loss = eqx.filter_jit(cycled_loss)(model, observation, method, jnp.asarray(y), E0, key)
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-12)


# ------------------------------------------------------------ checkpoint, truncate


def test_checkpointing_and_truncation_keep_the_value_and_give_the_documented_gradients(twin):
    key, window = jax.random.key(4), 6
    observation, method = twin.observation, ETKF(inflation=Multiplicative(1.02))

    def leaves(gradients):
        model, method = gradients
        return jnp.stack([model.dynamics.forcing, method.inflation.factor])

    @eqx.filter_jit
    def value_and_gradient(parts, checkpoint=None, truncate=None):
        def loss(parts):
            model, method = parts
            return cycled_loss(
                model,
                observation,
                method,
                twin.y,
                twin.E0,
                key,
                checkpoint=checkpoint,
                truncate=truncate,
            )

        value, gradient = eqx.filter_value_and_grad(loss)(parts)
        return value, leaves(gradient)

    parts = (twin.model, method)
    value, gradient = value_and_gradient(parts)
    # B = 5 does not divide the 24 cycles: 4 blocks and a remainder of 4.
    value_c, gradient_c = value_and_gradient(parts, checkpoint=5)
    assert value_c == value  # bitwise: the same operations, cycle by cycle
    # Gradients agree to round-off only: the parameters' cotangents are summed per
    # block, then over blocks (another association of the same sum).
    np.testing.assert_allclose(gradient_c, gradient, rtol=1e-12)

    # Truncated backpropagation (combined with checkpointing): the same value, another
    # gradient -- that of the sum of independent window losses, each started from the
    # plain run's analysis ensemble held constant.
    value_t, gradient_t = value_and_gradient(parts, checkpoint=4, truncate=window)
    assert value_t == value
    assert np.all(np.abs(gradient_t - gradient) > 1e-6 * np.abs(gradient))
    trajectory = eqx.filter_jit(assimilate)(
        twin.model, observation, method, twin.y, twin.E0, key, store_ensembles=True
    )
    starts = jnp.concatenate([twin.E0[None], trajectory.analysis_ensemble[window - 1 :: window]])
    firsts = jnp.arange(0, CYCLES, window)
    y_windows = twin.y.reshape(CYCLES // window, window, -1)

    def mean_of_window_losses(parts):
        model, method = parts

        def window_loss(E, first, y):
            return cycled_loss(
                model, observation, method, y, E, key, t0=first * DT, first_cycle=first
            )

        return jnp.mean(jax.vmap(window_loss)(starts[: len(firsts)], firsts, y_windows))

    oracle_value, oracle_gradient = eqx.filter_jit(
        eqx.filter_value_and_grad(mean_of_window_losses)
    )(parts)
    np.testing.assert_allclose(oracle_value, value, rtol=1e-13)
    np.testing.assert_allclose(gradient_t, leaves(oracle_gradient), rtol=1e-10)


# ------------------------------------------------------------------- bad input


class BreaksDown(AbstractDynamics):
    """Lorenz-96 whose tendency turns NaN after time `until`, like a model that diverges."""

    lorenz: Lorenz96
    until: float = eqx.field(static=True)

    @property
    def state_size(self) -> int:
        return self.lorenz.state_size

    def tendency(self, t, x, args=None):
        return jnp.where(t > self.until, jnp.nan, self.lorenz.tendency(t, x, args))


def test_a_non_finite_loss_raises_naming_the_first_non_finite_cycle(twin):
    # NaN from t > 0.31: cycle k integrates [0.05 k, 0.05 (k+1)], so the forecasts of cycle
    # 6 on are NaN. (A cleaner oracle than a real blow-up, whose first overflow (~1e300)
    # may come a cycle earlier or later in the differently fused gradient program.)
    model = Resolvent(BreaksDown(Lorenz96(n=N_STATE, forcing=8.0), until=0.31), dt=DT)
    method, key = ETKF(), jax.random.key(6)
    trajectory = eqx.filter_jit(assimilate)(model, twin.observation, method, twin.y, twin.E0, key)
    finite = np.all(np.isfinite(np.asarray(trajectory.analysis_mean)), axis=1)
    first = int(np.argmin(finite))  # the oracle: the first cycle with a non-finite analysis
    assert first == 6 and not finite[first:].any()

    def loss(forcing):
        model_f = eqx.tree_at(lambda m: m.dynamics.lorenz.forcing, model, forcing)
        return cycled_loss(
            model_f, twin.observation, method, twin.y, twin.E0, key, kind="analysis_rmse",
            truth=twin.truth,
        )  # fmt: skip

    message = f"not finite: its score at cycle {first} of `y_seq` is the first"
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        eqx.filter_jit(loss)(8.0)
    # Under jax.grad the value is unused; the check must still run (not dead code).
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        eqx.filter_jit(jax.grad(loss))(8.0)


def test_bad_arguments(twin):
    args = (twin.model, twin.observation, ETKF(), twin.y, twin.E0, jax.random.key(7))
    with pytest.raises((ValueError, TypeError), match="kind"):
        cycled_loss(*args, kind="rmse")
    with pytest.raises(ValueError, match="needs `truth`"):
        cycled_loss(*args, kind="analysis_rmse")
    # (the runtime shape check of the annotations may answer first, with a TypeError)
    with pytest.raises((ValueError, TypeError), match="truth"):
        cycled_loss(*args, kind="analysis_rmse", truth=twin.truth[:3])
    with pytest.raises(ValueError, match="burn_in"):
        cycled_loss(*args, burn_in=CYCLES)
    with pytest.raises(ValueError, match="checkpoint"):
        cycled_loss(*args, checkpoint=0)
    with pytest.raises(ValueError, match="truncate"):
        cycled_loss(*args, truncate=-1)
    with pytest.raises(ValueError, match="ensemble_size"):
        cycled_loss(twin.model, twin.observation, ETKF(), twin.y, twin.E0[:1], jax.random.key(7))
