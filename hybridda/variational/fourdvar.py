"""Cycled 4D-Var: a window method built from the 4D-Var costs and minimisers."""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import as_float_array, require_spd
from .._method import AbstractWindowMethod, WindowAnalysis
from .costs import StrongFourDVar, WeakFourDVar
from .solve import gauss_newton, incremental, quasi_newton

MINIMISERS = ("gauss-newton", "incremental", "quasi-newton")


class FourDVar(AbstractWindowMethod):
    """Strong- or weak-constraint 4D-Var over windows of `window` cycles.

    Each window minimises [`StrongFourDVar`][] (or [`WeakFourDVar`][] when a
    `model_error_covariance` ``Q`` is given) from the background, the mean of the
    incoming state (``N = 1``), and hands the window-end state of the analysed
    trajectory to the next window (the background "propagated").

    **Arguments:**

    - `background_covariance`: static ``B``, e.g. ``scale × climatological covariance``.
    - `window`: cycles per window ``L`` (≥ 1).
    - `minimiser`: ``"gauss-newton"`` (default), ``"incremental"`` or ``"quasi-newton"``.
    - `outer_loops`, `inner_loops`: Gauss-Newton / incremental outer iterations and CG
      iterations per outer loop (quasi-Newton: `outer_loops` L-BFGS iterations).
    - `tolerance`: stopping criterion of the minimiser.
    - `model_error_covariance`: ``Q`` for weak-constraint 4D-Var (``None``: strong).

    A non-finite cost is not raised here but returned, so that
    [`hybridda.cycle.assimilate_windows`][] stops with an error naming the window.
    """

    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    window: int = eqx.field(static=True, default=1)
    minimiser: Literal["gauss-newton", "incremental", "quasi-newton"] = eqx.field(
        static=True, default="gauss-newton"
    )
    outer_loops: int = eqx.field(static=True, default=10)
    inner_loops: int = eqx.field(static=True, default=50)
    tolerance: float = eqx.field(static=True, default=1e-8)
    model_error_covariance: Float[Array, "n n"] | None = None

    def __check_init__(self):
        require_spd("background_covariance (B)", self.background_covariance)
        if self.model_error_covariance is not None:
            require_spd("model_error_covariance (Q)", self.model_error_covariance)
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(
                f"`window` (cycles per 4D-Var window) must be >= 1, got {self.window}."
            )
        if self.minimiser not in MINIMISERS:
            raise ValueError(f"`minimiser` must be one of {MINIMISERS}, got {self.minimiser!r}.")
        if self.outer_loops < 1 or self.inner_loops < 1:
            raise ValueError("`outer_loops` and `inner_loops` must be >= 1.")

    @property
    def min_ensemble_size(self) -> int:
        return 1

    def analyse_window(self, model, observation, E, y, t0, first_cycle, key) -> WindowAnalysis:
        del key
        background = E.mean(axis=0)
        if self.model_error_covariance is None:
            cost = StrongFourDVar(
                model, observation, y, background, self.background_covariance, t0, first_cycle
            )
            control = background
        else:
            cost = WeakFourDVar(
                model,
                observation,
                y,
                background,
                self.background_covariance,
                self.model_error_covariance,
                t0,
                first_cycle,
            )
            control = cost.initial_control()
        if self.minimiser == "gauss-newton":
            result = gauss_newton(
                cost,
                control,
                max_iterations=self.outer_loops,
                tolerance=self.tolerance,
                inner_iterations=self.inner_loops,
                throw=False,
            )
        elif self.minimiser == "incremental":
            result = incremental(
                cost,
                control,
                outer_loops=self.outer_loops,
                inner_loops=self.inner_loops,
                tolerance=self.tolerance,
                throw=False,
            )
        else:
            result = quasi_newton(
                cost,
                control,
                max_iterations=self.outer_loops,
                tolerance=self.tolerance,
                throw=False,
            )
        trajectory = cost.trajectory(result.control)
        return WindowAnalysis(
            trajectory=trajectory,
            final=jnp.broadcast_to(trajectory[-1], E.shape),
            costs=result.costs,
            converged=result.converged,
        )
