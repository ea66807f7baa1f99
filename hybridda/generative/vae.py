"""Variational autoencoders: Gaussian latent, configurable likelihoods, ELBO training.

A [`VAE`][] is an encoder ``x ↦ (μ(x), log σ²(x))`` of the Gaussian approximate
posterior ``q(z | x) = N(μ, diag σ²)``, a decoder ``z ↦ θ(z)`` giving the parameters of
the likelihood ``p(x | z)``, and the likelihood itself (an [`AbstractLikelihood`][]):

- [`Gaussian`][]: ``N(θ(z), diag s²)`` with a fixed or learnt std ``s`` (one value, or
  one per variable: with a linear encoder and decoder this is probabilistic PCA);
- [`HeteroscedasticGaussian`][]: the decoder also gives the std, ``θ = [mean, log s]``;
- [`CensoredGaussian`][]: for variables bounded to ``[lower, upper]`` (sea-ice
  concentration, ...): a Gaussian whose mass beyond a bound sits on the bound
  (Finn et al. 2024), so data exactly on a bound has a finite likelihood.

The prior is ``p(z) = N(0, I)``. [`VAE.elbo`][] is the evidence lower bound of one
example, estimated with reparameterised samples ``z = μ + σ ξ`` drawn from an explicit
key; [`fit_vae`][] maximises its mean over a data set with Optax (minibatches, one
`lax.scan` of jitted steps per chunk, optional Orbax checkpoints and exact resume);
[`fine_tune`][] is the same loop as a pure function, for use inside jitted code (the
online update of [`hybridda.generative.LatentFilter`][]).

!!! cite "References"
    Kingma and Welling (2014), Auto-encoding variational Bayes, *ICLR*.
    Tipping and Bishop (1999), Probabilistic principal component analysis, *J. R.
    Stat. Soc. B* 61, 611-622.
    Lucas, Tucker, Grosse and Norouzi (2019), Don't blame the ELBO! A linear VAE
    perspective on posterior collapse, *NeurIPS*.
    Finn, Durand, Farchi, Bocquet, Rampal and Carrassi (2024), Towards diffusion models
    for large-scale sea-ice modelling, *ICML workshop* (censored Gaussian likelihood).
"""

import abc
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._checks import as_float_array, concrete, require_count, require_positive
from .._training import digest, optimiser_transform, train_in_chunks
from ..checkpoint import resume_or_init
from ..nn import MLP

_LOG_2PI = math.log(2 * math.pi)


def _check_size(name: str, std: Array, data_size: int) -> None:
    if std.ndim > 1 or (std.ndim == 1 and std.shape[0] != data_size):
        raise ValueError(
            f"`{name}` must be a scalar or have shape ({data_size},) (one value per data "
            f"variable), got shape {std.shape}."
        )


def _gaussian_log_density(x, mean, log_std):
    white = (x - mean) * jnp.exp(-log_std)
    return -0.5 * white**2 - log_std - 0.5 * _LOG_2PI


# ----------------------------------------------------------------------- likelihoods


class AbstractLikelihood(eqx.Module):
    """The decoder's distribution ``p(x | z)``, parametrised by the decoder output ``θ(z)``."""

    @abc.abstractmethod
    def head_size(self, data_size: int) -> int:
        """Length of the decoder output ``θ`` for data vectors of length `data_size`."""

    @abc.abstractmethod
    def log_prob(self, x: Float[Array, " n"], head: Float[Array, " h"]) -> Float[Array, ""]:
        """``log p(x | θ)``, summed over the variables."""

    @abc.abstractmethod
    def point(self, head: Float[Array, " h"]) -> Float[Array, " n"]:
        """The point reconstruction in data space (what the latent filters decode to)."""

    @abc.abstractmethod
    def sample(self, head: Float[Array, " h"], key: PRNGKeyArray) -> Float[Array, " n"]:
        """One draw from ``p(x | θ)``."""

    @abc.abstractmethod
    def head_statistics(
        self, mean: Float[Array, " n"], std: Float[Array, " n"]
    ) -> tuple[Float[Array, " h"], Float[Array, " h"]]:
        """Offset and scale of ``θ`` for data of this mean and std (to initialise decoders)."""

    def check_data_size(self, data_size: int) -> None:
        """Raise if the likelihood's parameters do not fit data of length `data_size`."""


