"""The ensemble-filter interface and the ensemble statistics every filter starts from."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._method import AbstractAnalysisMethod
from ..observe import AbstractObservation, check_observations, observed_mask
from .inflation import AbstractInflation


class EnsembleInnovations(eqx.Module):
    """The forecast ensemble seen through the observations, whitened by ``R^{-1/2}``.

    Unobserved entries (NaN in ``y``) are zero in `obs_anomalies` and `innovation`, so
    they carry no weight and shapes stay static.
    """

    mean: Float[Array, " n"]  # forecast mean x̄
    anomalies: Float[Array, "N n"]  # A = E - x̄ (unscaled)
    obs_mean: Float[Array, " p"]  # mean of H(E)
    obs_anomalies: Float[Array, "N p"]  # S = (H(E) - mean) R^{-1/2}
    innovation: Float[Array, " p"]  # d = (y - mean of H(E)) R^{-1/2}
    mask: Bool[Array, " p"]


def ensemble_innovations(
    E: Float[Array, "N n"], y: Float[Array, " p"], observation: AbstractObservation
) -> EnsembleInnovations:
    """Compute [`EnsembleInnovations`][] for ensemble `E` and observation `y`."""
    mask = observed_mask(y)
    mean = E.mean(axis=0)
    Eo = jax.vmap(observation)(E)  # observed ensemble H(E), (N, p)
    obs_mean = Eo.mean(axis=0)
    error = observation.error
    return EnsembleInnovations(
        mean=mean,
        anomalies=E - mean[None, :],
        obs_mean=obs_mean,
        obs_anomalies=error.whiten(Eo - obs_mean[None, :], mask),
        innovation=error.whiten(jnp.where(mask, y - obs_mean, 0.0), mask),
        mask=mask,
    )


def check_ensemble(E: Float[Array, "N n"], observation: AbstractObservation, minimum: int) -> None:
    """Static shape checks with messages that name the argument."""
    if E.ndim != 2:
        raise ValueError(f"The ensemble `E` must have shape (N, n), got {E.shape}.")
    if E.shape[0] < minimum:
        raise ValueError(
            f"`ensemble_size` must be >= {minimum}, got N={E.shape[0]}: anomalies and "
            "covariances need at least two members."
        )
    if E.shape[1] != observation.state_size:
        raise ValueError(
            f"The ensemble has {E.shape[1]} state variables but the observation operator "
            f"expects {observation.state_size}."
        )


class AbstractEnsembleFilter(AbstractAnalysisMethod):
    """An ensemble Kalman-type filter: inflation wraps a method-specific update.

    Subclasses implement `update`; `analysis` (final) validates shapes, applies prior
    inflation, the update, then posterior inflation.
    """

    inflation: eqx.AbstractVar[AbstractInflation]

    @property
    def min_ensemble_size(self) -> int:
        return 2

    @abc.abstractmethod
    def update(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        """The method's analysis update, without inflation."""

    def update_and_evidence(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> tuple[Float[Array, "N n"], Float[Array, ""]]:
        """`update` and the negative log-likelihood of `y` given the ensemble `E`
        ([`hybridda.filters.evidence.ensemble_negative_log_likelihood`][]).

        Filters whose update forms the same ensemble-space matrices override this to
        share them (the ETKF); the default computes the two separately.
        """
        from .evidence import ensemble_negative_log_likelihood

        return (
            self.update(E, y, observation, key),
            ensemble_negative_log_likelihood(E, y, observation),
        )

    def _checked(self, E, y, observation):
        check_ensemble(E, observation, self.min_ensemble_size)
        if y.shape != (observation.obs_size,):
            raise ValueError(
                f"The observation `y` must have shape ({observation.obs_size},), got {y.shape}."
            )
        return check_observations(y)

    def analysis(self, E, y, observation, key):
        y = self._checked(E, y, observation)
        E_prior = self.inflation.prior(E)
        E_analysis = self.update(E_prior, y, observation, key)
        return self.inflation.posterior(E_prior, E_analysis)

    def analysis_and_evidence(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> tuple[Float[Array, "N n"], Float[Array, ""]]:
        """`analysis`, and the negative log-likelihood of `y` under the forecast after
        the prior inflation: the per-cycle score of [`hybridda.cycled_loss`][]'s
        ``"negative_log_likelihood"``, computed with the analysis's own matrices where
        the filter allows it."""
        y = self._checked(E, y, observation)
        E_prior = self.inflation.prior(E)
        E_analysis, nll = self.update_and_evidence(E_prior, y, observation, key)
        return self.inflation.posterior(E_prior, E_analysis), nll
