"""Inflation: small modules that a filter applies before and/or after its update.

Each has `prior(E)` (applied to the forecast before the update) and
`posterior(E_prior, E_analysis)` (applied to the analysis). Multiplicative factors
scale the *anomalies* (the covariance by ``factor²``), as in Sakov and Oke (2008)
and DAPPER's ``infl``.
"""

import abc
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import as_float_array, concrete, require_positive


def _anomalies(E):
    mean = E.mean(axis=0, keepdims=True)
    return mean, E - mean


class AbstractInflation(eqx.Module):
    """An inflation rule."""

    def prior(self, E: Float[Array, "N n"]) -> Float[Array, "N n"]:
        """Inflate the forecast ensemble (default: unchanged)."""
        return E

    @abc.abstractmethod
    def posterior(
        self, E_prior: Float[Array, "N n"], E_analysis: Float[Array, "N n"]
    ) -> Float[Array, "N n"]:
        """Inflate the analysis ensemble, knowing the prior."""


class NoInflation(AbstractInflation):
    """No inflation."""

    def posterior(self, E_prior, E_analysis):
        return E_analysis


class Multiplicative(AbstractInflation):
    """Multiply the ensemble anomalies by `factor` (> 0), before or after the update.

    **Arguments:**

    - `factor`: anomaly scaling, e.g. 1.02 (covariance × 1.0404).
    - `when`: ``"posterior"`` (default, as DAPPER) or ``"prior"``.
    """

    factor: Float[Array, ""] = eqx.field(converter=as_float_array)
    when: Literal["prior", "posterior"] = eqx.field(static=True, default="posterior")

    def __check_init__(self):
        require_positive("inflation", self.factor, "Use 1.0 for no inflation, e.g. 1.02.")
        if self.when not in ("prior", "posterior"):
            raise ValueError(f"`when` must be 'prior' or 'posterior', got {self.when!r}.")

    def _scale(self, E):
        mean, A = _anomalies(E)
        return mean + self.factor * A

    def prior(self, E):
        return self._scale(E) if self.when == "prior" else E

    def posterior(self, E_prior, E_analysis):
        return self._scale(E_analysis) if self.when == "posterior" else E_analysis


class RTPS(AbstractInflation):
    """Relaxation to prior spread (Whitaker and Hamill 2012, eq. 3).

    Each variable's analysis spread ``σa`` is relaxed towards the prior spread ``σb``:
    anomalies are scaled by ``1 + α (σb − σa) / σa``.
    """

    alpha: Float[Array, ""] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        value = concrete(self.alpha)
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"RTPS `alpha` must lie in [0, 1], got {value}.")

    def posterior(self, E_prior, E_analysis):
        mean, A = _anomalies(E_analysis)
        spread_prior = jnp.std(E_prior, axis=0, keepdims=True)
        spread_analysis = jnp.std(E_analysis, axis=0, keepdims=True)
        safe = jnp.where(spread_analysis > 0, spread_analysis, 1.0)
        scale = 1 + self.alpha * (spread_prior - spread_analysis) / safe
        return mean + A * jnp.where(spread_analysis > 0, scale, 1.0)


class RTPP(AbstractInflation):
    """Relaxation to prior perturbations (Zhang et al. 2004): ``Aa ← (1−α) Aa + α Ab``."""

    alpha: Float[Array, ""] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        value = concrete(self.alpha)
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"RTPP `alpha` must lie in [0, 1], got {value}.")

    def posterior(self, E_prior, E_analysis):
        mean, A = _anomalies(E_analysis)
        _, A_prior = _anomalies(E_prior)
        return mean + (1 - self.alpha) * A + self.alpha * A_prior


def multiplicative(factor: float | None) -> AbstractInflation:
    """``Multiplicative(factor)``, or `NoInflation()` when factor is None or 1."""
    if factor is None or factor == 1.0:
        return NoInflation()
    return Multiplicative(factor)