class Gaussian(AbstractLikelihood):
    """``p(x | z) = N(θ(z), diag s²)``: the decoder gives the mean; ``s`` is a parameter.

    **Arguments:**

    - `std`: ``s > 0``, a scalar (isotropic) or one value per variable.
    - `learn_std`: train ``log s`` with the networks (default: keep it fixed).
    """

    log_std: Float[Array, "*n"]
    learn_std: bool = eqx.field(static=True)

    def __init__(self, std=1.0, learn_std: bool = False):
        std = as_float_array(std)
        require_positive("std", std, "The likelihood's standard deviation must be positive.")
        self.log_std = jnp.log(std)
        self.learn_std = bool(learn_std)

    @property
    def std(self) -> Float[Array, "*n"]:
        return jnp.exp(self.log_std)

    def _log_std(self):
        return self.log_std if self.learn_std else jax.lax.stop_gradient(self.log_std)

    def check_data_size(self, data_size):
        _check_size("std", self.log_std, data_size)

    def head_size(self, data_size):
        return data_size

    def log_prob(self, x, head):
        log_std = jnp.broadcast_to(self._log_std(), x.shape)
        return jnp.sum(_gaussian_log_density(x, head, log_std))

    def point(self, head):
        return head

    def sample(self, head, key):
        return head + jnp.exp(self._log_std()) * jax.random.normal(key, head.shape, head.dtype)

    def head_statistics(self, mean, std):
        return mean, std


class HeteroscedasticGaussian(AbstractLikelihood):
    """``p(x | z) = N(m(z), diag s(z)²)`` with ``θ = [m, log(s - min_std)]`` from the decoder.

    **Arguments:**

    - `min_std`: a floor added to the decoded std (keeps the likelihood bounded when the
      data lie exactly on a manifold).
    """

    min_std: float = eqx.field(static=True, default=1e-6)

    def __check_init__(self):
        if not (isinstance(self.min_std, int | float) and self.min_std >= 0):
            raise ValueError(f"`min_std` must be a number >= 0, got {self.min_std!r}.")

    def head_size(self, data_size):
        return 2 * data_size

    def _split(self, head):
        mean, raw = jnp.split(head, 2)
        std = jnp.exp(raw) + self.min_std
        return mean, std

    def log_prob(self, x, head):
        mean, std = self._split(head)
        return jnp.sum(_gaussian_log_density(x, mean, jnp.log(std)))

    def point(self, head):
        return self._split(head)[0]

    def sample(self, head, key):
        mean, std = self._split(head)
        return mean + std * jax.random.normal(key, mean.shape, mean.dtype)

    def head_statistics(self, mean, std):
        return jnp.concatenate([mean, jnp.log(std)]), jnp.concatenate([std, jnp.ones_like(std)])


