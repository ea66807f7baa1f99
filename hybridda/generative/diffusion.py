r"""Denoising diffusion: noise schedules, parametrisations, the denoising loss, samplers.

A variance-preserving diffusion in continuous time ``t ∈ [0, 1]`` (Ho et al. 2020 in the
continuous-time form of Kingma et al. 2021): the forward process noises a data state
``x_0`` to

$$ x_t = \alpha_t\, x_0 + \sigma_t\, \varepsilon, \qquad \varepsilon \sim N(0, I),
   \qquad \alpha_t = \sqrt{\bar\alpha(t)},\ \sigma_t = \sqrt{1 - \bar\alpha(t)}, $$

with a *schedule* $\bar\alpha$ decreasing from $\bar\alpha(0) = 1$ (data) to
$\bar\alpha(1) \approx 0$ (pure noise). A network learns to undo it, predicting
``ε`` (Ho et al. 2020), ``v = α_t ε − σ_t x_0`` (Salimans & Ho 2022) or ``x_0`` itself
from ``(x_t, t)``; all three determine the same denoised pair ``(x̂_0, ε̂)``. Samplers
start from ``x_1 ~ N(0, I)`` and step down a grid of ``steps`` times to ``t = 0``:
[`DDPM`][] (ancestral, Ho et al. 2020) or [`DDIM`][] (Song et al. 2021; deterministic for
η = 0). Classifier-free guidance (Ho & Salimans 2022) mixes a conditional and an
unconditional prediction of one network trained with condition dropout.

Any state shape works (a vector, a field ``(channels, ny, nx)``): the network acts on
one state, the loss and samplers `vmap` over examples where needed, and every loop over
sampler or training steps is one `lax.scan`.

```python
diffusion = Diffusion(UNet(1, key=k0), CosineSchedule(), VPrediction())
fit = fit_diffusion(diffusion, fields, key=k1, steps=20_000, ema_decay=0.999)
samples = jax.vmap(lambda k: sample(fit.ema, DDIM(steps=50), k, shape=(40,)))(keys)
```

**References:**

- Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models", NeurIPS
  (DDPM: ε-prediction, the simple loss, the ancestral sampler, the linear schedule).
- Song, Meng & Ermon (2021), "Denoising diffusion implicit models", ICLR (DDIM, eq. 12).
- Nichol & Dhariwal (2021), "Improved denoising diffusion probabilistic models", ICML
  (the cosine schedule, eq. 17).
- Salimans & Ho (2022), "Progressive distillation for fast sampling of diffusion
  models", ICLR (v-prediction, appendix D).
- Ho & Salimans (2022), "Classifier-free diffusion guidance", NeurIPS workshop.
- Kingma, Salimans, Poole & Ho (2021), "Variational diffusion models", NeurIPS
  (continuous time, the signal-to-noise ratio).
"""

import abc
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import concrete, require_count
from .._training import digest, optimiser_transform, train_in_chunks
from ..checkpoint import resume_or_init

# ============================================================================ schedules


