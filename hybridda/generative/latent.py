"""Ensemble Kalman filters in the latent space of a VAE, or of a pair of VAEs.

Pasmans et al. (2025) run the ETKF on latent vectors instead of states. Here every
latent method wraps an existing filter, unchanged:

- [`DecodedObservation`][] sees a latent vector through the decoder,
  ``z ↦ H(decoder(z))``, with the observation's own error model;
- [`LatentFilter`][] (one VAE, for the state): encode the forecast ensemble to latent
  means, run the wrapped filter's analysis against `DecodedObservation`, decode the
  analysis members. The decoded members lie on the decoder's manifold by construction.
  With an optional [`FineTune`][] the VAE is first fine-tuned on the forecast ensemble
  (transfer learning from the offline VAE, every cycle), for manifolds that move;
- [`VAEPairFilter`][] (the pair): a second VAE, for the innovations. The Kalman
  update is a linear regression of the state on the innovation; the pair regresses
  the latent state on the *encoded* innovation ``g(d)`` instead: each member predicts
  ``mean_k g(H(x_i) + ε_k - m)`` (``ε_k`` drawn from the *true* observation-error
  distribution, which may be skewed or biased; ``m`` the forecast mean in observation
  space), the observed value is ``g(y - m)``, and the error covariance is the spread
  that ``ε`` adds in the encoded space. A bias of the errors is thereby removed, and
  where ``g`` maps skewed innovations closer to a Gaussian the update becomes
  nonlinear in ``y`` (a Gaussian anamorphosis of the innovation), which is what can
  beat the Kalman update;
- [`assimilate_online`][] cycles any method in chunks of ``k`` cycles and lets a
  function update it between chunks (e.g. [`refit_vae`][]: refit the VAE on the last
  chunk's ensembles).

!!! cite "Reference"
    Pasmans, Chen, Finn, Bocquet and Carrassi (2025), Ensemble Kalman filter in latent
    space using a variational autoencoder pair, *Q. J. R. Meteorol. Soc.* (arXiv
    2502.12987). The pair follows the authors' implementation (their DAPPER fork,
    `InnoVaeTransform` and `EtkfD`) as far as we could read it; see
    [`VAEPairFilter`][] for what differs.
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._checks import concrete, require_count
from .._method import AbstractAnalysisMethod
from ..cycle import Trajectory, assimilate
from ..observe import (
    AbstractObservation,
    AbstractObservationError,
    CorrelatedGaussianError,
    check_observations,
)
from .vae import VAE, fine_tune


def _latent_size_of(decoder) -> int | None:
    owner = getattr(decoder, "__self__", None)
    return getattr(owner, "latent_size", None)


class DecodedObservation(AbstractObservation):
    """``H(decoder(z))``: an observation operator on latent vectors, same error model.

    **Arguments:**

    - `observation`: the operator on states.
    - `decoder`: a callable module ``z ↦ x`` (e.g. ``vae.decode_point``).
    - `latent_size`: length of ``z``; inferred when `decoder` is a bound method of a
      [`hybridda.generative.VAE`][].

    The decoder's output shape must be the observation's state shape (checked here).
    Latent variables have no position, so there is no localisation in latent space.
    """

    observation: AbstractObservation
    decoder: Callable
    latent_size: int = eqx.field(static=True)

    def __init__(self, observation: AbstractObservation, decoder: Callable, latent_size=None):
        if latent_size is None:
            latent_size = _latent_size_of(decoder)
            if latent_size is None:
                raise ValueError(
                    "Pass `latent_size` (the length of z): it cannot be read from this "
                    "`decoder` (only from a VAE's bound method such as vae.decode_point)."
                )
        self.observation = observation
        self.decoder = decoder
        self.latent_size = latent_size

    def __check_init__(self):
        require_count("latent_size", self.latent_size, "the latent dimension")
        z = jax.ShapeDtypeStruct((self.latent_size,), jnp.result_type(float))
        out = eqx.filter_eval_shape(self.decoder, z)
        expected = (self.observation.state_size,)
        if getattr(out, "shape", None) != expected:
            raise ValueError(
                f"The `decoder` maps z of shape ({self.latent_size},) to shape "
                f"{getattr(out, 'shape', out)}, but `observation` expects states of shape "
                f"{expected}: the decoder output must have the state's shape."
            )

    @property
    def error(self) -> AbstractObservationError:
        return self.observation.error

    @property
    def state_size(self) -> int:
        return self.latent_size

    @property
    def obs_size(self) -> int:
        return self.observation.obs_size

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " p"]:
        return self.observation(self.decoder(z))

    def at_cycle(self, cycle) -> "DecodedObservation":
        return DecodedObservation(self.observation.at_cycle(cycle), self.decoder, self.latent_size)

    def locations(self, state_coordinates):
        raise TypeError(
            "Latent variables have no position: localisation is not defined for a "
            "DecodedObservation. Use a global filter (e.g. ETKF) in latent space."
        )


class FineTune(eqx.Module):
    """An online update: `steps` Adam steps on the ELBO of the current ensemble.

    Called by the latent filters at every analysis on the forecast ensemble, starting
    from the filter's own (offline) VAE each time: the transfer learning of Pasmans et
    al. (2025, their "transfer" experiments). Pure and jittable (a `lax.scan`).

    **Arguments:** `steps`, `learning_rate`, `batch_size` (``None``: every member),
    `samples` per member, `beta` and `trainable` (a function ``vae -> filter spec``;
    default every floating-point array) of [`hybridda.generative.fine_tune`][].
    """

    steps: int = eqx.field(static=True)
    learning_rate: float = eqx.field(static=True, default=1e-3)
    batch_size: int | None = eqx.field(static=True, default=None)
    samples: int = eqx.field(static=True, default=1)
    beta: float = eqx.field(static=True, default=1.0)
    trainable: Callable | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        require_count("steps", self.steps, "fine-tuning steps per analysis")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}.")

    def __call__(self, vae: VAE, data: Float[Array, "M n"], key: PRNGKeyArray) -> VAE:
        return fine_tune(
            vae,
            data,
            key,
            steps=self.steps,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            samples=self.samples,
            beta=self.beta,
            trainable=self.trainable,
        )


def _check_state_ensemble(E, vae: VAE, observation: AbstractObservation):
    if E.ndim != 2 or E.shape[1] != vae.data_size:
        raise ValueError(
            f"The ensemble `E` must have shape (N, {vae.data_size}) (the VAE's data_size), "
            f"got {E.shape}."
        )
    if observation.state_size != vae.data_size:
        raise ValueError(
            f"The observation operator expects states of length {observation.state_size} "
            f"but the VAE's data_size is {vae.data_size}."
        )
    return eqx.error_if(
        E,
        ~jnp.all(jnp.isfinite(E)),
        "The forecast ensemble `E` holds NaN or inf: the model or a previous analysis "
        "diverged; the VAE cannot encode it.",
    )


def _online_key(key):
    # The wrapped filter gets `key` itself, so that with an exact (identity) VAE the
    # latent filter reproduces the filter bit for bit, stochastic filters included.
    return jax.random.fold_in(key, 0x7AE)


class LatentFilter(AbstractAnalysisMethod):
    """Run `filter` in the latent space of `vae` (Pasmans et al. 2025, one VAE).

    ``Z = μ(E)`` (encoder means), ``Z_a = filter.analysis(Z, y, H ∘ decoder)`` with a
    [`DecodedObservation`][], then ``E_a = decoder(Z_a)`` (point reconstructions).
    Inflation, if any, is the wrapped filter's and acts on latent anomalies.

    **Arguments:**

    - `filter`: any analysis method, typically ``hybridda.filters.ETKF()``.
    - `vae`: a [`hybridda.generative.VAE`][] of the states.
    - `online`: optional [`FineTune`][], applied to the forecast ensemble before each
      analysis (for a non-stationary manifold).

    With an identity encoder and decoder this is `filter` itself; with an invertible
    affine pair it is `filter` in the transformed coordinates (for the ETKF, which is
    affine-equivariant, the same analysis).
    """

    filter: AbstractAnalysisMethod
    vae: VAE
    online: FineTune | None = None

    @property
    def min_ensemble_size(self) -> int:
        return self.filter.min_ensemble_size

    def analysis(self, E, y, observation, key):
        E = _check_state_ensemble(E, self.vae, observation)
        vae = self.vae if self.online is None else self.online(self.vae, E, _online_key(key))
        Z = jax.vmap(vae.encode_mean)(E)
        latent_observation = DecodedObservation(observation, vae.decode_point, vae.latent_size)
        Z_a = self.filter.analysis(Z, y, latent_observation, key)
        return jax.vmap(vae.decode_point)(Z_a)


class StandardisedEncoder(eqx.Module):
    """``d ↦ (μ(d) - centre) / scale``: an encoder mean standardised on a sample."""

    encoder: Callable
    centre: Float[Array, " q"]
    scale: Float[Array, " q"]

    def __call__(self, d: Float[Array, " p"]) -> Float[Array, " q"]:
        return (self.encoder(d) - self.centre) / self.scale


class InnovationObservation(AbstractObservation):
    """``z ↦ mean_k g(H(decoder z) + ε_k - m)``: a latent state seen as an encoded innovation.

    The innovation VAE's (standardised) encoder `innovation_encoder` ``g`` applied to
    the prior-predictive innovations of the state ``x = decoder(z)``,
    ``H(x) + ε_k - m``, averaged over the observation-error draws `error_samples`
    ``ε_k`` (common to every member); ``m`` (`reference`) is the forecast mean in
    observation space. The observed value in this space is ``g(y - m)``, the encoded
    innovation; `error` is the spread of ``g`` over the draws (estimated per cycle by
    [`VAEPairFilter`][]).
    """

    observation: AbstractObservation
    decoder: Callable
    innovation_encoder: Callable
    reference: Float[Array, " p"]
    error_samples: Float[Array, "K p"]
    error: AbstractObservationError
    latent_size: int = eqx.field(static=True)
    innovation_size: int = eqx.field(static=True)

    @property
    def state_size(self) -> int:
        return self.latent_size

    @property
    def obs_size(self) -> int:
        return self.innovation_size

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " q"]:
        predicted = self.observation(self.decoder(z)) - self.reference
        draws = predicted[None, :] + self.error_samples
        return jax.vmap(self.innovation_encoder)(draws).mean(axis=0)

    def locations(self, state_coordinates):
        raise TypeError("Latent innovations have no position: no localisation in latent space.")


class VAEPairFilter(AbstractAnalysisMethod):
    """Run `filter` between the latent space of the states and that of the innovations.

    Pasmans et al. (2025), the VAE pair. The Kalman update is a linear regression of
    the state on the innovation; here it regresses the latent state ``z`` on the
    *encoded* innovation ``g(d)``, where the innovation VAE makes the distribution of
    ``d`` closer to a Gaussian, so that non-Gaussian (skewed) and biased observation
    errors are handled by the regression instead of being assumed away. Per analysis,
    with ``x̂_i = decoder(μ(x_i))`` the members as the state VAE represents them,
    ``m = mean_i H(x̂_i)`` and ``K = innovation_samples`` draws ``ε_k`` from
    `error_sampler` (the true error distribution):

    1. optionally fine-tune the innovation VAE (`innovation_online`) on the
       prior-predictive innovations ``H(x̂_{i_k}) + ε_k - m`` (``i_k`` uniform over
       members);
    2. ``g = (μ_g - c) / s``: the innovation encoder's mean, standardised with the mean
       ``c`` and std ``s`` of the encoded prior-predictive innovations
       ``g_ik = μ_g(H(x̂_i) + ε_k - m)`` (no effect on the analysis, which is affine-
       equivariant in observation space; it keeps the numbers O(1));
    3. the wrapped filter on ``Z = μ(E)`` with the [`InnovationObservation`][]
       ``z ↦ mean_k g(H(decoder z) + ε_k - m)`` (what member ``i`` predicts for the
       encoded innovation, the bias and skewness of ``ε`` included), observed value
       ``g(y - m)`` (the encoded innovation) and error covariance
       ``R̃ = mean_i cov_k g_ik`` (the spread of the encoded innovation that the error
       adds to each member). ``Y Yᵀ/(N-1) + R̃`` is then, up to the ``N - 1`` and
       ``K - 1`` normalisations, the sample covariance of all ``g_ik`` (law of total
       covariance): the covariance ``C`` of the encoded prior-predictive innovations
       that the authors' ETKF uses;
    4. decode the analysis members.

    With identity VAEs this is the ETKF given ``y - mean_k ε_k`` and
    ``R = cov_k ε_k``: the bias is removed and ``R`` carries sampling error (the
    "slightly worse with strictly Gaussian errors" of the paper). With a nonlinear,
    Gaussianising ``g`` the update is nonlinear in ``y`` (Gaussian anamorphosis of
    the innovation), which is what can beat the Kalman update for skewed errors.

    Relation to the authors' code (`InnoVaeTransform` + `EtkfD` in their DAPPER fork):
    they take ``C`` from encoded perturbed innovations ``g(y - H x_k - ε_k)`` and the
    mean update from their mean minus ``g(0)`` (the encoded zero innovation), with
    ``Y`` from ``-g(y - H x_i)``; this is the same regression (of the state on the
    encoded innovation, evaluated at the observed one), written as the library's ETKF
    with an operator, an observed value and an ``R̃`` (positive definite by
    construction), and with ``Y`` from the same ``ε``-averaged encodings as ``C``.
    They encode random latent draws where we encode means, train the innovation VAE
    on ``y + ε - H x_j`` (the mirror image of their ``y - H x_k - ε_k`` when ``ε`` is
    skewed; here the VAE is trained on and applied to the same ``H x + ε - m``), and
    fine-tune it every cycle, which is optional here (`innovation_online`).

    **Arguments:**

    - `filter`: e.g. ``hybridda.filters.ETKF()``.
    - `state_vae`, `innovation_vae`: VAEs of states (``n``) and innovations (``p``).
    - `error_sampler`: a module with ``sample(key, obs_size) -> ε`` drawing from the
      true observation-error distribution (any [`hybridda.observe`][] error model, or
      a non-Gaussian one).
    - `innovation_samples`: ``K``, default 384 (the paper's value).
    - `online`, `innovation_online`: optional [`FineTune`][] of each VAE.
    - `jitter`: added to ``R̃``'s diagonal, relative to its mean variance.

    Observations must be complete (no NaN) and the operator fixed in size.
    """

    filter: AbstractAnalysisMethod
    state_vae: VAE
    innovation_vae: VAE
    error_sampler: eqx.Module
    innovation_samples: int = eqx.field(static=True, default=384)
    online: FineTune | None = None
    innovation_online: FineTune | None = None
    jitter: float = eqx.field(static=True, default=1e-8)

    def __check_init__(self):
        require_count("innovation_samples", self.innovation_samples, "innovation draws")
        if self.innovation_samples < 2:
            raise ValueError(f"`innovation_samples` must be >= 2, got {self.innovation_samples}.")
        if not callable(getattr(self.error_sampler, "sample", None)):
            raise TypeError(
                "`error_sampler` must have a method sample(key, obs_size) drawing one "
                "observation-error vector, e.g. hybridda.observe.GaussianError(0.1)."
            )

    @property
    def min_ensemble_size(self) -> int:
        return self.filter.min_ensemble_size

    def analysis(self, E, y, observation, key):
        E = _check_state_ensemble(E, self.state_vae, observation)
        p = observation.obs_size
        if y.shape != (p,):
            raise ValueError(f"The observation `y` must have shape ({p},), got {y.shape}.")
        if self.innovation_vae.data_size != p:
            raise ValueError(
                f"The `innovation_vae` has data_size {self.innovation_vae.data_size} but "
                f"there are {p} observations: it must encode innovation vectors."
            )
        y = check_observations(y)
        y = eqx.error_if(
            y,
            jnp.any(jnp.isnan(y)),
            "VAEPairFilter needs complete observations: `y` has NaN (missing) entries.",
        )
        keys = jax.random.split(jax.random.fold_in(key, 0x9A1), 6)
        state_vae = self.state_vae
        if self.online is not None:
            state_vae = self.online(state_vae, E, keys[0])
        Z = jax.vmap(state_vae.encode_mean)(E)
        Eo = jax.vmap(lambda z: observation(state_vae.decode_point(z)))(Z)  # H(x̂_i)
        reference = Eo.mean(axis=0)  # m
        centred = Eo - reference[None, :]
        N, K = E.shape[0], self.innovation_samples
        eps = jax.vmap(lambda k: self.error_sampler.sample(k, p))(jax.random.split(keys[3], K))
        innovation_vae = self.innovation_vae
        if self.innovation_online is not None:
            # the prior-predictive innovations H(x̂_i) + ε_k - m, one member per draw
            first = jax.random.randint(keys[1], (K,), 0, N)
            prior_innovations = centred[first] + eps
            innovation_vae = self.innovation_online(innovation_vae, prior_innovations, keys[4])
        q = innovation_vae.latent_size

        # g(H(x̂_i) + ε_k - m) for every member i and draw k, standardised on all of them
        shifted = centred[:, None, :] + eps[None, :, :]
        raw = jax.vmap(jax.vmap(innovation_vae.encode_mean))(shifted)  # (N, K, q)
        centre = raw.mean(axis=(0, 1))
        spread = raw.reshape(N * K, q).std(axis=0)
        scale = jnp.where(spread > 0, spread, 1.0)
        g = StandardisedEncoder(innovation_vae.encode_mean, centre, scale)
        anomalies = (raw - raw.mean(axis=1, keepdims=True)) / scale[None, None, :]
        R = jnp.einsum("ika,ikb->ab", anomalies, anomalies) / (N * (K - 1))  # mean_i cov_k
        R = 0.5 * (R + R.T)
        R = R + (self.jitter * jnp.trace(R) / q + jnp.finfo(R.dtype).tiny) * jnp.eye(q)
        latent_observation = InnovationObservation(
            observation,
            state_vae.decode_point,
            g,
            reference,
            eps,
            CorrelatedGaussianError(R),
            state_vae.latent_size,
            q,
        )
        Z_a = self.filter.analysis(Z, g(y - reference), latent_observation, key)
        return jax.vmap(state_vae.decode_point)(Z_a)


# ------------------------------------------------------------------- online cycling


def refit_vae(
    steps: int,
    *,
    learning_rate: float = 1e-3,
    batch_size: int | None = 64,
    ensembles: str = "forecast",
    last_cycles: int | None = None,
) -> Callable:
    """An `update` for [`assimilate_online`][]: fine-tune the method's state VAE.

    The data are the stored `ensembles` (``"forecast"`` or ``"analysis"``) of the last
    `last_cycles` cycles of the chunk just run (all of them by default), stacked.
    Works for [`LatentFilter`][] (field `vae`) and [`VAEPairFilter`][] (`state_vae`).
    """
    require_count("steps", steps, "fine-tuning steps per update")
    if ensembles not in ("forecast", "analysis"):
        raise ValueError(f"`ensembles` must be 'forecast' or 'analysis', got {ensembles!r}.")

    @eqx.filter_jit
    def _tune(vae, data, key):
        return fine_tune(
            vae, data, key, steps=steps, learning_rate=learning_rate, batch_size=batch_size
        )

    def update(method, trajectory: Trajectory, key: PRNGKeyArray):
        stored = getattr(trajectory, f"{ensembles}_ensemble")
        if last_cycles is not None:
            stored = stored[-last_cycles:]
        data = stored.reshape(-1, stored.shape[-1])
        field = "vae" if hasattr(method, "vae") else "state_vae"
        vae = _tune(getattr(method, field), data, key)
        return eqx.tree_at(lambda m: getattr(m, field), method, vae)

    return update


def assimilate_online(
    model,
    observation: AbstractObservation,
    method: AbstractAnalysisMethod,
    y_seq: Float[Array, "K p"],
    init: Float[Array, "N n"],
    key: PRNGKeyArray,
    *,
    update_every: int,
    update: Callable,
    t0: float = 0.0,
    first_cycle: int | Int[Array, ""] = 0,
    store_ensembles: bool = False,
    progress: bool = False,
) -> tuple[Trajectory, AbstractAnalysisMethod]:
    """[`hybridda.assimilate`][] in chunks of `update_every` cycles, updating the method.

    After each chunk, ``method = update(method, chunk_trajectory, key_c)`` (the chunk's
    trajectory holds its forecast and analysis ensembles), e.g. [`refit_vae`][]: the
    online VAE update every ``k`` cycles. Keys and cycle indices are those of one
    `assimilate` call, so with an `update` that returns the method unchanged the
    result equals ``assimilate(...)``.

    **Returns:** the whole [`hybridda.cycle.Trajectory`][] (ensembles only with
    `store_ensembles`) and the method after the last update.
    """
    require_count("update_every", update_every, "cycles between updates")
    run = eqx.filter_jit(assimilate)
    cycles = y_seq.shape[0]
    start = concrete(first_cycle)
    start = 0 if start is None else int(start)
    parts, E = [], init
    starts = range(0, cycles, update_every)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="online cycling", leave=False)
    for offset in starts:
        chunk = y_seq[offset : offset + update_every]
        trajectory = run(
            model,
            observation,
            method,
            chunk,
            E,
            key,
            t0=t0 + offset * model.cycle_length,
            first_cycle=start + offset,
            store_ensembles=True,
        )
        E = trajectory.final_ensemble
        update_key = jax.random.fold_in(jax.random.fold_in(key, 0x0DA7E), start + offset)
        method = update(method, trajectory, update_key)
        if not store_ensembles:
            trajectory = dataclasses.replace(
                trajectory, forecast_ensemble=None, analysis_ensemble=None
            )
        parts.append(trajectory)
    return Trajectory.concatenate(parts), method