class CensoredGaussian(AbstractLikelihood):
    r"""A Gaussian ``N(θ(z), s²)`` censored to ``[lower, upper]``, for bounded variables.

    Mass the Gaussian puts below `lower` sits on `lower` (likewise above `upper`), so
    ``log p(x) = log Φ((lower - θ) / s)`` for ``x ≤ lower``, ``log Φ((θ - upper) / s)``
    for ``x ≥ upper`` and the Gaussian log-density in between. The point reconstruction
    is ``clip(θ, lower, upper)``, the median of the censored distribution, which always
    respects the bounds.

    **Arguments:**

    - `lower`, `upper`: bounds, scalars or one per variable; ``-inf`` / ``inf`` for none.
    - `std`, `learn_std`: as for [`Gaussian`][].

    !!! cite "Reference"
        Finn et al. (2024), Towards diffusion models for large-scale sea-ice modelling
        (censored Gaussian in data space).
    """

    lower: Float[Array, "*n"]
    upper: Float[Array, "*n"]
    log_std: Float[Array, "*n"]
    learn_std: bool = eqx.field(static=True)

    def __init__(self, lower=0.0, upper=1.0, std=1.0, learn_std: bool = False):
        lower, upper, std = as_float_array(lower), as_float_array(upper), as_float_array(std)
        require_positive("std", std, "The likelihood's standard deviation must be positive.")
        low, high = concrete(lower), concrete(upper)
        if low is not None and high is not None:
            if np.any(np.isnan(low)) or np.any(np.isnan(high)) or not np.all(low < high):
                raise ValueError(
                    f"`lower` must be < `upper` everywhere (±inf for no bound), got "
                    f"lower={low}, upper={high}."
                )
        self.lower, self.upper = lower, upper
        self.log_std = jnp.log(std)
        self.learn_std = bool(learn_std)

    def check_data_size(self, data_size):
        for name, value in (("lower", self.lower), ("upper", self.upper), ("std", self.log_std)):
            _check_size(name, value, data_size)

    def head_size(self, data_size):
        return data_size

    def _log_std(self):
        return self.log_std if self.learn_std else jax.lax.stop_gradient(self.log_std)

    def log_prob(self, x, head):
        # The bounds are configuration, not parameters: no gradient flows into them.
        lower = jnp.broadcast_to(jax.lax.stop_gradient(self.lower), x.shape)
        upper = jnp.broadcast_to(jax.lax.stop_gradient(self.upper), x.shape)
        log_std = jnp.broadcast_to(self._log_std(), x.shape)
        std = jnp.exp(log_std)
        has_lower, has_upper = jnp.isfinite(lower), jnp.isfinite(upper)
        # Finite stand-ins where a bound is absent: where() hides a branch's value but
        # not the NaN its gradient would have at ±inf.
        below = jnp.where(has_lower, (jnp.where(has_lower, lower, 0.0) - head) / std, 0.0)
        above = jnp.where(has_upper, (head - jnp.where(has_upper, upper, 0.0)) / std, 0.0)
        at_lower = has_lower & (x <= lower)
        at_upper = has_upper & (x >= upper)
        inside = ~(at_lower | at_upper)
        density = _gaussian_log_density(jnp.where(inside, x, head), head, log_std)
        return jnp.sum(
            jnp.where(
                at_lower, jss.log_ndtr(below), jnp.where(at_upper, jss.log_ndtr(above), density)
            )
        )

    def point(self, head):
        return jnp.clip(head, self.lower, self.upper)

    def sample(self, head, key):
        draw = head + jnp.exp(self._log_std()) * jax.random.normal(key, head.shape, head.dtype)
        return jnp.clip(draw, self.lower, self.upper)

    def head_statistics(self, mean, std):
        return mean, std


# ----------------------------------------------------------------------- networks


