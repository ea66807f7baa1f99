"""Diffusion core: schedule identities, exact parametrisation round trips, forward-noising
moments, samplers against the exact optimal denoiser of a Gaussian (finite-step moments
computed independently in NumPy), classifier-free guidance, EMA closed form, a trained
conditional model on a 1-D Gaussian mixture, and bitwise resume from a checkpoint."""

import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.generative import (
    DDIM,
    DDPM,
    AbstractPrediction,
    AbstractSchedule,
    CosineSchedule,
    Diffusion,
    EpsilonPrediction,
    LinearSchedule,
    TabulatedSchedule,
    VPrediction,
    X0Prediction,
    add_noise,
    denoising_loss,
    ema_update,
    fit_diffusion,
    sample,
)
from hybridda.nn import TimeMLP
from tests.nn.helpers import numpy_init

KEY = jax.random.key(0)
MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.8], [0.8, 2.0]])
HO_BETAS = np.linspace(1e-4, 0.02, 1000)


class GaussianOracle(eqx.Module):
    """The exact optimal denoiser of x0 ~ N(MEAN + condition, COV), in any parametrisation:
    E[x0 | x_t] = m + α Σ (α² Σ + σ² I)⁻¹ (x_t − α m)."""

    schedule: AbstractSchedule
    prediction: AbstractPrediction

    def __call__(self, x, t, condition=None):
        alpha, sigma = self.schedule.alpha_sigma(t)
        mean = jnp.asarray(MEAN) if condition is None else jnp.asarray(MEAN) + condition
        cov = jnp.asarray(COV)
        gain = alpha * jnp.linalg.solve(alpha**2 * cov + sigma**2 * jnp.eye(2), cov).T
        x0 = mean + gain @ (x - alpha * mean)
        return self.prediction.target(x0, (x - alpha * x0) / sigma, alpha, sigma)


def oracle_diffusion(schedule=None, prediction=None) -> Diffusion:
    schedule = CosineSchedule() if schedule is None else schedule
    prediction = VPrediction() if prediction is None else prediction
    return Diffusion(GaussianOracle(schedule, prediction), schedule, prediction)


def exact_sampler_moments(schedule, steps: int, eta: float | None, exact_start: bool = False):
    """Mean and covariance of the sampler's output with the oracle, by NumPy recursion.

    Every step is affine-Gaussian: x̂0 = G x_t + (I − αG) μ, then
    DDPM (eta None): x_s = k0 x̂0 + k1 x_t + std z; DDIM: x_s = α_s x̂0 + c ε̂ + σ_η z.
    Starts from N(0, I), or with `exact_start` from the true q(x_1) = N(α_1 μ, α_1² Σ + σ_1² I).
    Returns (mean, cov, A, b) with x_0 = A x_1 + b + noise terms."""
    times = np.linspace(1.0, 0.0, steps + 1)
    bar = np.asarray(schedule.alpha_bar(jnp.asarray(times)))
    identity = np.eye(2)
    mean, cov = np.zeros(2), identity.copy()
    if exact_start:
        mean, cov = np.sqrt(bar[0]) * MEAN, bar[0] * COV + (1 - bar[0]) * identity
    total_A, total_b = identity.copy(), np.zeros(2)
    for bar_t, bar_s in zip(bar[:-1], bar[1:], strict=True):
        alpha, sigma = np.sqrt(bar_t), np.sqrt(1 - bar_t)
        gain = alpha * COV @ np.linalg.inv(alpha**2 * COV + sigma**2 * identity)
        x0_offset = (identity - alpha * gain) @ MEAN
        beta = 1 - bar_t / bar_s
        if eta is None:
            k0 = np.sqrt(bar_s) * beta / (1 - bar_t)
            k1 = np.sqrt(bar_t / bar_s) * (1 - bar_s) / (1 - bar_t)
            A, b, var = k0 * gain + k1 * identity, k0 * x0_offset, (1 - bar_s) * beta / (1 - bar_t)
        else:
            var = eta**2 * (1 - bar_s) / (1 - bar_t) * beta
            c = np.sqrt(max(1 - bar_s - var, 0.0))
            A = np.sqrt(bar_s) * gain + c / sigma * (identity - alpha * gain)
            b = (np.sqrt(bar_s) - c * alpha / sigma) * x0_offset
        mean, cov = A @ mean + b, A @ cov @ A.T + var * identity
        total_A, total_b = A @ total_A, A @ total_b + b
    return mean, cov, total_A, total_b


# ---------------------------------------------------------------------- schedules


