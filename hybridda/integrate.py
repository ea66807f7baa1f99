"""Resolvents: the flow map of a dynamics over one DA cycle, via `diffrax.diffeqsolve`."""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import require_positive
from .dynamics import AbstractDynamics

_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # RK4 has no embedded error estimate: use it with a constant step size only.
    b_error=np.zeros(4),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classical fourth-order Runge-Kutta method (Kutta 1901), fixed step only.

    Diffrax ships no classical RK4; this is its explicit Runge-Kutta machinery with the
    classical Butcher tableau, so it is differentiable and batchable like any diffrax
    solver.
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        del terms
        return 4


class Resolvent(eqx.Module):
    """Flow map ``x(t0 + steps_per_cycle * dt) = M(x(t0))`` of a dynamics over one cycle.

    **Arguments:**

    - `dynamics`: any [`hybridda.dynamics.AbstractDynamics`][] (or hybrid model).
    - `dt`: integration step (the initial step for adaptive solvers).
    - `steps_per_cycle`: number of steps of size `dt` per DA cycle (static).
    - `solver`: a diffrax solver; default classical fixed-step [`RK4`][]. Adaptive
      solvers (`diffrax.Tsit5()`, `diffrax.Dopri5()`) switch on a PID step-size
      controller with tolerances `rtol`, `atol`.
    - `max_steps`: step budget for adaptive solvers.
    - `adjoint`: ``None`` (default) or a diffrax adjoint to force `diffrax.diffeqsolve`.
      By default fixed-step explicit Runge-Kutta solvers (RK4, or any `AbstractERK`
      used with a constant step) run their Butcher tableau in a `lax.scan` over the
      steps: the same scheme, equal to round-off (the stages are unrolled for small
      vector fields and a scan for large ones such as the QG model, whose compile time
      this halves; see `SCAN_STAGES_MIN_OPERATIONS`), and forward-mode (`jax.jvp`,
      tangent-linear models, Gauss-Newton) and reverse-mode derivatives each cost a few
      forward passes. Adaptive solvers call
      `diffeqsolve` with `diffrax.RecursiveCheckpointAdjoint()` (reverse mode only);
      other fixed-step solvers with `diffrax.DirectAdjoint()`.

    The cycle length is ``dt * steps_per_cycle``. Works under `jit`, `vmap` and `grad`.
    """

    dynamics: AbstractDynamics
    dt: float = eqx.field(static=True, default=0.05)
    steps_per_cycle: int = eqx.field(static=True, default=1)
    solver: diffrax.AbstractSolver = RK4()
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: diffrax.AbstractAdjoint | None = None

    def __check_init__(self):
        require_positive("dt", self.dt, "Pass the integration step, e.g. dt=0.05.")
        if not isinstance(self.steps_per_cycle, int) or self.steps_per_cycle < 1:
            raise ValueError(
                f"`steps_per_cycle` must be a positive integer, got {self.steps_per_cycle}."
            )

    @property
    def cycle_length(self) -> float:
        """Model time covered by one cycle."""
        return self.dt * self.steps_per_cycle

    @property
    def state_size(self) -> int:
        return self.dynamics.state_size

    def _solve(self, vector_field, x, t0):
        # Integrate in cycle-local time [0, cycle_length] and shift t inside the vector
        # field: the step grid is a compile-time constant (exactly `steps_per_cycle`
        # steps) and non-autonomous models still see the true time.
        field = _TimeShifted(vector_field, jnp.asarray(t0, dtype=float))
        if self.adjoint is None and _tableau(self.solver) is not None:
            return _fixed_step_erk(field, x, self.dt, self.steps_per_cycle, _tableau(self.solver))
        adaptive = _is_adaptive(self.solver)
        if adaptive:
            controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
            t1, dt0, max_steps = self.cycle_length, self.dt, self.max_steps
        else:
            grid = self.dt * np.arange(self.steps_per_cycle + 1)
            controller = diffrax.StepTo(ts=grid)
            t1, dt0, max_steps = float(grid[-1]), None, self.steps_per_cycle
        adjoint = self.adjoint
        if adjoint is None:
            # DirectAdjoint supports forward mode (jax.jvp) too; the checkpointed one does not.
            adjoint = diffrax.RecursiveCheckpointAdjoint() if adaptive else diffrax.DirectAdjoint()
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            self.solver,
            t0=0.0,
            t1=t1,
            dt0=dt0,
            y0=x,
            stepsize_controller=controller,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
            adjoint=adjoint,
        )
        return solution.ys[0]

    def __call__(
        self, x: Float[Array, " n"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, " n"]:
        """Integrate one state over one cycle starting at time `t0`."""
        return self._solve(self.dynamics, x, t0)

    def ensemble(
        self, E: Float[Array, "N n"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, "N n"]:
        """Integrate every member (row) of an ensemble over one cycle.

        With a fixed step the whole ensemble is one ODE with a batched vector field
        (one solve, identical to a `vmap` of `__call__`); adaptive solvers `vmap` so
        that each member keeps its own step sizes.
        """
        if _is_adaptive(self.solver):
            return jax.vmap(lambda x: self(x, t0))(E)
        return self._solve(_EnsembleTendency(self.dynamics), E, t0)

    def trajectory(
        self, x: Float[Array, " n"], cycles: int, t0: float = 0.0
    ) -> Float[Array, "cycles_plus_one n"]:
        """States at the start and at the end of each of `cycles` cycles (a `lax.scan`)."""

        def step(state, k):
            state = self(state, t0 + k * self.cycle_length)
            return state, state

        _, states = jax.lax.scan(step, x, jnp.arange(cycles))
        return jnp.concatenate([x[None], states])


class _TimeShifted(eqx.Module):
    """``f(t + offset, y, args)``: a vector field in cycle-local time."""

    vector_field: eqx.Module
    offset: Float[Array, ""]

    def __call__(self, t, y, args):
        return self.vector_field(t + self.offset, y, args)


class _EnsembleTendency(eqx.Module):
    """The tendency of every member of an ensemble (a module, so parameters stay leaves)."""

    dynamics: AbstractDynamics

    def __call__(self, t, E, args):
        return jax.vmap(self.dynamics.tendency, in_axes=(None, 0, None))(t, E, args)


def _tableau(solver) -> diffrax.ButcherTableau | None:
    """The Butcher tableau of a fixed-step explicit Runge-Kutta solver, else ``None``."""
    if _is_adaptive(solver) or not isinstance(solver, diffrax.AbstractERK):
        return None
    tableau = solver.tableau
    return None if tableau.implicit else tableau


# A vector field whose program has at least this many operations (nested ones counted)
# gets its Runge-Kutta stages in a `lax.scan`; smaller ones are unrolled. Measured:
# Lorenz-63/96, two-scale, multi-layer Lorenz and MAOOAM have 10-53 operations, the QG
# model 327. See `_fixed_step_erk`. The two forms agree to round-off, not bit for bit: a
# hybrid whose correction pushes a small model past the threshold (a large network) is
# no longer bitwise equal to its physical model with a zero correction.
SCAN_STAGES_MIN_OPERATIONS = 150


def _program_size(jaxpr) -> int:
    """Operations in a jaxpr, those of nested jaxprs (loops, custom derivatives) included."""
    size = 0
    for equation in jaxpr.eqns:
        size += 1
        for value in equation.params.values():
            for item in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    size += _program_size(inner)
    return size


def _fixed_step_erk(field, x, dt, steps, tableau):
    """``steps`` explicit Runge-Kutta steps of size ``dt`` from the solver's tableau.

    The steps are a `lax.scan`. The stages within a step are unrolled for small vector
    fields and a `lax.scan` for large ones (at least `SCAN_STAGES_MIN_OPERATIONS`
    operations): stage ``i`` evaluates ``k_i = f(t + c_i dt, y + dt Σ_j a_ij k_j)`` from
    the stages stored so far, so the vector field appears once in the compiled program,
    not once per stage. XLA's compile time grows with the program: for the QG model
    (FFT inversion, Arakawa Jacobian) with its tangent-linear and adjoint inside
    incremental 4D-Var, unrolled stages took twice as long to compile (measured:
    `paper/farchi2021_qg_correction.py --quick`, the cycled 4D-Var program 21 s -> 11 s).
    For small fields the scan costs run time instead (measured, Lorenz-96 n = 40: a
    4D-Var cost 0.11 -> 0.18 ms, the gradient of 100 ETKF cycles 16 -> 21 ms).

    Either way it is the scheme of `diffrax.diffeqsolve` with that solver and a constant
    step, equal to round-off, but with no loop machinery for autodiff to see through, so
    a tangent-linear (`jax.linearize`) or adjoint pass costs a few forward passes, not
    ~25 as through diffeqsolve's bounded while loops (measured on Lorenz-63, 25 RK4
    steps).
    """
    c = np.concatenate([[0.0], tableau.c])
    size = _program_size(jax.make_jaxpr(lambda y: field(0.0, y, None))(x).jaxpr)
    if size >= SCAN_STAGES_MIN_OPERATIONS:
        step = _scanned_stages_step(field, dt, tableau, c, x.dtype)
    else:

        def step(y, t):
            stages = [field(t, y, None)]
            for i, a in enumerate(tableau.a_lower):
                increment = sum(coef * stage for coef, stage in zip(a, stages, strict=True) if coef)
                stages.append(field(t + c[i + 1] * dt, y + dt * increment, None))
            y = y + dt * sum(b * stage for b, stage in zip(tableau.b_sol, stages, strict=True) if b)
            return y, None

    if steps == 1:
        return step(x, 0.0)[0]
    return jax.lax.scan(step, x, dt * jnp.arange(steps, dtype=float))[0]


def _scanned_stages_step(field, dt, tableau, c, dtype):
    """One Runge-Kutta step whose stages are a `lax.scan` (see `_fixed_step_erk`)."""
    stages = len(c)
    a = np.zeros((stages, stages))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : len(row)] = row
    a, b = jnp.asarray(a, dtype=dtype), jnp.asarray(tableau.b_sol, dtype=dtype)
    c = jnp.asarray(c)

    def step(y, t):
        def stage(k, i):
            y_i = y + dt * jnp.tensordot(a[i], k, axes=1)
            return k.at[i].set(field(t + c[i] * dt, y_i, None)), None

        k = jax.lax.scan(stage, jnp.zeros((stages, *y.shape), y.dtype), np.arange(stages))[0]
        return y + dt * jnp.tensordot(b, k, axes=1), None

    return step


def _is_adaptive(solver: diffrax.AbstractSolver) -> bool:
    return isinstance(solver, diffrax.AbstractAdaptiveSolver) and not isinstance(solver, RK4)