class MLPEncoder(eqx.Module):
    """``x ↦ (μ, log σ²)``: one [`hybridda.nn.MLP`][] with ``2 × latent_size`` outputs."""

    network: MLP
    latent_size: int = eqx.field(static=True)

    def __call__(self, x: Float[Array, " n"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        out = self.network(x)
        return out[: self.latent_size], out[self.latent_size :]


class MLPDecoder(eqx.Module):
    """``z ↦ offset + MLP(z)``: the offset (the data mean) is fixed, not trained."""

    network: MLP
    offset: Float[Array, " h"]

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " h"]:
        return jax.lax.stop_gradient(self.offset) + self.network(z)


# ----------------------------------------------------------------------- the VAE


class VAE(eqx.Module):
    """A variational autoencoder with Gaussian latent ``q(z | x) = N(μ(x), diag σ²(x))``.

    **Arguments:**

    - `encoder`: a module ``x ↦ (μ, log σ²)``, each of shape ``(latent_size,)``.
    - `decoder`: a module ``z ↦ θ``, of shape ``(likelihood.head_size(data_size),)``
      (for the Gaussian likelihoods' mean part: the data shape).
    - `likelihood`: an [`AbstractLikelihood`][].
    - `data_size`, `latent_size`: lengths ``n`` of ``x`` and ``d`` of ``z`` (≥ 1).

    Shapes are checked at construction (with `jax.eval_shape`, nothing is computed).
    Build MLP-based VAEs with [`mlp_vae`][].
    """

    encoder: Callable
    decoder: Callable
    likelihood: AbstractLikelihood
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)

    def __check_init__(self):
        require_count("data_size", self.data_size, "length of a data vector")
        require_count("latent_size", self.latent_size, "the latent dimension")
        self.likelihood.check_data_size(self.data_size)
        dtype = jnp.result_type(float)
        x = jax.ShapeDtypeStruct((self.data_size,), dtype)
        z = jax.ShapeDtypeStruct((self.latent_size,), dtype)
        encoded = eqx.filter_eval_shape(self.encoder, x)
        if (
            not isinstance(encoded, tuple)
            or len(encoded) != 2
            or any(getattr(part, "shape", None) != (self.latent_size,) for part in encoded)
        ):
            shapes = jax.tree.map(lambda a: a.shape, encoded)
            raise ValueError(
                f"The `encoder` must map a data vector of shape ({self.data_size},) to a "
                f"pair (mean, log_variance) of shape ({self.latent_size},) each "
                f"(latent_size={self.latent_size}), got {shapes}."
            )
        head = eqx.filter_eval_shape(self.decoder, z)
        expected = (self.likelihood.head_size(self.data_size),)
        if getattr(head, "shape", None) != expected:
            raise ValueError(
                f"The `decoder` output has shape {getattr(head, 'shape', head)} but "
                f"{type(self.likelihood).__name__} needs {expected} for data of shape "
                f"({self.data_size},) (data_size={self.data_size}): the decoder output "
                "must match the data shape."
            )

    def encode(self, x: Float[Array, " n"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """The mean and log-variance of ``q(z | x)``."""
        return self.encoder(x)

    def encode_mean(self, x: Float[Array, " n"]) -> Float[Array, " d"]:
        """The mean ``μ(x)`` of ``q(z | x)``."""
        return self.encoder(x)[0]

    def decode(self, z: Float[Array, " d"]) -> Float[Array, " h"]:
        """The likelihood parameters ``θ(z)``."""
        return self.decoder(z)

    def decode_point(self, z: Float[Array, " d"]) -> Float[Array, " n"]:
        """The point reconstruction ``likelihood.point(θ(z))`` in data space."""
        return self.likelihood.point(self.decoder(z))

    def sample_posterior(self, x: Float[Array, " n"], key: PRNGKeyArray) -> Float[Array, " d"]:
        """A reparameterised draw ``z = μ(x) + σ(x) ξ``, ``ξ ~ N(0, I)``."""
        mean, log_var = self.encoder(x)
        return mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)

    def sample(self, key: PRNGKeyArray) -> Float[Array, " n"]:
        """A draw from the generative model: ``z ~ N(0, I)``, ``x ~ p(x | z)``."""
        latent_key, data_key = jax.random.split(key)
        z = jax.random.normal(latent_key, (self.latent_size,))
        return self.likelihood.sample(self.decoder(z), data_key)

    def elbo(
        self,
        x: Float[Array, " n"],
        key: PRNGKeyArray,
        *,
        samples: int = 1,
        beta: float | Float[Array, ""] = 1.0,
        analytic_kl: bool = True,
    ) -> Float[Array, ""]:
        """The evidence lower bound ``E_q[log p(x | z)] - β KL(q(z | x) ‖ N(0, I))``.

        The expectation is estimated with `samples` reparameterised draws from `key`
        (fixed key: a deterministic, differentiable function of the parameters). With
        ``analytic_kl=False`` the KL term is estimated from the same draws,
        ``log q(z | x) - log p(z)``: when ``q`` is the exact posterior the estimate then
        equals ``log p(x)`` for every draw.
        """
        mean, log_var = self.encoder(x)
        std = jnp.exp(0.5 * log_var)
        noise = jax.random.normal(key, (samples, self.latent_size), mean.dtype)
        z = mean[None, :] + std[None, :] * noise
        log_likelihood = jax.vmap(lambda zi: self.likelihood.log_prob(x, self.decoder(zi)))(z)
        if analytic_kl:
            kl = 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - 1.0 - log_var)
            return jnp.mean(log_likelihood) - beta * kl
        log_q = jnp.sum(-0.5 * noise**2 - 0.5 * log_var[None, :] - 0.5 * _LOG_2PI, axis=-1)
        log_prior = jnp.sum(-0.5 * z**2 - 0.5 * _LOG_2PI, axis=-1)
        return jnp.mean(log_likelihood - beta * (log_q - log_prior))