class AbstractSchedule(eqx.Module):
    r"""A variance-preserving noise schedule $\bar\alpha(t)$ on ``t ∈ [0, 1]``.

    Subclasses implement [`alpha_bar`][] (decreasing, $\bar\alpha(0) = 1$,
    $\bar\alpha(1) \approx 0$); the signal and noise scales
    ``α_t = √ᾱ``, ``σ_t = √(1 − ᾱ)`` (so ``α_t² + σ_t² = 1``) and the log
    signal-to-noise ratio ``λ_t = log(α_t² / σ_t²)`` follow.
    """

    @abc.abstractmethod
    def alpha_bar(self, t: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""$\bar\alpha(t)$, the signal variance fraction at time ``t`` (elementwise)."""

    def alpha_sigma(
        self, t: Float[ArrayLike, "*shape"]
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        """The signal and noise scales ``(α_t, σ_t)``."""
        alpha_bar = self.alpha_bar(t)
        return jnp.sqrt(alpha_bar), jnp.sqrt(jnp.maximum(1.0 - alpha_bar, 0.0))

    def log_snr(self, t: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """``λ_t = log(ᾱ / (1 − ᾱ))`` (``+inf`` at ``t = 0``)."""
        alpha_bar = self.alpha_bar(t)
        return jnp.log(alpha_bar) - jnp.log1p(-alpha_bar)


def _time(t) -> Array:
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(float)


class CosineSchedule(AbstractSchedule):
    r"""The cosine schedule of Nichol & Dhariwal (2021, eq. 17), floored at ``alpha_bar_min``.

    $$ \bar\alpha(t) = \bar\alpha_{\min} + (1 - \bar\alpha_{\min})\, \frac{f(t)}{f(0)},
       \qquad f(t) = \cos^2\!\Big(\frac{\pi}{2}\,\frac{t + s}{1 + s}\Big), $$

    so ``ᾱ(0) = 1`` and ``ᾱ(1) = alpha_bar_min``; the floor replaces the paper's clipping
    ``β ≤ 0.999`` and keeps ``α_1 > 0`` (ε-prediction divides by it).

    **Arguments:** `offset` ``s > 0`` (0.008 in the paper: keeps the noise at small
    ``t`` from being too small); `alpha_bar_min` in (0, 1).
    """

    offset: float = 0.008
    alpha_bar_min: float = 1e-4

    def __check_init__(self):
        if not (isinstance(self.offset, int | float) and self.offset > 0):
            raise ValueError(f"`offset` (s) must be a number > 0, got {self.offset!r}.")
        if not (isinstance(self.alpha_bar_min, int | float) and 0 < self.alpha_bar_min < 1):
            raise ValueError(
                f"`alpha_bar_min` (ᾱ at t = 1) must be in (0, 1), got {self.alpha_bar_min!r}."
            )

    def alpha_bar(self, t: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        t = _time(t)
        s = self.offset

        def f(u):
            return jnp.cos(0.5 * math.pi * (u + s) / (1 + s)) ** 2

        ratio = f(t) / math.cos(0.5 * math.pi * s / (1 + s)) ** 2
        return self.alpha_bar_min + (1 - self.alpha_bar_min) * ratio


class LinearSchedule(AbstractSchedule):
    r"""The linear schedule of Ho et al. (2020) in continuous time.

    The noise rate grows linearly, $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$,
    and $\bar\alpha(t) = \exp(-\int_0^t \beta) = \exp(-\beta_{\min} t - (\beta_{\max} -
    \beta_{\min})\, t^2/2)$. The defaults ``(0.1, 20)`` are Ho et al.'s
    ``β_i`` from 1e-4 to 0.02 over ``T = 1000`` steps, scaled by ``T``
    (Song et al. 2021b's VP SDE); ``ᾱ(1) ≈ 4.3e-5``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __check_init__(self):
        ok = all(isinstance(b, int | float) for b in (self.beta_min, self.beta_max))
        if not ok or not (0 <= self.beta_min <= self.beta_max and self.beta_max > 0):
            raise ValueError(
                "The noise rates need 0 <= beta_min <= beta_max and beta_max > 0 (the noise "
                f"must grow with t), got beta_min={self.beta_min!r}, beta_max={self.beta_max!r}."
            )

    def alpha_bar(self, t: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        t = _time(t)
        return jnp.exp(-self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t**2)


class TabulatedSchedule(AbstractSchedule):
    r"""A schedule given by its values ``ᾱ_i`` on the grid ``t_i = i / T``, ``i = 0..T``.

    Between grid points ``log ᾱ`` is interpolated linearly. The values must decrease
    strictly from ``ᾱ_0 ≤ 1`` and stay > 0. [`from_betas`][] builds the discrete
    schedule of Ho et al. (2020): ``ᾱ_i = ∏_{j ≤ i} (1 − β_j)``.
    """

    alpha_bars: Float[Array, " grid"]

    def __check_init__(self):
        values = concrete(self.alpha_bars)
        if values is None:
            return
        if values.ndim != 1 or values.shape[0] < 2:
            raise ValueError(
                f"`alpha_bars` must be a vector of at least 2 values, got shape {values.shape}."
            )
        if not np.all(np.isfinite(values)) or values.min() <= 0 or values[0] > 1:
            raise ValueError(
                f"`alpha_bars` must lie in (0, 1], got values from {values.min()!r} to "
                f"{values.max()!r}."
            )
        if np.any(np.diff(values) >= 0):
            first = int(np.argmax(np.diff(values) >= 0))
            raise ValueError(
                "`alpha_bars` must decrease strictly (the noise must grow with t), but "
                f"ᾱ[{first + 1}] = {values[first + 1]!r} >= ᾱ[{first}] = {values[first]!r}."
            )

    @classmethod
    def from_betas(cls, betas: ArrayLike | Sequence[float]) -> "TabulatedSchedule":
        """The discrete schedule of noise variances ``β_1..β_T`` (each in (0, 1)), with
        ``ᾱ_0 = 1``; e.g. ``jnp.linspace(1e-4, 0.02, 1000)`` for Ho et al. (2020)."""
        betas = np.asarray(betas, dtype=float)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("`betas` must be a vector of noise variances in (0, 1).")
        return cls(jnp.asarray(np.concatenate([[1.0], np.cumprod(1 - betas)])))

    def alpha_bar(self, t: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        t = _time(t)
        intervals = self.alpha_bars.shape[0] - 1
        grid = jnp.linspace(0.0, 1.0, intervals + 1, dtype=t.dtype)
        log_values = jnp.log(self.alpha_bars.astype(t.dtype))
        return jnp.exp(jnp.interp(t, grid, log_values))


def add_noise(
    schedule: AbstractSchedule,
    x0: Float[Array, "*state"],
    t: Float[ArrayLike, ""],
    noise: Float[Array, "*state"],
) -> Float[Array, "*state"]:
    r"""The forward process $x_t = \alpha_t x_0 + \sigma_t \varepsilon$: a draw of
    $q(x_t \mid x_0) = N(\alpha_t x_0, \sigma_t^2 I)$ for ``noise`` ε ~ N(0, I)
    (Ho et al. 2020, eq. 4)."""
    alpha, sigma = schedule.alpha_sigma(jnp.asarray(t, x0.dtype))
    return alpha * x0 + sigma * noise


# ============================================================================ parametrisations


class AbstractPrediction(eqx.Module):
    """What the network predicts from ``(x_t, t)``, and how that gives ``(x̂_0, ε̂)``.

    Every parametrisation is exact on noised data: with ``x_t = α x_0 + σ ε``,
    ``to_x0_noise(target(x0, ε, α, σ), x_t, α, σ) == (x0, ε)`` (up to round-off).
    """

    @abc.abstractmethod
    def target(self, x0: Array, noise: Array, alpha: Array, sigma: Array) -> Array:
        """The network's regression target for the clean state `x0` and the noise."""

    @abc.abstractmethod
    def to_x0_noise(
        self, output: Array, x_t: Array, alpha: Array, sigma: Array
    ) -> tuple[Array, Array]:
        """The denoised state ``x̂_0`` and noise ``ε̂`` implied by the network's output."""


class EpsilonPrediction(AbstractPrediction):
    r"""Predict the noise ε (Ho et al. 2020): $\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t$.

    Divides by ``α_t``, which is small near ``t = 1``: errors of ε̂ are amplified there
    (prefer [`VPrediction`][] for few sampling steps)."""

    def target(self, x0, noise, alpha, sigma):
        return noise

    def to_x0_noise(self, output, x_t, alpha, sigma):
        return (x_t - sigma * output) / alpha, output


class VPrediction(AbstractPrediction):
    r"""Predict the velocity $v = \alpha_t \varepsilon - \sigma_t x_0$ (Salimans & Ho 2022).

    Since $\alpha_t^2 + \sigma_t^2 = 1$: $\hat x_0 = \alpha_t x_t - \sigma_t \hat v$ and
    $\hat\varepsilon = \sigma_t x_t + \alpha_t \hat v$, bounded at every ``t``."""

    def target(self, x0, noise, alpha, sigma):
        return alpha * noise - sigma * x0

    def to_x0_noise(self, output, x_t, alpha, sigma):
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output


class X0Prediction(AbstractPrediction):
    r"""Predict the clean state: $\hat\varepsilon = (x_t - \alpha_t \hat x_0)/\sigma_t$."""

    def target(self, x0, noise, alpha, sigma):
        return x0

    def to_x0_noise(self, output, x_t, alpha, sigma):
        return output, (x_t - alpha * output) / sigma


# ============================================================================ the model


class Diffusion(eqx.Module):
    r"""A denoising diffusion model: a network, a schedule and a parametrisation.

    **Arguments:**

    - `network`: a callable module ``network(x_t, t, condition) -> output`` with
      ``output`` shaped like ``x_t`` (one state; e.g. [`hybridda.nn.UNet`][],
      [`hybridda.nn.TimeMLP`][]); ``condition`` is ``None`` for an unconditional model.
    - `schedule`: an [`AbstractSchedule`][] (default [`CosineSchedule`][]).
    - `prediction`: what the network predicts (default [`VPrediction`][]).

    **Conditioning and classifier-free guidance** (Ho & Salimans 2022): a model trained
    with condition dropout (``fit_diffusion(..., condition_dropout=0.1)``) sees the *null
    condition* (zeros shaped like the condition) for the dropped examples, so the one
    network is both conditional and unconditional. With a guidance scale ``w``,
    $\tilde o = o(x_t, \varnothing) + w\,(o(x_t, c) - o(x_t, \varnothing))$ (on the
    network output; the parametrisations are linear in it, so this is the paper's
    ε-guidance with ``w = 1 + its w``): ``w = 0`` unconditional, ``w = 1`` conditional,
    ``w > 1`` sharper. If zero is a meaningful condition, give the network a channel
    of ones in the condition so that it can tell the null condition apart.
    """

    network: Callable
    schedule: AbstractSchedule = CosineSchedule()
    prediction: AbstractPrediction = VPrediction()

    def output(
        self,
        x_t: Float[Array, "*state"],
        t: Float[ArrayLike, ""],
        condition: Float[Array, "*condition"] | None = None,
        guidance_scale: Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "*state"]:
        """The network output at one state, guided if `guidance_scale` is given (else
        the plain conditional, or unconditional without `condition`), in `x_t`'s dtype."""
        t = jnp.asarray(t, x_t.dtype)
        if condition is None:
            if guidance_scale is not None:
                raise ValueError("`guidance_scale` needs a `condition` to guide towards.")
            return self.network(x_t, t, None).astype(x_t.dtype)
        conditional = self.network(x_t, t, condition).astype(x_t.dtype)
        if guidance_scale is None:
            return conditional
        unconditional = self.network(x_t, t, jnp.zeros_like(condition)).astype(x_t.dtype)
        scale = jnp.asarray(guidance_scale, x_t.dtype)
        return unconditional + scale * (conditional - unconditional)

    def denoise(
        self,
        x_t: Float[Array, "*state"],
        t: Float[ArrayLike, ""],
        condition: Float[Array, "*condition"] | None = None,
        guidance_scale: Float[ArrayLike, ""] | None = None,
    ) -> tuple[Float[Array, "*state"], Float[Array, "*state"]]:
        """The denoised state and noise ``(x̂_0, ε̂)`` at one state ``x_t`` (``t > 0``)."""
        output = self.output(x_t, t, condition, guidance_scale)
        alpha, sigma = self.schedule.alpha_sigma(jnp.asarray(t, x_t.dtype))
        return self.prediction.to_x0_noise(output, x_t, alpha, sigma)


def denoising_loss(
    diffusion: Diffusion,
    x0: Float[Array, " batch *state"],
    key: PRNGKeyArray,
    condition: Float[Array, " batch *condition"] | None = None,
    *,
    condition_dropout: float | Float[ArrayLike, ""] = 0.0,
    weighting: Callable[[Array], Array] | None = None,
) -> Float[Array, ""]:
    r"""The denoising loss of a batch: a weighted mean squared error of the prediction.

    $$ L = \frac1B \sum_b w(\lambda_{t_b})\ \mathrm{mean}\big[(o_\theta(x_{t_b}, t_b, c_b)
       - \text{target}_b)^2\big], \qquad t_b \sim U(0, 1],\ x_{t_b} = \alpha x_{0,b} +
       \sigma \varepsilon_b, $$

    where the target is that of `diffusion.prediction` (ε: the "simple" loss of Ho et al.
    2020, eq. 14; v: Salimans & Ho 2022) and the mean runs over the state's entries.

    **Arguments:**

    - `x0`: clean states, one per row of the leading axis; `key`: the times, noises
      and dropout of this batch.
    - `condition`: one condition per example (``None``: unconditional).
    - `condition_dropout`: probability of replacing an example's condition by the null
      condition (zeros), for classifier-free guidance.
    - `weighting`: ``w(λ)``, a function of the log-SNR (default 1); e.g.
      ``lambda lam: jnp.minimum(jnp.exp(lam), 5.0)`` (min-SNR-5, Hang et al. 2023, for
      x0-prediction).
    """
    batch = x0.shape[0]
    time_key, noise_key, drop_key = jax.random.split(key, 3)
    # 1 - U[0, 1) lies in (0, 1]: never t = 0, where σ = 0 and λ = +∞.
    t = 1.0 - jax.random.uniform(time_key, (batch,), dtype=x0.dtype)
    noise = jax.random.normal(noise_key, x0.shape, dtype=x0.dtype)
    keep = jax.random.uniform(drop_key, (batch,)) >= condition_dropout

    def one(x0_b, t_b, noise_b, keep_b, condition_b):
        alpha, sigma = diffusion.schedule.alpha_sigma(t_b)
        x_t = alpha * x0_b + sigma * noise_b
        if condition_b is not None:
            condition_b = jnp.where(keep_b, condition_b, jnp.zeros_like(condition_b))
        output = diffusion.network(x_t, t_b, condition_b).astype(x0.dtype)
        error = jnp.mean((output - diffusion.prediction.target(x0_b, noise_b, alpha, sigma)) ** 2)
        if weighting is not None:
            error = weighting(diffusion.schedule.log_snr(t_b)) * error
        return error

    return jnp.mean(jax.vmap(one)(x0, t, noise, keep, condition))


# ============================================================================ samplers


class AbstractSampler(eqx.Module):
    """A reverse-process sampler over `steps` equal time steps from ``t = 1`` to 0.

    [`update`][] maps ``x_t`` to ``x_s`` (``s < t``) given the denoised pair; the loop
    over steps is [`sample`][].
    """

    steps: eqx.AbstractVar[int]

    def __check_init__(self):
        require_count("steps", self.steps, "sampler steps from t = 1 to t = 0")

    @abc.abstractmethod
    def update(
        self,
        schedule: AbstractSchedule,
        x_t: Array,
        t: Array,
        s: Array,
        x0: Array,
        noise: Array,
        key: PRNGKeyArray,
    ) -> Array:
        """One step from time `t` to `s < t`, with the denoised ``(x̂_0, ε̂)`` at ``x_t``."""


class DDPM(AbstractSampler):
    r"""Ancestral sampling (Ho et al. 2020, eqs. 6-7, Algorithm 2), any step ``t → s``.

    Draws from the forward posterior $q(x_s \mid x_t, x_0 = \hat x_0)$:

    $$ x_s = \frac{\alpha_s \beta_{t|s}}{\sigma_t^2}\,\hat x_0
       + \frac{\alpha_{t|s}\,\sigma_s^2}{\sigma_t^2}\, x_t + \tilde\sigma\, z, \quad
       \tilde\sigma^2 = \frac{\sigma_s^2\, \beta_{t|s}}{\sigma_t^2}, $$

    with $\alpha_{t|s} = \alpha_t/\alpha_s$, $\beta_{t|s} = 1 - \bar\alpha_t/\bar\alpha_s$
    and $z \sim N(0, I)$ (the posterior variance $\tilde\beta$; equal to [`DDIM`][] with
    η = 1). The last step (to ``s = 0``) returns ``x̂_0``.
    """

    steps: int = eqx.field(static=True, default=100)

    def update(self, schedule, x_t, t, s, x0, noise, key):
        alpha_bar_t, alpha_bar_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        sigma2_t, sigma2_s = 1.0 - alpha_bar_t, 1.0 - alpha_bar_s
        beta = 1.0 - alpha_bar_t / alpha_bar_s
        mean = (jnp.sqrt(alpha_bar_s) * beta / sigma2_t) * x0 + (
            jnp.sqrt(alpha_bar_t / alpha_bar_s) * sigma2_s / sigma2_t
        ) * x_t
        std = jnp.sqrt(jnp.maximum(sigma2_s * beta / sigma2_t, 0.0))
        return mean + std * jax.random.normal(key, x_t.shape, x_t.dtype)


class DDIM(AbstractSampler):
    r"""Denoising diffusion implicit model sampling (Song et al. 2021, eq. 12).

    $$ x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - \sigma_\eta^2}\;\hat\varepsilon
       + \sigma_\eta z, \qquad
       \sigma_\eta = \eta\, \frac{\sigma_s}{\sigma_t}\sqrt{1 - \bar\alpha_t/\bar\alpha_s}. $$

    ``eta = 0`` is deterministic (a first-order solver of the probability-flow ODE:
    the same initial noise always gives the same sample, whatever the key); ``eta = 1``
    is the ancestral [`DDPM`][] sampler. `eta` must lie in [0, 1].
    """

    steps: int = eqx.field(static=True, default=50)
    eta: float = 0.0

    def __check_init__(self):
        eta = concrete(self.eta)
        if eta is not None and not (eta.ndim == 0 and 0 <= eta <= 1):
            raise ValueError(f"`eta` (DDIM stochasticity) must be in [0, 1], got {self.eta!r}.")

    def update(self, schedule, x_t, t, s, x0, noise, key):
        alpha_bar_t, alpha_bar_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        sigma2_s = 1.0 - alpha_bar_s
        eta2 = jnp.asarray(self.eta, x_t.dtype) ** 2
        stochastic_var = eta2 * sigma2_s / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_s)
        x_s = (
            jnp.sqrt(alpha_bar_s) * x0
            + jnp.sqrt(jnp.maximum(sigma2_s - stochastic_var, 0.0)) * noise
        )
        return x_s + jnp.sqrt(stochastic_var) * jax.random.normal(key, x_t.shape, x_t.dtype)


def sample(
    diffusion: Diffusion,
    sampler: AbstractSampler,
    key: PRNGKeyArray,
    *,
    shape: tuple[int, ...] | None = None,
    noise: Float[Array, "*state"] | None = None,
    condition: Float[Array, "*condition"] | None = None,
    guidance_scale: Float[ArrayLike, ""] | None = None,
    dtype=None,
) -> Float[Array, "*state"]:
    r"""One sample of the model: from ``x_1`` down ``sampler.steps`` equal steps to ``t = 0``.

    The times are ``t_i = i / steps``; each step denoises ``x_{t_i}`` with the network
    (guided, see [`Diffusion`][]) and applies ``sampler.update``. One `lax.scan`: wrap in
    `jax.vmap` over keys for many samples and in `eqx.filter_jit` to compile.

    **Arguments:**

    - `key`: the initial noise (unless `noise` is given) and the sampler's noise.
    - `shape` of one state, or `noise`: the initial state ``x_1`` itself (then `key`
      drives the sampler's noise only; with a deterministic sampler it is unused).
    - `condition`, `guidance_scale`: as in [`Diffusion.denoise`][].
    - `dtype`: of the drawn initial noise (default: JAX's default float).
    """
    initial_key, steps_key = jax.random.split(key)
    if noise is None:
        if shape is None:
            raise ValueError("Pass the `shape` of a state, or the initial `noise` itself.")
        noise = jax.random.normal(initial_key, tuple(shape), dtype or jnp.result_type(float))
    times = jnp.linspace(1.0, 0.0, sampler.steps + 1, dtype=noise.dtype)

    def step(x, inputs):
        t, s, step_key = inputs
        x0, eps = diffusion.denoise(x, t, condition, guidance_scale)
        return sampler.update(diffusion.schedule, x, t, s, x0, eps, step_key), None

    keys = jax.random.split(steps_key, sampler.steps)
    x, _ = jax.lax.scan(step, noise, (times[:-1], times[1:], keys))
    return x


# ============================================================================ EMA


def ema_update(average: PyTree, params: PyTree, decay: float | Array) -> PyTree:
    r"""One step of an exponential moving average of parameters:
    $\bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta$, leaf by leaf.

    Started from $\bar\theta_0 = \theta_0$, after ``k`` steps
    $\bar\theta_k = d^k \theta_0 + (1 - d) \sum_{j=1}^k d^{k-j} \theta_j$. The EMA weights
    sample better than the raw ones (Ho et al. 2020, appendix B: d = 0.9999). Leaves
    that are ``None`` (e.g. the static half of `eqx.partition`) are skipped.
    """
    return jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)


# ============================================================================ training


class DiffusionFit(NamedTuple):
    """What [`fit_diffusion`][] returns: the model after the last step (`diffusion`),
    the same model with the EMA weights (`ema`, usually the one to sample from), and the
    loss of every step (`losses`, shape ``(steps,)``)."""

    diffusion: Diffusion
    ema: Diffusion
    losses: np.ndarray


class _FitState(eqx.Module):
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree
    key: PRNGKeyArray
    losses: np.ndarray
    step: int


class _Objective(eqx.Module):
    condition_dropout: float = eqx.field(static=True)
    weighting: Callable | None = eqx.field(static=True)

    def __call__(self, diffusion, x0, key, condition):
        return denoising_loss(
            diffusion,
            x0,
            key,
            condition,
            condition_dropout=self.condition_dropout,
            weighting=self.weighting,
        )


@eqx.filter_jit
def _run_steps(
    params,
    static,
    opt_state,
    ema_params,
    key,
    data,
    condition,
    optimiser,
    steps,
    batch_size,
    objective,
    ema_decay,
):
    """`steps` optimiser + EMA steps in one `lax.scan`; the new state and each step's loss."""
    examples = data.shape[0]

    def step(carry, _):
        params, opt_state, ema_params, key = carry
        key, batch_key, loss_key = jax.random.split(key, 3)
        if batch_size >= examples:
            batch, batch_condition = data, condition
        else:
            rows = jax.random.choice(batch_key, examples, (batch_size,), replace=False)
            batch = data[rows]
            batch_condition = None if condition is None else condition[rows]
        loss, grads = jax.value_and_grad(
            lambda p: objective(eqx.combine(p, static), batch, loss_key, batch_condition)
        )(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        ema_params = ema_update(ema_params, params, ema_decay)
        return (params, opt_state, ema_params, key), loss

    (params, opt_state, ema_params, key), losses = jax.lax.scan(
        step, (params, opt_state, ema_params, key), None, length=steps
    )
    return params, opt_state, ema_params, key, losses


def _check_examples(name: str, array, examples: int | None = None) -> Array:
    array = jnp.asarray(array)
    if array.ndim < 2 or array.shape[0] < 1:
        raise ValueError(
            f"`{name}` must hold one example per row of its leading axis (shape (M, ...) "
            f"with M >= 1 and a state of at least one axis), got shape {array.shape}."
        )
    if examples is not None and array.shape[0] != examples:
        raise ValueError(
            f"`{name}` needs one row per example of `data` ({examples}), got {array.shape[0]}."
        )
    if not np.all(np.isfinite(np.asarray(array))):
        raise ValueError(f"`{name}` holds non-finite values; remove or fill them.")
    return array


def fit_diffusion(
    diffusion: Diffusion,
    data: Float[Array | np.ndarray, " M *state"],
    condition: Float[Array | np.ndarray, "..."] | None = None,
    *,
    key: PRNGKeyArray,
    steps: int,
    batch_size: int = 64,
    learning_rate: float | optax.Schedule = 1e-3,
    optimiser: Callable[..., optax.GradientTransformation] = optax.adam,
    condition_dropout: float = 0.0,
    weighting: Callable[[Array], Array] | None = None,
    ema_decay: float = 0.999,
    steps_per_call: int = 250,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> DiffusionFit:
    """Train the network of `diffusion` on `data` by minimising the [`denoising_loss`][].

    Only the floating-point arrays of ``diffusion.network`` are trained (the schedule
    stays fixed). Each compiled call runs `steps_per_call` steps (or `checkpoint_every`,
    with checkpoints) in one `lax.scan`: a minibatch of `batch_size` rows drawn without
    replacement, the loss, an Optax update, and the EMA update of the weights.

    **Arguments:**

    - `diffusion`: the initial [`Diffusion`][]; `data`: training states ``(M, ...)``
      (finite); `condition`: one condition per example (``None``: unconditional).
    - `key`: the run's only randomness (minibatches, times, noises, dropout).
    - `steps`, `batch_size`, `learning_rate` (a number or an Optax schedule),
      `optimiser` (a factory ``learning_rate -> GradientTransformation``).
    - `condition_dropout`, `weighting`: as in [`denoising_loss`][].
    - `ema_decay`: decay ``d`` of the EMA weights ([`ema_update`][]), in [0, 1).
    - `checkpoint_dir`: save the training state (parameters, Optax state, EMA weights,
      key, losses) there every `checkpoint_every` steps and at the end, with
      [`hybridda.checkpoint.Checkpointer`][]; `resume=True` continues the run saved there
      (same settings, else an error) and ends with bitwise the same parameters as an
      uninterrupted run on the same machine. `config`: extra settings to store and check.
    - `progress`: a tqdm progress bar.
    """
    require_count("steps", steps, "optimiser steps in total")
    require_count("batch_size", batch_size, "examples per step")
    require_count("steps_per_call", steps_per_call, "steps per compiled call")
    if not 0.0 <= condition_dropout <= 1.0:
        raise ValueError(
            f"`condition_dropout` must be a probability in [0, 1], got {condition_dropout!r}."
        )
    if condition_dropout > 0 and condition is None:
        raise ValueError("`condition_dropout` > 0 needs a `condition` to drop.")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay!r}.")
    if checkpoint_every is not None:
        require_count("checkpoint_every", checkpoint_every, "steps between checkpoints")
        if checkpoint_dir is None:
            raise ValueError("`checkpoint_every` needs a `checkpoint_dir` to save to.")
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs the `checkpoint_dir` of the run to continue.")
    if not isinstance(key, jax.Array):
        raise TypeError(f"`key` must be a JAX PRNG key such as jax.random.key(0), got {key!r}.")
    data = _check_examples("data", data)
    if condition is not None:
        condition = _check_examples("condition", condition, data.shape[0])
    batch_size = min(int(batch_size), data.shape[0])
    transform = optimiser_transform(optimiser, learning_rate)
    objective = _Objective(float(condition_dropout), weighting)
    params, static = eqx.partition(diffusion, _network_arrays(diffusion))
    # Strongly typed copies, so a fresh and a restored state trace identically.
    params = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), params)
    if not jax.tree.leaves(params):
        raise ValueError("`diffusion.network` has no floating-point array: nothing to train.")
    chunk = checkpoint_every or steps_per_call

    def init_state() -> _FitState:
        return _FitState(params, transform.init(params), params, key, np.full(steps, np.nan), 0)

    checkpointer = None
    if checkpoint_dir is None:
        state = init_state()
    else:
        run_config = {
            "format": "hybridda-diffusion/1",
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate
            if isinstance(learning_rate, int | float)
            else "schedule",
            "optimiser": getattr(optimiser, "__name__", repr(optimiser)),
            "condition_dropout": condition_dropout,
            "weighting": None if weighting is None else getattr(weighting, "__name__", "custom"),
            "ema_decay": ema_decay,
            "chunk": chunk,
            "schedule": repr(diffusion.schedule)[:200],
            "prediction": type(diffusion.prediction).__name__,
            "data_shape": list(data.shape),
            "data_sha256": digest(np.asarray(data)),
            "condition_sha256": None if condition is None else digest(np.asarray(condition)),
            "user": json.loads(json.dumps(dict(config))) if config is not None else None,
        }
        state, _, checkpointer = resume_or_init(
            checkpoint_dir, init_state, resume=resume, config=run_config, save_every=chunk
        )

    def advance(state, count):
        params, opt_state, ema_params, run_key, losses = _run_steps(
            state.params, static, state.opt_state, state.ema_params, state.key, data,
            condition, transform, count, batch_size, objective, float(ema_decay),
        )  # fmt: skip
        new = _FitState(params, opt_state, ema_params, run_key, state.losses, state.step)
        return new, losses

    state = train_in_chunks(
        state, advance, steps=steps, chunk=chunk, checkpointer=checkpointer,
        progress=progress, what="Diffusion",
    )  # fmt: skip
    return DiffusionFit(
        eqx.combine(state.params, static), eqx.combine(state.ema_params, static), state.losses
    )


def _network_arrays(diffusion: Diffusion) -> PyTree[bool]:
    """Filter spec: the floating-point arrays of the network, nothing else."""
    spec = jax.tree.map(lambda _: False, diffusion)
    return eqx.tree_at(
        lambda d: d.network, spec, jax.tree.map(eqx.is_inexact_array, diffusion.network)
    )
