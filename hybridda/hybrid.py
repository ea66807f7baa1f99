"""Hybrid models: physics plus a learnt correction, and fully learnt surrogates.

A correction is any callable ``c(x)`` of one state (usually an Equinox network from
[`hybridda.nn`][]); its parameters are leaves of the hybrid model, so
``jax.grad(loss)(hybrid)`` differentiates through the integrator, the cycle and the
network at once.

- [`TendencyCorrection`][]: ``dx/dt = f(t, x) + c(x)``, a dynamics: wrap it in a
  [`hybridda.Resolvent`][] like any physical model.
- [`ResolventCorrection`][]: ``x⁺ = M(x) + c(x)`` after each cycle of a resolvent ``M``.
- [`NeuralDynamics`][]: ``dx/dt = net(x)``, a network as the whole tendency.
- [`Surrogate`][]: ``x⁺ = x + net(x)`` (or ``net(x)``), a network as the whole resolvent.

`ResolventCorrection` and `Surrogate` satisfy [`hybridda.cycle.EnsembleModel`][]
directly, the two dynamics once wrapped in a `Resolvent`; so every hybrid model plugs
into `assimilate`, `cycled_loss`, every filter and 4D-Var unchanged.

!!! cite "References"
    Farchi, Laloyaux, Bonavita and Bocquet (2021), Using machine learning to correct
    model error in data assimilation and forecast applications, *QJRMS* 147,
    3067-3084 (resolvent and tendency corrections). Brajard, Carrassi, Bocquet and
    Bertino (2021), Combining data assimilation and machine learning to infer
    unresolved scale parametrization, *Phil. Trans. R. Soc. A* 379, 20200086.
"""

from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, Float

from .cycle import EnsembleModel
from .dynamics import AbstractDynamics

Correction = Callable[[Float[Array, " n"]], Float[Array, " n"]]


class TendencyCorrection(AbstractDynamics):
    r"""The tendency of a physical model plus a learnt one: $f(t, x) + c(x)$.

    A dynamics in its own right: ``Resolvent(TendencyCorrection(physics, network), dt)``
    integrates the corrected tendency with the same solver, at every stage of every
    step. The correction's output is cast to the dtype of the physical tendency.

    **Arguments:**

    - `dynamics`: the physical model ``f``.
    - `correction`: ``c``, a callable (typically an Equinox network) mapping one state
      ``(n,)`` to a tendency ``(n,)``.
    """

    dynamics: AbstractDynamics
    correction: Correction

    @property
    def state_size(self) -> int:
        return self.dynamics.state_size

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        physical = self.dynamics.tendency(t, x, args)
        return physical + self.correction(x).astype(physical.dtype)

    def coordinates(self) -> Float[Array, " n"]:
        return self.dynamics.coordinates()

    def domain_length(self) -> float:
        return self.dynamics.domain_length()

    def default_initial_state(self) -> Float[Array, " n"]:
        return self.dynamics.default_initial_state()


class NeuralDynamics(AbstractDynamics):
    r"""A network as the whole tendency: $dx/dt = \mathrm{net}(x)$ (Bocquet et al. 2019).

    Wrapped in a [`hybridda.Resolvent`][] this is a neural ODE integrated with the same
    Runge-Kutta schemes as the physical models.

    **Arguments:**

    - `network`: a callable mapping one state ``(n,)`` to its tendency ``(n,)``, e.g.
      [`hybridda.nn.BilinearCNN`][].
    - `n`: number of state variables (static).
    """

    network: Correction
    n: int = eqx.field(static=True)

    def __check_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"`n` (the number of state variables) must be >= 1, got {self.n!r}.")

    @property
    def state_size(self) -> int:
        return self.n

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        return self.network(x).astype(x.dtype)


class ResolventCorrection(eqx.Module):
    r"""A resolvent followed by a learnt correction: $x^+ = M(x) + c(x)$.

    The correction sees the state at the start of the cycle. Satisfies
    [`hybridda.cycle.EnsembleModel`][] like the resolvent it wraps.

    **Arguments:**

    - `resolvent`: the one-cycle model ``M``, e.g. a [`hybridda.Resolvent`][].
    - `correction`: ``c``, a callable mapping one state ``(n,)`` to an increment
      ``(n,)``; its output is cast to the dtype of ``M(x)``.
    """

    resolvent: EnsembleModel
    correction: Correction

    @property
    def cycle_length(self) -> float:
        """Model time covered by one cycle (that of `resolvent`)."""
        return self.resolvent.cycle_length

    def __call__(
        self, x: Float[Array, " n"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, " n"]:
        forecast = self.resolvent(x, t0)
        return forecast + self.correction(x).astype(forecast.dtype)

    def ensemble(
        self, E: Float[Array, "N n"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, "N n"]:
        """Propagate every member (row) over one cycle and correct it."""
        forecast = self.resolvent.ensemble(E, t0)
        return forecast + jax.vmap(self.correction)(E).astype(forecast.dtype)


class Surrogate(eqx.Module):
    r"""A network as the whole resolvent: $x^+ = x + \mathrm{net}(x)$, or $\mathrm{net}(x)$.

    The residual form (default) learns the increment over one cycle, as in Brajard et
    al. (2020); it starts close to persistence and is easier to train.

    **Arguments:**

    - `network`: a callable mapping one state ``(n,)`` to ``(n,)``.
    - `cycle_length`: model time one application stands for (used by the cycling code
      to time-stamp cycles; the network itself does not see time).
    - `residual`: ``True`` for ``x + net(x)``, ``False`` for ``net(x)``.
    """

    network: Correction
    cycle_length: float = eqx.field(static=True)
    residual: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not self.cycle_length > 0:
            raise ValueError(
                f"`cycle_length` must be > 0 (model time per cycle), got {self.cycle_length!r}."
            )

    def __call__(
        self, x: Float[Array, " n"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, " n"]:
        del t0
        output = self.network(x).astype(x.dtype)
        return x + output if self.residual else output

    def ensemble(
        self, E: Float[Array, "N n"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, "N n"]:
        """Apply the surrogate to every member (row)."""
        return jax.vmap(lambda x: self(x, t0))(E)