def negative_elbo(
    vae: VAE,
    data: Float[Array, "M n"],
    key: PRNGKeyArray,
    *,
    samples: int = 1,
    beta: float | Float[Array, ""] = 1.0,
    analytic_kl: bool = True,
) -> Float[Array, ""]:
    """The mean negative ELBO over the rows of `data` (one key per row, split from `key`)."""
    keys = jax.random.split(key, data.shape[0])
    elbos = jax.vmap(
        lambda x, k: vae.elbo(x, k, samples=samples, beta=beta, analytic_kl=analytic_kl)
    )(data, keys)
    return -jnp.mean(elbos)


def check_data(data, name: str = "data", size: int | None = None) -> None:
    """Concrete checks of a training set: shape ``(M, n)`` and finite values."""
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] < 1:
        raise ValueError(f"`{name}` must have shape (examples, variables), got {shape}.")
    if size is not None and shape[1] != size:
        raise ValueError(
            f"`{name}` has {shape[1]} variables per example but the VAE's data_size is {size}."
        )
    values = concrete(data)
    if values is not None and not np.all(np.isfinite(values)):
        bad = int(np.sum(~np.isfinite(values)))
        raise ValueError(
            f"`{name}` contains {bad} non-finite value(s) (NaN or inf); remove or impute "
            "them before training."
        )


def mlp_vae(
    data_size: int,
    latent_size: int,
    *,
    key: PRNGKeyArray,
    likelihood: AbstractLikelihood | None = None,
    width: int = 64,
    depth: int = 2,
    activation: Callable = jax.nn.tanh,
    data: Float[Array | np.ndarray, "M n"] | None = None,
    dtype=None,
) -> VAE:
    """A [`VAE`][] with [`hybridda.nn.MLP`][] encoder and decoder.

    With `data`, the encoder standardises its input with the data's mean and std and
    the decoder starts at the data mean with outputs scaled by the std (see
    [`AbstractLikelihood.head_statistics`][]); these statistics are fixed, not trained.

    **Arguments:**

    - `data_size`, `latent_size`: ``n`` and ``d`` ≥ 1.
    - `key`: PRNG key for the initial weights.
    - `likelihood`: default ``Gaussian(std=0.1 × data std (or 0.1), learn_std=True)``.
    - `width`, `depth`, `activation`: hidden layers of both networks.
    - `data`: a training set ``(M, n)`` for the statistics (optional).
    - `dtype`: parameter dtype (default JAX's default float).
    """
    require_count("data_size", data_size, "length of a data vector")
    require_count("latent_size", latent_size, "the latent dimension")
    dtype = jnp.result_type(float) if dtype is None else dtype
    if data is None:
        mean, std = jnp.zeros(data_size, dtype), jnp.ones(data_size, dtype)
    else:
        check_data(data, "data", data_size)
        data = jnp.asarray(data, dtype)
        mean = data.mean(axis=0)
        spread = data.std(axis=0)
        std = jnp.where(spread > 0, spread, 1.0)
    if likelihood is None:
        likelihood = Gaussian(0.1 * float(jnp.mean(std)), learn_std=True)
    likelihood.check_data_size(data_size)
    offset, scale = likelihood.head_statistics(mean, std)
    encoder_key, decoder_key = jax.random.split(key)
    encoder = MLPEncoder(
        MLP(
            data_size,
            2 * latent_size,
            width,
            depth,
            activation,
            key=encoder_key,
            dtype=dtype,
            input_mean=mean,
            input_std=std,
        ),
        latent_size,
    )
    decoder = MLPDecoder(
        MLP(
            latent_size,
            offset.shape[0],
            width,
            depth,
            activation,
            key=decoder_key,
            dtype=dtype,
            output_scale=scale,
        ),
        jnp.asarray(offset, dtype),
    )
    return VAE(encoder, decoder, likelihood, data_size, latent_size)


