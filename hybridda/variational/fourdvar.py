"""Cycled 4D-Var: a window method built from the 4D-Var costs and minimisers."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import as_float_array, concrete, require_spd
from .._method import (
    AbstractAnalysisMethod,
    AbstractWindowMethod,
    WindowAnalysis,
    check_window_shape,
)
from .costs import StrongFourDVar, WeakFourDVar
from .solve import MinimiseResult, gauss_newton, incremental, quasi_newton

MINIMISERS = ("gauss-newton", "incremental", "quasi-newton")


class FourDVar(AbstractWindowMethod):
    """Strong- or weak-constraint 4D-Var over windows of `window` cycles.

    Each window minimises [`StrongFourDVar`][] (or [`WeakFourDVar`][] when a
    `model_error_covariance` ``Q`` is given) from the background, the mean of the
    incoming state, and hands the analysed state `shift` cycles on (the next window's
    start) to the next window: the background "propagated". With ``shift < window``
    the windows overlap and each one assimilates only its new observations (DAPPER's
    ``Var4D(Lag=L)`` for ``shift = 1``).

    **Hybrid background covariance:** with an `ensemble_filter` and `hybrid_weight`
    ``β > 0`` the method carries an ensemble (``N ≥ 2``) and uses
    ``B = (1 - β) B_static + β ρ ∘ P_e`` with ``P_e`` the covariance of the incoming
    ensemble and ``ρ`` an optional `ensemble_localisation` matrix (Hamill and Snyder
    2000; Lorenc 2003). The ensemble is cycled by the filter over the window and then
    re-centred on the 4D-Var analysis (``shift`` must equal ``window``). ``B`` is formed
    explicitly (n × n), which suits the small and mid-sized models here.

    **Arguments:**

    - `background_covariance`: static ``B``, e.g. ``scale × climatological covariance``.
    - `window`: cycles per window ``L`` (≥ 1); `shift`: cycles between window starts
      (default: the whole window).
    - `minimiser`: ``"gauss-newton"`` (default), ``"incremental"`` or ``"quasi-newton"``.
    - `outer_loops`, `inner_loops`: Gauss-Newton / incremental outer iterations and CG
      iterations per outer loop (quasi-Newton: `outer_loops` L-BFGS iterations).
    - `tolerance`: stopping criterion of the minimiser.
    - `model_error_covariance`: ``Q`` for weak-constraint 4D-Var (``None``: strong).
    - `ensemble_filter`, `hybrid_weight`, `ensemble_localisation`: the hybrid option.

    A non-finite cost is not raised here but returned, so that
    [`hybridda.cycle.assimilate_windows`][] stops with an error naming the window.
    """

    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    window: int = eqx.field(static=True, default=1)
    shift: int | None = eqx.field(static=True, default=None)
    minimiser: Literal["gauss-newton", "incremental", "quasi-newton"] = eqx.field(
        static=True, default="gauss-newton"
    )
    outer_loops: int = eqx.field(static=True, default=10)
    inner_loops: int = eqx.field(static=True, default=50)
    tolerance: float = eqx.field(static=True, default=1e-8)
    model_error_covariance: Float[Array, "n n"] | None = None
    ensemble_filter: AbstractAnalysisMethod | None = None
    hybrid_weight: float | Float[Array, ""] = 0.0
    ensemble_localisation: Float[Array, "n n"] | None = None

    def __check_init__(self):
        require_spd("background_covariance (B)", self.background_covariance)
        if self.model_error_covariance is not None:
            require_spd("model_error_covariance (Q)", self.model_error_covariance)
        check_window_shape(self.window, self.shift)
        if self.minimiser not in MINIMISERS:
            raise ValueError(f"`minimiser` must be one of {MINIMISERS}, got {self.minimiser!r}.")
        if self.outer_loops < 1 or self.inner_loops < 1:
            raise ValueError("`outer_loops` and `inner_loops` must be >= 1.")
        weight = concrete(self.hybrid_weight)
        if weight is not None and not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"`hybrid_weight` (β) must lie in [0, 1], got {weight}.")
        if self.hybrid and self.stride != self.window:
            raise ValueError(
                "The hybrid background covariance needs non-overlapping windows: leave "
                "`shift` at None (= window)."
            )

    @property
    def hybrid(self) -> bool:
        """Whether an ensemble is carried to build the hybrid ``B``."""
        return self.ensemble_filter is not None

    @property
    def min_ensemble_size(self) -> int:
        return 2 if self.hybrid else 1

    def _background_covariance(self, E):
        if not self.hybrid:
            return self.background_covariance
        A = E - E.mean(axis=0)[None, :]
        ensemble_covariance = A.T @ A / (E.shape[0] - 1)
        if self.ensemble_localisation is not None:
            ensemble_covariance = self.ensemble_localisation * ensemble_covariance
        beta = self.hybrid_weight
        return (1 - beta) * self.background_covariance + beta * ensemble_covariance

    def window_cost(
        self,
        model,
        observation,
        y: Float[Array, "L p"],
        background: Float[Array, " n"],
        t0=0.0,
        first_cycle=0,
        obs_weights: Float[Array, " L"] | None = None,
        background_covariance: Float[Array, "n n"] | None = None,
    ) -> StrongFourDVar | WeakFourDVar:
        """The cost functional of one window: [`StrongFourDVar`][], or [`WeakFourDVar`][]
        with the `model_error_covariance`, from `background` at the window start: time
        `t0`, global cycle index `first_cycle` (``y[k - 1]`` is observed with
        ``observation.at_cycle(first_cycle + k - 1)``); with this method's static ``B``
        unless a `background_covariance` is given."""
        B = self.background_covariance if background_covariance is None else background_covariance
        arguments = (model, observation, y, background, B)
        if self.model_error_covariance is None:
            return StrongFourDVar(*arguments, t0, first_cycle, obs_weights)
        return WeakFourDVar(*arguments, self.model_error_covariance, t0, first_cycle, obs_weights)

    def minimise(self, cost, control) -> MinimiseResult:
        """Minimise `cost` from `control` with this method's minimiser, loops and
        tolerance; a non-finite cost is returned in ``costs``, not raised."""
        if self.minimiser == "gauss-newton":
            return gauss_newton(
                cost,
                control,
                max_iterations=self.outer_loops,
                tolerance=self.tolerance,
                inner_iterations=self.inner_loops,
                throw=False,
            )
        if self.minimiser == "incremental":
            return incremental(
                cost,
                control,
                outer_loops=self.outer_loops,
                inner_loops=self.inner_loops,
                tolerance=self.tolerance,
                throw=False,
            )
        return quasi_newton(
            cost,
            control,
            max_iterations=self.outer_loops,
            tolerance=self.tolerance,
            throw=False,
        )

    def analyse_window(
        self, model, observation, E, y, weights, t0, first_cycle, key
    ) -> WindowAnalysis:
        cost = self.window_cost(
            model,
            observation,
            y,
            E.mean(axis=0),
            t0,
            first_cycle,
            weights.assimilate,
            self._background_covariance(E),
        )
        control = cost.background if isinstance(cost, StrongFourDVar) else cost.initial_control()
        result = self.minimise(cost, control)
        analysed = cost.trajectory(result.control)
        background_states = cost.trajectory(control)
        if self.hybrid:
            ensemble = self._cycle_ensemble(model, observation, E, y, t0, first_cycle, key)
            # Re-centre the filter's ensemble on the 4D-Var analysis at the window end.
            analysis = final = ensemble - ensemble.mean(axis=0)[None, :] + analysed[-1][None, :]
        else:
            analysis = jnp.broadcast_to(analysed[-1], E.shape)
            final = jnp.broadcast_to(analysed[self.stride - 1], E.shape)
        return WindowAnalysis(
            forecast=background_states[-1][None, :],
            analysis=analysis,
            final=final,
            costs=result.costs,
            converged=result.converged,
        )

    def _cycle_ensemble(self, model, observation, E, y, t0, first_cycle, key):
        """The ensemble filter cycled over the window: its analysis at the window end."""

        def cycle(E, inputs):
            k, y_k = inputs
            forecast = model.ensemble(E, t0 + k * model.cycle_length)
            operator = observation.at_cycle(first_cycle + k)
            analysis = self.ensemble_filter.analysis(
                forecast, y_k, operator, jax.random.fold_in(key, k)
            )
            return analysis, None

        return jax.lax.scan(cycle, E, (jnp.arange(self.window), y))[0]
