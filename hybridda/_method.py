"""The interface every sequential DA method offers to the cycling machinery."""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
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


class WindowWeights(eqx.Module):
    """Observation weights of one window, one entry per cycle of the window.

    - `assimilate`: weight ``β_k`` of cycle ``k``'s observation term in this window's
      analysis (its ``R`` is divided by ``β_k``): 1 for a new observation in single data
      assimilation (SDA), 0 for one assimilated in an earlier window, a fraction in
      multiple data assimilation (MDA, Bocquet and Sakov 2014, sec. 3).
    - `remaining`: the weight each observation still lacks after this window (all zero
      in SDA). MDA methods assimilate it in a "balancing" analysis to get the filtering
      estimate at the window end.
    """

    # Shape (L,) for one window; a run's weights carry a leading window axis.
    assimilate: Float[Array, "*windows L"]
    remaining: Float[Array, "*windows L"]


def window_weights(window: int, shift: int, steps: int, multiple: bool) -> WindowWeights:
    """The weights of every step of a run of `steps` windows of `window` cycles.

    Window ``j`` covers cycles ``[jS, jS + L)`` (``S`` = `shift`). In SDA window 0
    assimilates all its observations and window ``j ≥ 1`` the ``S`` new ones at its end.
    In MDA (`multiple`) every observation is assimilated in each window that contains
    it, with weight ``1 / (number of such windows)``, so its weights sum to one over
    the run (windows near the run's start and end hold it fewer times).
    Returns arrays with a leading step axis, shape ``(steps, window)``.
    """
    L, S = window, shift
    cycles = (steps - 1) * S + L
    inside = np.zeros((steps, cycles), dtype=bool)
    for j in range(steps):
        inside[j, j * S : j * S + L] = True
    if multiple:
        assimilate = inside / inside.sum(axis=0, keepdims=True)
    else:
        first_window = np.argmax(inside, axis=0)  # the first window holding each cycle
        assimilate = (np.arange(steps)[:, None] == first_window[None, :]).astype(float)
    remaining = 1.0 - np.cumsum(assimilate, axis=0)
    by_window = np.stack([np.arange(L) + j * S for j in range(steps)])  # (steps, L)
    take = np.take_along_axis
    return WindowWeights(
        assimilate=jnp.asarray(take(assimilate, by_window, axis=1)),
        remaining=jnp.asarray(np.clip(take(remaining, by_window, axis=1), 0.0, 1.0)),
    )


class WindowAnalysis(eqx.Module):
    """What a window method returns for one window of ``L`` cycles.

    - `forecast`: the background ensemble propagated to the window end, before this
      window's observations (``N = 1`` for 4D-Var).
    - `analysis`: the analysis (filtering estimate) at the window end, which has used
      every observation up to that time.
    - `final`: the analysis ensemble at the next window's start (``S`` cycles after this
      window's start), the next window's background.
    - `costs`: cost after each iteration of the minimisation; `converged`: whether it met
      its stopping criterion.
    """

    forecast: Float[Array, "members n"]
    analysis: Float[Array, "N n"]
    final: Float[Array, "N n"]
    costs: Float[Array, " iterations"]
    converged: Bool[Array, ""]


class AbstractWindowMethod(eqx.Module):
    """A method that assimilates windows of ``L = window`` cycles (4D-Var, IEnKS).

    Consecutive windows overlap when the window slides by ``S = stride < L`` cycles
    ([`window_weights`][] says which observations each window assimilates).
    [`hybridda.cycle.assimilate_windows`][] cycles any such method: the background
    (ensemble) at each window start is the previous window's `final` analysis.
    """

    window: eqx.AbstractVar[int]
    shift: eqx.AbstractVar[int | None]

    @property
    def stride(self) -> int:
        """Cycles ``S`` between window starts: `shift`, or the whole window if ``None``."""
        return self.window if self.shift is None else self.shift

    @property
    def multiple_da(self) -> bool:
        """Whether observations are assimilated in every window holding them (MDA)."""
        return False

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
        weights: WindowWeights,
        t0: Float[Array, ""],
        first_cycle: Int[Array, ""],
        key: PRNGKeyArray,
    ) -> WindowAnalysis:
        """Assimilate the window's observations `y` given the background `E` at `t0`."""


def check_window_shape(window, shift) -> None:
    """Construction-time checks of `window` (``L``) and `shift` (``S``)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"`window` (cycles per window) must be an integer >= 1, got {window}.")
    if shift is not None and (not isinstance(shift, int) or not 1 <= shift <= window):
        raise ValueError(
            f"`shift` (cycles the window slides) must be an integer in [1, window={window}] "
            f"or None for the whole window, got {shift}."
        )