# ----------------------------------------------------------------------- training


def _partition(vae: VAE):
    params, static = eqx.partition(vae, eqx.is_inexact_array)
    # Strongly typed copies, so a fresh and a restored state trace identically.
    params = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), params)
    return params, static


def _run_steps(params, static, opt_state, key, data, optimiser, steps, batch_size, objective):
    """`steps` optimiser steps in one `lax.scan`; returns the new state and each step's loss."""
    examples = data.shape[0]

    def step(carry, _):
        params, opt_state, key = carry
        key, batch_key, noise_key = jax.random.split(key, 3)
        if batch_size is None or batch_size >= examples:
            batch = data
        else:
            batch = data[jax.random.choice(batch_key, examples, (batch_size,), replace=False)]
        loss, grads = jax.value_and_grad(
            lambda p: objective(eqx.combine(p, static), batch, noise_key)
        )(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return (eqx.apply_updates(params, updates), opt_state, key), loss

    (params, opt_state, key), losses = jax.lax.scan(
        step, (params, opt_state, key), None, length=steps
    )
    return params, opt_state, key, losses


_run_steps_jit = eqx.filter_jit(_run_steps)


class _Objective(eqx.Module):
    samples: int = eqx.field(static=True)
    beta: float = eqx.field(static=True)

    def __call__(self, vae, batch, key):
        return negative_elbo(vae, batch, key, samples=self.samples, beta=self.beta)


def fine_tune(
    vae: VAE,
    data: Float[Array, "M n"],
    key: PRNGKeyArray,
    *,
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int | None = None,
    samples: int = 1,
    beta: float = 1.0,
    trainable: Callable[[VAE], PyTree] | None = None,
) -> VAE:
    """`steps` Adam steps on the negative ELBO of `data`, from `vae`'s parameters.

    A pure function (one `lax.scan`, fresh optimiser state): it can run inside `jit`,
    `vmap` or a DA cycle. Values are not checked here (see [`fit_vae`][]).
    `trainable` maps the VAE to an Equinox filter spec of the leaves to train (e.g.
    ``lambda v: eqx.tree_at(lambda v: v.decoder, jax.tree.map(lambda _: False, v),
    True)`` for the decoder only); default every floating-point array.
    """
    require_count("steps", steps, "optimiser steps")
    params, static = _split_trainable(vae, trainable)
    optimiser = optax.adam(learning_rate)
    objective = _Objective(samples, float(beta))
    params, _, _, _ = _run_steps(
        params, static, optimiser.init(params), key, data, optimiser, steps, batch_size, objective
    )
    return eqx.combine(params, static)


def _split_trainable(vae: VAE, trainable):
    if trainable is None:
        return eqx.partition(vae, eqx.is_inexact_array)
    params, static = eqx.partition(vae, trainable(vae))
    params, not_float = eqx.partition(params, eqx.is_inexact_array)
    return params, eqx.combine(static, not_float)


class FitResult(NamedTuple):
    """What [`fit_vae`][] returns: the trained `vae` and the loss (negative ELBO) of
    every step, `losses` (shape ``(steps,)``)."""

    vae: VAE
    losses: np.ndarray


class _FitState(eqx.Module):
    params: PyTree
    opt_state: PyTree
    key: PRNGKeyArray
    losses: np.ndarray
    step: int


def fit_vae(
    vae: VAE,
    data: Float[Array | np.ndarray, "M n"],
    *,
    key: PRNGKeyArray,
    steps: int,
    batch_size: int | None = 64,
    learning_rate: float | optax.Schedule = 1e-3,
    optimiser: Callable[..., optax.GradientTransformation] = optax.adam,
    samples: int = 1,
    beta: float = 1.0,
    steps_per_call: int = 250,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> FitResult:
    """Maximise the mean ELBO of `data` over the VAE's floating-point parameters.

    Each call of the compiled step function runs `steps_per_call` steps (or
    `checkpoint_every`, with checkpoints) in one `lax.scan`: minibatches of `batch_size`
    rows drawn without replacement (``None``: full batch), `samples` reparameterised
    draws per example, an Optax update. Fixed statistics (an MLP's standardisation, a
    decoder offset, a fixed likelihood std) get zero gradients and stay put.

    **Arguments:**

    - `vae`: the initial [`VAE`][]; `data`: the training set ``(M, n)``, finite.
    - `key`: the run's only randomness (minibatches and reparameterisation noise).
    - `steps`, `batch_size`, `learning_rate` (a number or an Optax schedule),
      `optimiser` (a factory ``learning_rate -> GradientTransformation``), `samples`,
      `beta` (weight of the KL term).
    - `checkpoint_dir`: save the training state there every `checkpoint_every` steps
      (and at the end) with [`hybridda.checkpoint.Checkpointer`][]; `resume=True`
      continues the run saved there (same settings, else an error), ending with the
      same parameters as an uninterrupted run. `config`: extra settings to store and
      check.
    - `progress`: a tqdm progress bar.
    """
    check_data(data, "data", vae.data_size)
    require_count("steps", steps, "optimiser steps in total")
    require_count("samples", samples, "reparameterised draws per example")
    require_count("steps_per_call", steps_per_call, "steps per compiled call")
    if batch_size is not None:
        require_count("batch_size", batch_size, "examples per step; None for all")
        batch_size = min(int(batch_size), data.shape[0])
    if checkpoint_every is not None:
        require_count("checkpoint_every", checkpoint_every, "steps between checkpoints")
        if checkpoint_dir is None:
            raise ValueError("`checkpoint_every` needs a `checkpoint_dir` to save to.")
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs the `checkpoint_dir` of the run to continue.")
    if not isinstance(key, jax.Array):
        raise TypeError(f"`key` must be a JAX PRNG key such as jax.random.key(0), got {key!r}.")
    data = jnp.asarray(data)
    transform = optimiser_transform(optimiser, learning_rate)
    objective = _Objective(int(samples), float(beta))
    params, static = _partition(vae)
    chunk = checkpoint_every or steps_per_call

    def init_state() -> _FitState:
        return _FitState(params, transform.init(params), key, np.full(steps, np.nan), 0)

    checkpointer = None
    if checkpoint_dir is None:
        state = init_state()
    else:
        run_config = {
            "format": "hybridda-vae/1",
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate
            if isinstance(learning_rate, int | float)
            else "schedule",
            "optimiser": getattr(optimiser, "__name__", repr(optimiser)),
            "samples": samples,
            "beta": beta,
            "chunk": chunk,
            "data_shape": list(data.shape),
            "data_sha256": digest(np.asarray(data)),
            "user": dict(config) if config is not None else None,
        }
        state, _, checkpointer = resume_or_init(
            checkpoint_dir, init_state, resume=resume, config=run_config, save_every=chunk
        )

    def advance(state, count):
        params, opt_state, run_key, losses = _run_steps_jit(
            state.params, static, state.opt_state, state.key, data, transform, count,
            batch_size, objective,
        )  # fmt: skip
        return _FitState(params, opt_state, run_key, state.losses, state.step), losses

    state = train_in_chunks(
        state, advance, steps=steps, chunk=chunk, checkpointer=checkpointer,
        progress=progress, what="VAE",
    )  # fmt: skip
    losses = state.losses
    return FitResult(eqx.combine(state.params, static), losses)
