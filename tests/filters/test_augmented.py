"""Online parameter estimation on the augmented state [x; θ], against the exact Kalman filter."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda.dynamics import Lorenz96
from hybridda.filters import (
    ETKF,
    LETKF,
    AugmentedModel,
    AugmentedObservation,
    EnKF,
    EnKFN,
    Localisation,
    Multiplicative,
    ParameterAugmentation,
)
from hybridda.observe import GaussianError, IndexObservation, LinearObservation, full_observation

from .helpers import (
    AffineDynamics,
    affine_twin,
    analyse,
    kalman_update,
    sample_moments,
)

KEY = jax.random.key(0)
DT = 0.1


def affine_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 3
    A = 0.5 * rng.standard_normal((n, n)) - 0.3 * np.eye(n)
    model = AugmentedModel(
        hybridda.Resolvent(AffineDynamics(jnp.asarray(A), jnp.zeros(n)), DT),
        where=lambda m: m.dynamics.bias,
    )
    observation = IndexObservation([0, 2], n, GaussianError(jnp.asarray([0.5, 0.8])))
    H = np.eye(n)[[0, 2]]
    R = np.diag([0.25, 0.64])
    return rng, A, model, observation, H, R


@pytest.mark.parametrize(
    "case",
    ["plain", "parameter-prior-inflation", "parameter-posterior-inflation", "state-inflation"],
)
def test_augmented_etkf_tracks_the_exact_kalman_filter(case):
    # x⁺ = M x + G b with b unknown: the augmented system z = [x; b] is linear,
    # z⁺ = F z with F = [[M, G], [0, I]], observed through [H, 0]. An ensemble holding the
    # prior moments exactly then follows the Kalman filter exactly, cycle after cycle.
    n, q, members, cycles = 3, 3, 10, 8
    twin = affine_twin(seed=1, cycles=cycles, members=members, bias=[1.0, -2.0, 0.5], dt=DT)
    model, observation, init = twin.model, twin.observation, twin.init
    F, H_z, R, y_seq = twin.F, twin.H_z, twin.R, twin.y_seq
    m, P = twin.mean, twin.covariance
    factor = 1.3
    # D scales the anomalies of one block, so the covariance becomes D P D.
    D = np.eye(n + q)
    kwargs, when = {}, None
    if case.startswith("parameter"):
        when = "prior" if "prior" in case else "posterior"
        D[n:, n:] *= factor
        kwargs["parameter_inflation"] = Multiplicative(factor, when=when)
    elif case == "state-inflation":
        when = "prior"
        D[:n, :n] *= factor
        kwargs["state_inflation"] = Multiplicative(factor, when=when)
    method = ParameterAugmentation(ETKF(), **kwargs)

    trajectory = eqx.filter_jit(hybridda.assimilate)(
        model, observation, method, jnp.asarray(y_seq), init, KEY, store_ensembles=True
    )
    for k in range(cycles):
        m, P = F @ m, F @ P @ F.T
        if when == "prior":
            P = D @ P @ D
        np.testing.assert_allclose(trajectory.forecast_mean[k], m, atol=1e-10)
        m, P = kalman_update(m, P, H_z, R, y_seq[k])
        if when == "posterior":
            P = D @ P @ D
        mean, cov = sample_moments(trajectory.analysis_ensemble[k])
        scale = max(1.0, np.abs(P).max())
        np.testing.assert_allclose(mean, m, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(cov, P, rtol=0, atol=1e-9 * scale)
    # The parameters were learnt from observations of x alone (not a vacuous test).
    assert np.abs(trajectory.analysis_mean[-1, n:] - trajectory.analysis_mean[0, n:]).max() > 0.1


@pytest.mark.parametrize(
    "case", ["plain", "state-inflation", "filter-inflation", "filter-posterior-inflation"]
)
def test_cycled_loss_scores_the_state_block_with_the_exact_kalman_likelihood(case):
    # As above, the ensemble follows the augmented Kalman filter exactly, so the
    # loss's observation likelihood is the exact Kalman innovation likelihood
    # y_k ~ N(H_z m_k^f, H_z P_k^f H_zᵀ + R), with the prior inflation the analysis
    # applies; the RMSE kinds compare the state block with a (cycles, n) truth.
    n, q, members, cycles = 3, 3, 10, 6
    twin = affine_twin(seed=2, cycles=cycles, members=members, bias=[0.5, -1.0, 1.5], dt=DT)
    model, observation, init = twin.model, twin.observation, twin.init
    F, H_z, R, y_seq, truths = twin.F, twin.H_z, twin.R, twin.y_seq, twin.truths
    m, P = twin.mean, twin.covariance
    D, D_posterior = np.eye(n + q), np.eye(n + q)  # anomaly scalings before/after analysis
    if case == "state-inflation":
        method = ParameterAugmentation(ETKF(), state_inflation=Multiplicative(1.2, when="prior"))
        D[:n, :n] *= 1.2
    elif case == "filter-inflation":
        method = ParameterAugmentation(ETKF(inflation=Multiplicative(1.2, when="prior")))
        D *= 1.2
    elif case == "filter-posterior-inflation":
        method = ParameterAugmentation(ETKF(inflation=Multiplicative(1.2)))
        D_posterior *= 1.2
    else:
        method = ParameterAugmentation(ETKF())

    nll, squared_errors = [], []
    for k in range(cycles):
        m, P = F @ m, D @ F @ P @ F.T @ D
        S = H_z @ P @ H_z.T + R
        d = y_seq[k] - H_z @ m
        _, log_det = np.linalg.slogdet(2 * np.pi * S)
        nll.append(0.5 * (d @ np.linalg.solve(S, d) + log_det))
        m, P = kalman_update(m, P, H_z, R, y_seq[k])
        P = D_posterior @ P @ D_posterior
        squared_errors.append(np.mean((m[:n] - truths[k]) ** 2))

    def loss(kind, truth=None):
        return hybridda.cycled_loss(
            model, observation, method, jnp.asarray(y_seq), init, KEY, kind=kind, truth=truth
        )

    np.testing.assert_allclose(loss("negative_log_likelihood"), np.mean(nll), rtol=1e-9)
    np.testing.assert_allclose(
        loss("analysis_rmse", jnp.asarray(truths)), np.mean(np.sqrt(squared_errors)), rtol=1e-9
    )


@pytest.mark.parametrize("method", [EnKF(), EnKFN(), ETKF(inflation=Multiplicative(1.1))])
def test_wrapper_is_the_filter_on_the_lifted_system(method):
    # Without a random walk, ParameterAugmentation(f) is f with the operator [H, 0]
    # (written independently here as a LinearObservation), same key included.
    rng = np.random.default_rng(2)
    n, q, members = 4, 2, 7
    Z = jnp.asarray(rng.standard_normal((members, n + q)))
    error = GaussianError(jnp.asarray([0.3, 0.6, 0.9]))
    H = np.eye(n)[[0, 1, 3]]
    observation = IndexObservation([0, 1, 3], n, error)
    lifted = LinearObservation(np.hstack([H, np.zeros((3, q))]), error)
    y = jnp.asarray(rng.standard_normal(3))
    ours = analyse(ParameterAugmentation(method), Z, y, observation, KEY)
    reference = analyse(method, Z, y, lifted, KEY)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
    lifted_operator = AugmentedObservation(observation, q)
    np.testing.assert_allclose(lifted_operator.linearise(Z[0]), lifted.matrix, atol=0)


def test_random_walk_perturbs_the_parameters_only():
    rng = np.random.default_rng(3)
    n, q, members = 3, 2, 4000
    Z = jnp.asarray(rng.standard_normal((members, n + q)))
    observation = full_observation(n, GaussianError(1.0))
    std = jnp.asarray([0.1, 0.3])
    # Nothing observed, so the (cheap, p × p) EnKF update leaves the ensemble as it is.
    method = ParameterAugmentation(EnKF(), parameter_noise_std=std)
    missing = jnp.full(n, jnp.nan)
    out = analyse(method, Z, missing, observation, KEY)
    np.testing.assert_array_equal(out[:, :n], Z[:, :n])
    steps = np.asarray(out[:, n:] - Z[:, n:])
    np.testing.assert_allclose(steps.mean(axis=0), 0.0, atol=1e-14)  # centred: mean kept
    # σ per parameter, within 5% (the sampling error of a std from 4000 draws is 1.1%).
    np.testing.assert_allclose(steps.std(axis=0, ddof=1), std, rtol=0.05)
    # The same key gives the same walk, another key another one.
    again = analyse(method, Z, missing, observation, KEY)
    other = analyse(method, Z, missing, observation, jax.random.key(1))
    np.testing.assert_array_equal(again, out)
    assert np.abs(np.asarray(other - out)).max() > 1e-3


def test_recovers_lorenz96_forcing_online():
    # Truth F = 8; the forecast model starts from F ~ N(6, 1) per member. Every variable
    # is observed with noise of std 1, 300 cycles. Measured: F 5.70 after the first
    # analysis, 8.021 on average over the last 100 cycles, final spread 0.071, analysis
    # RMSE 0.199 over the last 100 cycles.
    truth_model = hybridda.Resolvent(Lorenz96(40, 8.0))
    observation = full_observation(40, GaussianError(1.0))
    k_obs, k_state, k_parameters, k_da = jax.random.split(jax.random.key(5), 4)

    @eqx.filter_jit
    def twin():  # one compiled function for the truth and its observations
        x0 = hybridda.spin_up(truth_model, truth_model.dynamics.default_initial_state(), 500)
        truth = hybridda.simulate(truth_model, x0, 300)[1:]
        return x0, truth, hybridda.synthesise_observations(observation, truth, k_obs)

    x0, truth, y = twin()
    model = AugmentedModel(
        hybridda.Resolvent(Lorenz96(40, 6.0)), where=lambda m: m.dynamics.forcing
    )
    assert model.parameter_size == 1 and float(model.parameters()[0]) == 6.0
    init = model.initial_ensemble(k_parameters, hybridda.initial_ensemble(k_state, x0, 20), 1.0)
    method = ParameterAugmentation(ETKF(inflation=Multiplicative(1.05)))
    trajectory = eqx.filter_jit(hybridda.assimilate)(model, observation, method, y, init, k_da)
    states, forcing = model.split(trajectory.analysis_mean)
    assert abs(float(forcing[0, 0]) - 6.0) < 1.0  # it started far from the truth ...
    assert abs(float(jnp.mean(forcing[-100:, 0])) - 8.0) < 0.1  # ... and converged
    _, forcing_members = model.split(trajectory.final_ensemble)
    assert float(jnp.std(forcing_members)) < 0.2  # confident, not collapsed onto a wrong F
    rmse = hybridda.metrics.rmse(truth, states)
    assert float(jnp.mean(rmse[-100:])) < 0.3
    # The learnt model is the model with the learnt parameters.
    learnt = model.with_parameters(forcing[-1])
    assert float(learnt.dynamics.forcing) == float(forcing[-1, 0])


def test_gradient_through_augmented_cycles_matches_finite_differences():
    # The final parameter estimate as a function of the observation-error std (a
    # nonlinear dependence through every gain), differentiated through jit + scan.
    rng, _, model, _, _, _ = affine_problem(seed=4)
    n, q, members = 3, 3, 8
    init = jnp.asarray(rng.standard_normal((members, n + q)))
    y_seq = jnp.asarray(rng.standard_normal((6, 2)))

    def final_parameters(std):
        observation = IndexObservation([0, 2], n, GaussianError(std * jnp.asarray([1.0, 1.5])))
        method = ParameterAugmentation(EnKF(), parameter_noise_std=0.05)
        trajectory = hybridda.assimilate(model, observation, method, y_seq, init, KEY)
        return jnp.sum(model.split(trajectory.analysis_mean[-1])[1] ** 2)

    std, eps = 0.7, 1e-5
    # One compiled function serves the gradient and the finite differences.
    value_and_grad = eqx.filter_jit(jax.value_and_grad(final_parameters))
    _, gradient = value_and_grad(jnp.asarray(std))
    finite = (
        value_and_grad(jnp.asarray(std + eps))[0] - value_and_grad(jnp.asarray(std - eps))[0]
    ) / (2 * eps)
    assert abs(float(gradient)) > 1e-3
    np.testing.assert_allclose(gradient, finite, rtol=1e-6)


def _local_parameter_analyses(Z, y, indices, std, n, radius):
    """θ analysed in each local domain i, independently: the augmented ETKF with the
    observation errors of domain i, std / √ρ_ij (tapering R⁻¹ by ρ_ij), and the
    observations outside its support missing."""
    gaps = np.abs(np.arange(n)[:, None] - np.asarray(indices)[None, :]) % n
    taper = np.asarray(Localisation(radius).taper(jnp.asarray(np.minimum(gaps, n - gaps)), radius))
    out = []
    for rho in taper:
        inside = rho > 0
        local_std = np.where(inside, std / np.sqrt(np.where(inside, rho, 1.0)), 1.0)
        observation = IndexObservation(indices, n, GaussianError(jnp.asarray(local_std)))
        y_local = jnp.where(jnp.asarray(inside), y, jnp.nan)
        out.append(analyse(ParameterAugmentation(ETKF()), Z, y_local, observation, KEY)[:, n:])
    return np.stack(out)


@pytest.mark.parametrize("radius", [float("inf"), 2.0])
def test_augmented_letkf_is_the_local_state_and_the_mean_local_parameter_analysis(radius):
    # The LETKF on [x; θ]: x by the local analyses (as if θ were absent); θ by the mean
    # of its local analyses (default), or by the global ETKF analysis (the θ block of the
    # augmented ETKF). With an infinite radius all of them are the augmented ETKF.
    rng = np.random.default_rng(6)
    n, q, members, indices, std = 12, 2, 6, [0, 3, 4, 8], 0.7
    Z = jnp.asarray(rng.standard_normal((members, n + q)) + np.r_[np.zeros(n), 3.0, -1.0])
    observation = IndexObservation(indices, n, GaussianError(std))
    y = jnp.asarray(rng.standard_normal(4))
    letkf = LETKF(Localisation(radius))
    mean = analyse(ParameterAugmentation(letkf), Z, y, observation, KEY)
    glob = analyse(
        ParameterAugmentation(letkf, local_parameter_update="global"), Z, y, observation, KEY
    )
    etkf = analyse(ParameterAugmentation(ETKF()), Z, y, observation, KEY)
    state_only = analyse(letkf, Z[:, :n], y, observation, KEY)
    for out in (mean, glob):
        np.testing.assert_allclose(out[:, :n], state_only, rtol=0, atol=1e-12)
    np.testing.assert_allclose(glob[:, n:], etkf[:, n:], rtol=0, atol=1e-12)
    local = _local_parameter_analyses(Z, y, indices, std, n, radius)
    np.testing.assert_allclose(mean[:, n:], local.mean(axis=0), rtol=0, atol=1e-10)
    if math.isinf(radius):
        np.testing.assert_allclose(mean, etkf, rtol=0, atol=1e-10)
    else:
        assert np.abs(np.asarray(mean[:, n:] - glob[:, n:])).max() > 1e-3


def test_augmented_letkf_inflation_acts_on_the_whole_augmented_ensemble():
    rng = np.random.default_rng(7)
    n, q = 12, 1
    Z = jnp.asarray(rng.standard_normal((5, n + q)))
    observation = IndexObservation([2, 7], n, GaussianError(1.0))
    missing = jnp.full(2, jnp.nan)  # nothing observed: only the inflation acts
    out = analyse(
        ParameterAugmentation(LETKF(Localisation(2.0), Multiplicative(1.2))),
        Z,
        missing,
        observation,
        KEY,
    )
    anomalies = np.asarray(Z - Z.mean(axis=0)[None])
    np.testing.assert_allclose(out - Z.mean(axis=0)[None], 1.2 * anomalies, rtol=0, atol=1e-12)


def test_augmented_letkf_recovers_lorenz96_forcing_with_few_members():
    # N = 10 members for n = 40 (half observed, std 1): too few for a global filter on the
    # state, enough for the LETKF (radius 3, with precomputed local domains). F starts
    # from N(6, 1) per member; truth 8. Measured: mean F over the last 100 of 300 cycles
    # 8.005, analysis RMSE 0.38 (with local_parameter_update="global" F collapses at 7.07).
    n = 40
    truth_model = hybridda.Resolvent(Lorenz96(n, 8.0))
    observation = IndexObservation(np.arange(0, n, 2), n, GaussianError(1.0))
    k_obs, k_state, k_parameters, k_da = jax.random.split(jax.random.key(8), 4)

    @eqx.filter_jit
    def twin():
        x0 = hybridda.spin_up(truth_model, truth_model.dynamics.default_initial_state(), 500)
        truth = hybridda.simulate(truth_model, x0, 300)[1:]
        return x0, truth, hybridda.synthesise_observations(observation, truth, k_obs)

    x0, truth, y = twin()
    model = AugmentedModel(hybridda.Resolvent(Lorenz96(n, 6.0)), where=lambda m: m.dynamics.forcing)
    init = model.initial_ensemble(k_parameters, hybridda.initial_ensemble(k_state, x0, 10), 1.0)
    localisation = Localisation(3.0)
    letkf = LETKF(localisation, Multiplicative(1.05), localisation.local_domains(observation))
    method = ParameterAugmentation(letkf)
    trajectory = eqx.filter_jit(hybridda.assimilate)(model, observation, method, y, init, k_da)
    states, forcing = model.split(trajectory.analysis_mean)
    assert abs(float(jnp.mean(forcing[-100:, 0])) - 8.0) < 0.1
    assert float(jnp.mean(hybridda.metrics.rmse(truth, states)[-100:])) < 0.5


# ------------------------------------------------------------------------ bad input


def test_bad_parameter_prior_is_rejected():
    _, _, model, _, _, _ = affine_problem()
    states = jnp.zeros((5, 3))
    for std in (0.0, -1.0, jnp.asarray([1.0, 0.0, 1.0])):
        with pytest.raises(ValueError, match="parameter_std"):
            model.initial_ensemble(KEY, states, std)
    with pytest.raises(ValueError, match="parameter_std"):
        model.initial_ensemble(KEY, states, jnp.ones(2))  # 3 parameters
    with pytest.raises(ValueError, match="parameter_mean"):
        model.initial_ensemble(KEY, states, 1.0, parameter_mean=jnp.zeros(4))
    with pytest.raises(ValueError, match="ensemble_size"):
        model.initial_ensemble(KEY, jnp.zeros((1, 3)), 1.0)
    with pytest.raises(ValueError, match="4 state variables but the model has 3"):
        model.initial_ensemble(KEY, jnp.zeros((5, 4)), 1.0)
    with pytest.raises(ValueError, match="parameter_noise_std"):
        ParameterAugmentation(ETKF(), parameter_noise_std=-0.1)


def test_bad_ensembles_and_methods_are_rejected():
    observation = full_observation(3, GaussianError(1.0))
    method = ParameterAugmentation(ETKF())
    with pytest.raises(ValueError, match="n \\+ q"):
        method.analysis(jnp.zeros((5, 3)), jnp.zeros(3), observation, KEY)  # no parameters
    with pytest.raises(ValueError, match="ensemble_size"):
        method.analysis(jnp.zeros((1, 5)), jnp.zeros(3), observation, KEY)
    with pytest.raises(ValueError, match="3 parameters"):
        ParameterAugmentation(ETKF(), parameter_noise_std=jnp.ones(2)).analysis(
            jnp.zeros((4, 6)), jnp.zeros(3), observation, KEY
        )
    with pytest.raises(ValueError, match="local_parameter_update"):
        ParameterAugmentation(LETKF(Localisation(4.0)), local_parameter_update="median")
    with pytest.raises(ValueError, match="no learnt parameters"):
        AugmentedModel(hybridda.Resolvent(Lorenz96(40, jnp.asarray(8))))  # an integer F
    with pytest.raises(ValueError, match="Parameters have no position.*LETKF"):
        AugmentedObservation(observation, 2).locations(jnp.arange(5.0))
    _, _, model, _, _, _ = affine_problem()
    with pytest.raises(ValueError, match="last axis of n \\+ 3"):
        model.split(jnp.zeros((4, 3)))
