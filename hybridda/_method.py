"""The interface every sequential DA method offers to the cycling machinery."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .observe import AbstractObservation


class AbstractAnalysisMethod(eqx.Module):
    """Anything with an analysis step ``E_a = analysis(E_f, y, observation, key)``.

    ``E`` holds ensemble members as rows, shape ``(N, n)``; deterministic methods such
    as 3D-Var use ``N = 1``. [`hybridda.cycle.assimilate`][] cycles any such method.
    """

    @property
    @abc.abstractmethod
    def min_ensemble_size(self) -> int:
        """Smallest ``N`` the method accepts."""

    @abc.abstractmethod
    def analysis(
        self,
        E: Float[Array, "N n"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N n"]:
        """Update the forecast ensemble `E` with observation `y` (NaN = missing)."""
