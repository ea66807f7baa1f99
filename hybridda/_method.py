"""The interface every sequential DA method offers to the cycling machinery."""

import abc

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

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


class WindowAnalysis(eqx.Module):
    """What a window method returns for one window of ``L`` cycles.

    - `trajectory`: the analysed (smoothed) state at the ``L`` observation times.
    - `final`: the analysis ensemble (or single state, ``N = 1``) at the window end,
      the background of the next window.
    - `costs`: cost after each iteration of the minimisation; `converged`: whether it met
      its stopping criterion.
    """

    trajectory: Float[Array, "L n"]
    final: Float[Array, "N n"]
    costs: Float[Array, " iterations"]
    converged: Bool[Array, ""]


class AbstractWindowMethod(eqx.Module):
    """A method that assimilates ``window`` cycles of observations at once (4D-Var, IEnKS).

    [`hybridda.cycle.assimilate_windows`][] cycles any such method: the background
    (ensemble) at each window start is the previous window's `final` analysis.
    """

    window: eqx.AbstractVar[int]

    @property
    @abc.abstractmethod
    def min_ensemble_size(self) -> int:
        """Smallest ``N`` the method accepts."""

    @abc.abstractmethod
    def analyse_window(
        self,
        model,
        observation: AbstractObservation,
        E: Float[Array, "N n"],
        y: Float[Array, "L p"],
        t0: Float[Array, ""],
        first_cycle: Int[Array, ""],
        key: PRNGKeyArray,
    ) -> WindowAnalysis:
        """Assimilate the window's observations `y` given the background `E` at `t0`."""