SCHEDULES = [CosineSchedule(), LinearSchedule(), TabulatedSchedule.from_betas(HO_BETAS)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedules_decrease_from_data_to_noise(schedule):
    t = jnp.linspace(0.0, 1.0, 2001)
    bar, alpha, sigma, log_snr = (
        np.asarray(a)
        for a in jax.jit(
            lambda t: (schedule.alpha_bar(t), *schedule.alpha_sigma(t), schedule.log_snr(t[1:]))
        )(t)
    )
    assert bar[0] == pytest.approx(1.0, abs=1e-12)
    assert 0 < bar[-1] <= 1e-4
    assert np.all(np.diff(bar) < 0)
    assert np.all(np.diff(log_snr) < 0)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-14)


def test_linear_schedule_is_the_continuous_limit_of_ho_et_al():
    t = jnp.linspace(0.0, 1.0, 101)
    discrete = TabulatedSchedule.from_betas(HO_BETAS).alpha_bar(t)
    np.testing.assert_allclose(LinearSchedule().alpha_bar(t), discrete, atol=2e-3)
    # Nichol & Dhariwal's f(t)/f(0) where the floor is negligible.
    s, u = 0.008, np.linspace(0, 0.9, 10)
    paper = np.cos(np.pi / 2 * (u + s) / (1 + s)) ** 2 / np.cos(np.pi / 2 * s / (1 + s)) ** 2
    bar = CosineSchedule(alpha_bar_min=1e-12).alpha_bar(jnp.asarray(u))
    np.testing.assert_allclose(bar, paper, rtol=1e-10)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="decrease strictly"):
        TabulatedSchedule(jnp.array([1.0, 0.5, 0.6, 0.1]))
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        TabulatedSchedule(jnp.array([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="noise variances"):
        TabulatedSchedule.from_betas([0.1, 1.2])
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        LinearSchedule(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="alpha_bar_min"):
        CosineSchedule(alpha_bar_min=0.0)
    with pytest.raises(ValueError, match="eta"):
        DDIM(steps=10, eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        DDPM(steps=0)
    diffusion = oracle_diffusion()
    with pytest.raises(ValueError, match="shape"):
        sample(diffusion, DDIM(steps=2), KEY)
    with pytest.raises(ValueError, match="needs a `condition`"):
        diffusion.output(jnp.zeros(2), 0.5, None, 2.0)
    data = np.zeros((8, 2))
    with pytest.raises(ValueError, match="condition_dropout"):
        fit_diffusion(diffusion, data, key=KEY, steps=1, condition_dropout=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        fit_diffusion(diffusion, np.full((8, 2), np.nan), key=KEY, steps=1)
    with pytest.raises(ValueError, match="one row per example"):
        fit_diffusion(diffusion, data, np.zeros((7, 1)), key=KEY, steps=1)


# ---------------------------------------------------------------------- parametrisations


def test_parametrisations_invert_each_other_exactly():
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 5, 3))
    for t in (1e-3, 0.3, 0.7, 1.0):
        alpha, sigma = CosineSchedule().alpha_sigma(jnp.asarray(t))
        x_t = alpha * x0 + sigma * noise
        implied = []
        for prediction in (EpsilonPrediction(), VPrediction(), X0Prediction()):
            target = prediction.target(x0, noise, alpha, sigma)
            back_x0, back_noise = prediction.to_x0_noise(target, x_t, alpha, sigma)
            # ε-prediction divides by α_1 = 0.01 at t = 1, x0-prediction by σ ≈ 1e-3 at t = 1e-3.
            np.testing.assert_allclose(back_x0, x0, rtol=0, atol=1e-12)
            np.testing.assert_allclose(back_noise, noise, rtol=0, atol=1e-12)
            implied.append(target)
        eps, v, clean = implied
        np.testing.assert_allclose(v, alpha * eps - sigma * clean, atol=1e-15)
        # x0 = α x_t − σ v and ε = σ x_t + α v (Salimans & Ho 2022, appendix D).
        np.testing.assert_allclose(alpha * x_t - sigma * v, x0, atol=1e-14)
        np.testing.assert_allclose(sigma * x_t + alpha * v, noise, atol=1e-14)


def test_forward_noising_has_the_moments_of_q():
    schedule = LinearSchedule()
    x0 = jnp.array([2.0, -1.0, 0.5])
    noises = jnp.asarray(np.random.default_rng(2).standard_normal((40_000, 3)))
    x_t = jax.jit(jax.vmap(lambda n: add_noise(schedule, x0, 0.3, n)))(noises)
    alpha, sigma = (float(a) for a in schedule.alpha_sigma(jnp.asarray(0.3)))
    np.testing.assert_allclose(x_t.mean(0), alpha * x0, atol=4 * sigma / 200)
    np.testing.assert_allclose(x_t.std(0), sigma, rtol=0.02)
    exact = add_noise(schedule, x0, 0.3, noises[0])
    np.testing.assert_allclose(exact, alpha * x0 + sigma * noises[0], rtol=1e-14)


# ---------------------------------------------------------------------- samplers


@eqx.filter_jit
def draw(diffusion, sampler, keys, noises):
    return jax.vmap(lambda k, n: sample(diffusion, sampler, k, noise=n))(keys, noises)


@pytest.mark.parametrize(
    "schedule, prediction, sampler, eta",
    [
        (CosineSchedule(), VPrediction(), DDPM(steps=100), None),
        (LinearSchedule(), EpsilonPrediction(), DDIM(steps=40), 0.0),
    ],
    ids=["ddpm-v-cosine", "ddim-eps-linear"],
)
def test_samplers_with_the_exact_denoiser_reproduce_gaussian_data_ddim_deterministic(
    schedule, prediction, sampler, eta
):
    diffusion = oracle_diffusion(schedule, prediction)
    count = 20_000
    noises = np.random.default_rng(3).standard_normal((count, 2))
    noises[1] = noises[0]  # same initial noise, another key
    samples = np.asarray(
        draw(diffusion, sampler, jax.random.split(KEY, count), jnp.asarray(noises))
    )
    mean, cov, A, b = exact_sampler_moments(schedule, sampler.steps, eta)
    if eta == 0.0:
        # DDIM with η = 0 is deterministic: the key does not matter; and here the map
        # noise -> sample is affine, x0 = A x1 + b, with A invertible.
        np.testing.assert_array_equal(samples[0], samples[1])
        np.testing.assert_allclose(samples[:100], noises[:100] @ A.T + b, rtol=1e-7, atol=1e-9)
        assert abs(np.linalg.det(A)) > 1e-3
    else:
        assert np.abs(samples[0] - samples[1]).min() > 1e-6
    # Monte-Carlo tolerance: 4 standard errors of the sample mean and covariance.
    assert np.all(np.abs(samples.mean(0) - mean) < 4 * np.sqrt(np.diag(cov) / count))
    cov_error = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / count)
    assert np.all(np.abs(np.cov(samples.T) - cov) < 4 * cov_error)
    assert np.abs(cov - COV).max() < 0.25
    # The sampler targets the data: from the exact q(x_1) and with many steps the
    # finite-step moments converge to the data's (the error is O(1 / steps)).
    fine_mean, fine_cov, _, _ = exact_sampler_moments(schedule, 4000, eta, exact_start=True)
    np.testing.assert_allclose(fine_mean, MEAN, atol=1e-3)
    np.testing.assert_allclose(fine_cov, COV, atol=5e-3)


def test_ddpm_is_ddim_with_eta_one():
    schedule = CosineSchedule()
    noises = jnp.asarray(np.random.default_rng(4).standard_normal((2, 2)))
    # One DDPM step equals one DDIM(η = 1) step with the same key.
    t, s = jnp.asarray(0.6), jnp.asarray(0.55)
    alpha, sigma = (float(a) for a in schedule.alpha_sigma(t))
    x_t, x0 = noises[0], noises[1]
    eps = (x_t - alpha * x0) / sigma  # a consistent denoised pair, as the model gives
    ddpm, ddim = jax.jit(
        lambda: (
            DDPM().update(schedule, x_t, t, s, x0, eps, KEY),
            DDIM(eta=1.0).update(schedule, x_t, t, s, x0, eps, KEY),
        )
    )()
    np.testing.assert_allclose(ddpm, ddim, rtol=1e-12)


# ---------------------------------------------------------------------- guidance and EMA


def test_classifier_free_guidance_and_condition_dropout():
    diffusion = oracle_diffusion()
    x_t, condition = jnp.array([0.3, -0.2]), jnp.array([1.5, 0.5])

    @jax.jit
    def outputs(scale):
        return (
            diffusion.output(x_t, 0.4, condition, scale),
            diffusion.output(x_t, 0.4, condition),
            diffusion.output(x_t, 0.4, jnp.zeros(2)),
        )

    for scale, expected in ((0.0, 2), (1.0, 1)):
        guided, *plain = outputs(scale)
        np.testing.assert_allclose(guided, plain[expected - 1], rtol=1e-13, atol=1e-15)
    guided, conditional, unconditional = outputs(3.0)
    np.testing.assert_allclose(guided, unconditional + 3 * (conditional - unconditional))

    x0 = jnp.asarray(np.random.default_rng(5).standard_normal((6, 2)))
    conditions = jnp.ones((6, 2))
    loss = jax.jit(lambda c, p: denoising_loss(diffusion, x0, KEY, c, condition_dropout=p))
    assert float(loss(conditions, 1.0)) == float(loss(jnp.zeros((6, 2)), 0.0))
    assert float(loss(conditions, 0.0)) != float(loss(jnp.zeros((6, 2)), 0.0))


def test_ema_equals_its_closed_form():
    rng = np.random.default_rng(6)
    steps, decay = 7, 0.9
    history = rng.standard_normal((steps + 1, 3))
    average = {"w": jnp.asarray(history[0]), "frozen": None}
    for k in range(1, steps + 1):
        average = ema_update(average, {"w": jnp.asarray(history[k]), "frozen": None}, decay)
    closed = decay**steps * history[0] + (1 - decay) * sum(
        decay ** (steps - j) * history[j] for j in range(1, steps + 1)
    )
    np.testing.assert_allclose(average["w"], closed, rtol=1e-14)
    assert average["frozen"] is None


# ---------------------------------------------------------------------- training


def mixture_data():
    """1-D mixture 0.5 N(-2, 0.3²) + 0.5 N(2, 0.3²); the condition is the component."""
    rng = np.random.default_rng(7)
    label = rng.choice([-1.0, 1.0], 1024)
    data = (2 * label + 0.3 * rng.standard_normal(1024))[:, None]
    return data.astype(np.float32), label[:, None].astype(np.float32)


def mixture_model() -> Diffusion:
    network = numpy_init(lambda key: TimeMLP(1, 1, width=64, depth=2, key=key, dtype=jnp.float32))
    return Diffusion(network, CosineSchedule(), VPrediction())


TRAINING = dict(
    batch_size=128, learning_rate=3e-3, condition_dropout=0.2, ema_decay=0.99, steps_per_call=20
)


@eqx.filter_jit
def draw_mixture(diffusion, keys, condition, scale):
    return jax.vmap(
        lambda k: sample(
            diffusion,
            DDIM(steps=20),
            k,
            shape=(1,),
            dtype=jnp.float32,
            condition=condition,
            guidance_scale=scale,
        )
    )(keys)[:, 0]


def test_trained_conditional_model_learns_the_gaussian_mixture():
    data, labels = mixture_data()
    fit = fit_diffusion(
        mixture_model(), data, labels, key=jax.random.key(1), steps=1200, **TRAINING
    )
    assert fit.losses[-100:].mean() < 0.5 * fit.losses[:20].mean()
    keys = jax.random.split(jax.random.key(2), 2000)

    def near_a_mode(x):  # a standard normal has 27 % of its mass there
        return np.mean(np.minimum(np.abs(x - 2), np.abs(x + 2)) < 0.9)

    def draws(condition, scale):
        scale = jnp.asarray(scale, jnp.float32)
        return np.asarray(draw_mixture(fit.ema, keys, jnp.array([condition], jnp.float32), scale))

    unconditional = draws(1.0, 0.0)  # guidance scale 0: the condition is ignored
    assert near_a_mode(unconditional) > 0.8
    assert 0.4 < np.mean(unconditional > 0) < 0.6
    for condition in (1.0, -1.0):
        conditional = draws(condition, 1.0)
        assert np.mean(np.sign(conditional) == condition) > 0.97
        assert abs(np.mean(conditional) - 2 * condition) < 0.15
        assert 0.2 < np.std(conditional) < 0.45  # the component's std is 0.3


def test_fit_resumes_bit_identically_from_a_checkpoint(tmp_path):
    data, labels = mixture_data()
    kwargs = dict(key=jax.random.key(3), steps=40, **TRAINING)
    plain = fit_diffusion(mixture_model(), data, labels, **kwargs)
    directory = tmp_path / "diffusion"
    first = fit_diffusion(mixture_model(), data, labels, checkpoint_dir=directory, **kwargs)
    shutil.rmtree(directory / "40")  # as if interrupted after step 20
    resumed = fit_diffusion(
        mixture_model(), data, labels, checkpoint_dir=directory, resume=True, **kwargs
    )
    for result in (first, resumed):
        np.testing.assert_array_equal(result.losses, plain.losses)
        for model, reference in ((result.diffusion, plain.diffusion), (result.ema, plain.ema)):
            leaves = jax.tree.leaves(eqx.filter(model, eqx.is_array))
            expected = jax.tree.leaves(eqx.filter(reference, eqx.is_array))
            for a, b in zip(leaves, expected, strict=True):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="--resume"):
        fit_diffusion(mixture_model(), data, labels, checkpoint_dir=directory, **kwargs)
    with pytest.raises(ValueError, match="different settings"):
        fit_diffusion(
            mixture_model(),
            data,
            labels,
            checkpoint_dir=directory,
            resume=True,
            **{**kwargs, "steps": 60},
        )
