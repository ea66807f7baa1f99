"""Cycling: `assimilate` under jit / vmap / grad, chunking, bad input, literature configs."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda import Resolvent, Trajectory, assimilate, metrics
from hybridda.configs import sakov2012
from hybridda.configs.sakov2008 import REFERENCES
from hybridda.dynamics import Lorenz96
from hybridda.filters import ETKF, EnKF, Multiplicative
from hybridda.observe import GaussianError, RandomSubsetObservation, every_kth, full_observation
from hybridda.twin import TwinConfig, build_dynamics, build_method, run_twin

from .filters.helpers import analyse

N_STATE, MEMBERS, CYCLES, DT = 8, 6, 12, 0.05


@dataclasses.dataclass
class Twin:
    model: Resolvent
    observation: object
    truth: jax.Array
    y: jax.Array
    E0: jax.Array


def make_twin(observation, cycles=CYCLES, n=N_STATE, members=MEMBERS, seed=0):
    model = Resolvent(Lorenz96(n=n, forcing=8.0), dt=DT)
    keys = jax.random.split(jax.random.key(seed), 3)
    x0 = eqx.filter_jit(hybridda.spin_up)(model, Lorenz96(n=n).default_initial_state(), 300)
    truth = eqx.filter_jit(hybridda.simulate)(model, x0, cycles)[1:]
    y = eqx.filter_jit(hybridda.synthesise_observations)(observation, truth, keys[0])
    E0 = hybridda.initial_ensemble(keys[1], x0, members, 1.0)
    return Twin(model, observation, truth, y, E0)


@pytest.fixture(scope="module")
def twin():
    return make_twin(every_kth(N_STATE, 2, GaussianError(1.0)))


@eqx.filter_jit
def run(model, observation, method, y, E0, key, **kwargs):
    return assimilate(model, observation, method, y, E0, key, **kwargs)


def spread(E):
    return np.sqrt(np.mean(np.var(np.asarray(E), axis=0, ddof=1)))


METHOD = EnKF(inflation=Multiplicative(1.05))  # stochastic: exercises the key schedule


def test_assimilate_is_forecast_then_analysis_with_folded_keys(twin):
    # The documented contract: cycle k forecasts one cycle, then assimilates y[k] with
    # key fold_in(key, k); spreads are sqrt(mean_i var_i) with the unbiased variance.
    key = jax.random.key(1)
    trajectory = run(
        twin.model, twin.observation, METHOD, twin.y, twin.E0, key, store_ensembles=True
    )
    forecast = eqx.filter_jit(lambda model, E, t: model.ensemble(E, t))
    E = twin.E0
    for k in range(CYCLES):
        E_f = forecast(twin.model, E, k * DT)
        E = analyse(METHOD, E_f, twin.y[k], twin.observation, jax.random.fold_in(key, k))
        np.testing.assert_allclose(trajectory.forecast_ensemble[k], E_f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(trajectory.analysis_ensemble[k], E, rtol=0, atol=1e-12)
        np.testing.assert_allclose(trajectory.forecast_mean[k], E_f.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(trajectory.analysis_mean[k], E.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(trajectory.forecast_spread[k], spread(E_f), atol=1e-12)
        np.testing.assert_allclose(trajectory.analysis_spread[k], spread(E), atol=1e-12)
    np.testing.assert_allclose(trajectory.final_ensemble, E, rtol=0, atol=1e-12)
    np.testing.assert_allclose(trajectory.times, DT * np.arange(1, CYCLES + 1), rtol=1e-14)
    # the filter does its job: analysis closer to the truth than the forecast, on average
    rmse_a = np.sqrt(np.mean((trajectory.analysis_mean - twin.truth) ** 2))
    rmse_f = np.sqrt(np.mean((trajectory.forecast_mean - twin.truth) ** 2))
    assert rmse_a < rmse_f


def test_vmap_over_seeds_equals_loop_and_jit_equals_eager(twin):
    keys = jax.random.split(jax.random.key(2), 3)

    def one(key):
        return assimilate(twin.model, twin.observation, METHOD, twin.y, twin.E0, key)

    batched = jax.vmap(one)(keys)
    looped = [jax.jit(one)(key) for key in keys]
    eager = one(keys[1])
    for i, trajectory in enumerate(looped):
        for field in ("analysis_mean", "forecast_mean", "analysis_spread", "final_ensemble"):
            np.testing.assert_allclose(
                getattr(batched, field)[i], getattr(trajectory, field), rtol=0, atol=1e-12
            )
    np.testing.assert_allclose(eager.analysis_mean, looped[1].analysis_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(eager.final_ensemble, looped[1].final_ensemble, rtol=0, atol=1e-12)
    # different seeds really give different (stochastic) analyses
    assert np.abs(np.asarray(looped[0].final_ensemble - looped[1].final_ensemble)).max() > 1e-3


@pytest.mark.parametrize("network", ["every-2nd", "random"])
def test_chunked_run_equals_one_run(network, request):
    if network == "random":  # the operator changes every cycle: needs the global index
        observation = RandomSubsetObservation(3, N_STATE, GaussianError(1.0), jax.random.key(3))
        twin = make_twin(observation)
    else:
        twin = request.getfixturevalue("twin")
    key = jax.random.key(4)
    whole = run(twin.model, twin.observation, METHOD, twin.y, twin.E0, key)
    # equal halves with traced first_cycle / t0 share one compiled function, as in run_twin
    split = CYCLES // 2
    first = run(
        twin.model,
        twin.observation,
        METHOD,
        twin.y[:split],
        twin.E0,
        key,
        first_cycle=jnp.asarray(0),
        t0=jnp.asarray(0.0),
    )
    second = run(
        twin.model,
        twin.observation,
        METHOD,
        twin.y[split:],
        first.final_ensemble,
        key,
        first_cycle=jnp.asarray(split),
        t0=jnp.asarray(split * DT),
    )
    joined = Trajectory.concatenate([first, second])
    for field in ("times", "analysis_mean", "forecast_mean", "analysis_spread", "final_ensemble"):
        np.testing.assert_allclose(
            getattr(joined, field), getattr(whole, field), rtol=0, atol=1e-12
        )


def test_missing_observations_in_a_cycle_are_skipped(twin):
    # A cycle with every observation missing is a pure forecast.
    y = twin.y.at[3].set(jnp.nan)
    trajectory = run(twin.model, twin.observation, ETKF(), y, twin.E0, jax.random.key(5))
    np.testing.assert_allclose(trajectory.analysis_mean[3], trajectory.forecast_mean[3], atol=1e-12)
    np.testing.assert_allclose(
        trajectory.analysis_spread[3], trajectory.forecast_spread[3], atol=1e-12
    )
    assert np.all(np.isfinite(np.asarray(trajectory.analysis_mean)))


def test_gradient_of_analysis_rmse_with_respect_to_forcing_matches_finite_differences():
    n, members, cycles = 10, 12, 20
    twin = make_twin(full_observation(n, GaussianError(1.0)), cycles=cycles, n=n, members=members)
    method = ETKF(inflation=Multiplicative(1.02))
    key = jax.random.key(6)

    @eqx.filter_jit
    def loss(model):
        trajectory = assimilate(model, twin.observation, method, twin.y, twin.E0, key)
        return metrics.rmse(twin.truth, trajectory.analysis_mean).mean()

    gradient = eqx.filter_grad(loss)(twin.model).dynamics.forcing

    def at_forcing(forcing):
        return loss(eqx.tree_at(lambda m: m.dynamics.forcing, twin.model, jnp.asarray(forcing)))

    h = 1e-4
    central = (at_forcing(8.0 + h) - at_forcing(8.0 - h)) / (2 * h)
    assert abs(float(central)) > 1e-3  # a real sensitivity, not a vanishing one
    np.testing.assert_allclose(gradient, central, rtol=1e-4)


# ------------------------------------------------------------------------ bad input


def test_bad_arguments_to_assimilate(twin):
    key = jax.random.key(7)
    args = (twin.model, twin.observation, ETKF())
    with pytest.raises(ValueError, match="ensemble_size"):
        assimilate(*args, twin.y, twin.E0[:1], key)
    # (a TypeError from the runtime shape check on the annotation, else a ValueError)
    with pytest.raises((ValueError, TypeError), match="init"):
        assimilate(*args, twin.y, twin.E0[0], key)
    with pytest.raises(ValueError, match="y_seq"):
        assimilate(*args, twin.y[:, :2], twin.E0, key)
    all_nan = jnp.full(twin.y.shape, jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match="entirely NaN"):
        run(*args, all_nan, twin.E0, key)
    with pytest.raises(eqx.EquinoxRuntimeError, match="y_seq.*contains ±inf"):
        run(*args, twin.y.at[2, 1].set(jnp.inf), twin.E0, key)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": "lorenz99"}, "Unknown model"),
        ({"method": "kalman"}, "Unknown method"),
        ({"obs": "some"}, "Unknown obs"),
        ({"ensemble_size": 1}, "ensemble-size"),
        ({"inflation": 0.0}, "inflation"),
        ({"inflation": -1.02}, "inflation"),
        ({"localisation_radius": 0.0}, "localisation-radius"),
        ({"obs_std": 0.0}, "obs-std"),
        ({"background_scale": -1.0}, "background-scale"),
        ({"cycles": 10, "burn_in": 10}, "burn-in"),
        ({"steps_per_cycle": 0}, "steps-per-cycle"),
    ],
)
def test_twin_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        TwinConfig(**changes)


def test_twin_letkf_needs_a_radius_and_3dvar_a_climatology():
    config = TwinConfig(method="letkf", n=8)
    with pytest.raises(ValueError, match="localisation-radius"):
        build_method(config, build_dynamics(config))
    config = TwinConfig(method="3dvar", n=8)
    with pytest.raises(ValueError, match="climatological"):
        build_method(config, build_dynamics(config))
    assert TwinConfig(method="3dvar", ensemble_size=1).ensemble_size == 1  # N unused


# ------------------------------------------------------------- literature settings


@pytest.mark.slow
@pytest.mark.parametrize("reference", REFERENCES, ids=[r.name for r in REFERENCES])
def test_sakov2008_reference_rmse(reference):
    result = run_twin(reference.config.replace(cycles=600, burn_in=200), seed=0)
    rmse = result.metrics["rmse_analysis"]
    assert result.metrics["finite"] and np.isfinite(rmse)
    assert abs(rmse - reference.published_rmse) <= 0.25 * reference.published_rmse, rmse


SAKOV2012 = sakov2012.REFERENCES


@pytest.mark.parametrize("reference", SAKOV2012, ids=[r.name for r in SAKOV2012])
def test_sakov2012_reference_rmse(reference):
    result = run_twin(reference.config.replace(cycles=3000, burn_in=500), seed=0)
    rmse = result.metrics["rmse_analysis"]
    # Within 15 % over 2500 cycles. Over 400 cycles the mean is too noisy for that: with
    # round-off changes alone (XLA optimisation on/off) the ETKF gave 0.476-0.523 and the
    # EnKF-N 0.443-0.511; over 2500, 0.544-0.580 and 0.527-0.553 (3D-Var 1.03-1.04,
    # IEnKS 0.31).
    assert abs(rmse - reference.published_rmse) <= 0.15 * reference.published_rmse, rmse
