"""Minimisers for variational cost functionals (any module with ``__call__``/``residuals``).

All run a fixed maximum number of iterations inside `lax.scan` (iterations after
convergence are no-ops), so they jit once, vmap, and can be differentiated through;
each returns a [`MinimiseResult`][] with the cost after every iteration and whether the
stopping criterion was met — non-convergence is reported, never silent.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree


class MinimiseResult(eqx.Module):
    """Outcome of a minimisation.

    - `control`: the minimiser (same pytree structure as the start).
    - `costs`: cost at the start and after each iteration, shape ``(max_iterations + 1,)``
      (constant after convergence).
    - `iterations`: iterations actually taken; `converged`: the criterion was met.
    """

    control: PyTree
    costs: Float[Array, " iterations_plus_one"]
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]


def _check_cost(value, iteration, what, throw=True):
    if not throw:
        return value
    return eqx.error_if(
        value,
        ~jnp.isfinite(value),
        f"The {what} cost became non-finite during the minimisation (NaN or inf); check the "
        "observations, covariances and the model's stability over the window.",
    )


def _preconditioned(cost, control):
    """Work in the whitened control ``v`` when the cost offers the transform.

    With ``x0 = x_b + B^{1/2} v`` (and ``η = Q^{1/2} ζ``) the background (and model-error)
    terms become ``½‖v‖²``: the Gauss-Newton Hessian is ``I + GᵀG``, well conditioned
    even for tiny ``Q`` (the standard 4D-Var control-variable transform).

    Returns ``(white_control, colour, residuals)``: the starting point in the minimiser's
    variable, the map back to the cost's control, and the whitened residuals as a
    function of the minimiser's variable (``J = ½‖residuals‖²``; `None` for a cost
    without `residuals`). The square roots of ``B`` (and ``Q``) are factorised once here,
    not at every evaluation.
    """
    if hasattr(cost, "control_factors"):
        factors = cost.control_factors()
        return (
            cost.whiten_control(control, factors),
            lambda white: cost.colour_control(white, factors),
            lambda white: cost.whitened_residuals(white, factors),
        )
    residuals = getattr(cost, "residuals", None)
    return control, lambda v: v, residuals


def gauss_newton(
    cost,
    control: PyTree,
    *,
    max_iterations: int = 10,
    tolerance: float = 1e-8,
    inner_iterations: int = 100,
    inner_rtol: float = 1e-10,
    throw: bool = True,
) -> MinimiseResult:
    """Gauss-Newton on ``J = ½‖r(control)‖²`` (`cost.residuals`), matrix-free.

    Each (outer) iteration linearises the residuals at the current control and solves
    the normal equations ``Jᵀ J δ = -Jᵀ r`` with Lineax conjugate gradients, whose
    operator is a Jacobian-vector product followed by its transpose (`jax.linearize`,
    `jax.linear_transpose`): no dense Jacobian. It stops when the step ``max|δ|`` falls
    below ``tolerance × (1 + max|control|)`` (whitened units) or the cost stops
    changing beyond round-off.

    **Arguments:**

    - `cost`: a module with `residuals(control)` and `__call__(control)`.
    - `control`: starting point (any pytree, e.g. ``x0`` or ``(x0, forcing)``).
    - `max_iterations`: outer loops; `inner_iterations`, `inner_rtol`: CG budget and
      relative tolerance per outer loop (a truncated inner solve is allowed).
    - `throw`: raise (under jit, `eqx.error_if`) when the cost becomes non-finite; with
      ``False`` the NaN is returned in `costs` for the caller to report.

    Costs with `whiten_control` / `colour_control` (the 4D-Var costs) are minimised in
    the whitened control (preconditioning); the result is returned in physical units.
    A step that does not decrease the cost is rejected and stops the iteration, with
    ``converged=False`` unless the change was below the tolerance (round-off).
    """
    white, colour, white_residuals = _preconditioned(cost, control)
    flat0, unravel = ravel_pytree(white)

    def residuals(flat):
        return white_residuals(unravel(flat))

    def iterate(carry, iteration):
        flat, value, done, stopped = carry
        r, jvp = jax.linearize(residuals, flat)
        vjp = jax.linear_transpose(jvp, flat)
        normal = lx.FunctionLinearOperator(
            lambda v: vjp(jvp(v))[0],
            jax.ShapeDtypeStruct(flat.shape, flat.dtype),
            lx.positive_semidefinite_tag,
        )
        gradient = vjp(r)[0]
        # Lineax scales tolerances elementwise (atol + rtol |b_i|): with atol = 0 a zero
        # entry of b (an unobserved, uncoupled component) reads as converged at once.
        atol = inner_rtol * jnp.max(jnp.abs(jax.lax.stop_gradient(gradient)))
        atol = atol + jnp.finfo(flat.dtype).tiny
        solver = lx.CG(rtol=inner_rtol, atol=atol, max_steps=inner_iterations)
        delta = lx.linear_solve(normal, -gradient, solver, throw=False).value
        candidate = flat + delta
        new_value = 0.5 * jnp.sum(residuals(candidate) ** 2)
        new_value = _check_cost(new_value, iteration, "4D-Var", throw)
        # Accept only a decrease (Gauss-Newton can overshoot on strongly nonlinear
        # windows); a rejected step stops the iteration without claiming convergence.
        accept = (new_value <= value) & ~stopped
        # Converged when the step is small relative to the (whitened) control, or the
        # cost no longer changes beyond round-off.
        small = (jnp.max(jnp.abs(delta)) <= tolerance * (1 + jnp.max(jnp.abs(flat)))) | (
            jnp.abs(value - new_value) <= 1e3 * jnp.finfo(flat.dtype).eps * jnp.abs(value)
        )
        flat = jnp.where(accept, candidate, flat)
        done = done | (small & ~stopped)
        stopped = stopped | done | ~accept
        value = jnp.where(accept, new_value, value)
        return (flat, value, done, stopped), (value, accept)

    def step(carry, iteration):
        # Once stopped, skip the work (a cond: cheap unless vmapped, and differentiable).
        return jax.lax.cond(
            carry[3],
            lambda carry, _: (carry, (carry[1], jnp.asarray(False))),
            iterate,
            carry,
            iteration,
        )

    value0 = _check_cost(0.5 * jnp.sum(residuals(flat0) ** 2), 0, "4D-Var", throw)
    false = jnp.asarray(False)
    carry = (flat0, value0, false, false)
    (flat, _, converged, _), (values, accepted) = jax.lax.scan(
        step, carry, jnp.arange(max_iterations)
    )
    return MinimiseResult(
        control=colour(unravel(flat)),
        costs=jnp.concatenate([value0[None], values]),
        iterations=jnp.sum(accepted),
        converged=converged,
    )


def incremental(
    cost,
    control: PyTree,
    *,
    outer_loops: int = 3,
    inner_loops: int = 20,
    tolerance: float = 1e-8,
    throw: bool = True,
) -> MinimiseResult:
    """Incremental 4D-Var (Courtier et al. 1994): re-linearise, then a truncated inner solve.

    Each outer loop linearises the model trajectory and the observation operators around
    the current estimate (tangent-linear by `jax.jvp`, adjoint by its transpose) and
    minimises the resulting quadratic cost in the increment with at most `inner_loops`
    conjugate-gradient iterations. This is Gauss-Newton with a truncated inner solve; the
    result's `costs` are the non-linear cost after each outer loop; `converged` says
    whether the last outer loops met Gauss-Newton's criterion (`tolerance`).
    """
    return gauss_newton(
        cost,
        control,
        max_iterations=outer_loops,
        tolerance=tolerance,
        inner_iterations=inner_loops,
        inner_rtol=1e-12,
        throw=throw,
    )


def quasi_newton(
    cost: Callable,
    control: PyTree,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-8,
    memory: int = 10,
    throw: bool = True,
) -> MinimiseResult:
    """L-BFGS (`optax.lbfgs` with a zoom line search) on ``cost(control)``.

    Stops when the gradient's max-norm falls below `tolerance` × max(1, |J|).
    """
    control, colour, white_residuals = _preconditioned(cost, control)

    def objective(white):
        if hasattr(cost, "control_factors"):  # whitened: no triangular solve for J_b
            return 0.5 * jnp.sum(white_residuals(white) ** 2)
        return cost(white)

    optimiser = optax.lbfgs(memory_size=memory)
    value_and_grad = optax.value_and_grad_from_state(objective)

    def iterate(carry, iteration):
        params, state, done = carry
        value, grad = value_and_grad(params, state=state)
        value = _check_cost(value, iteration, "variational", throw)
        gnorm = optax.tree.norm(grad, ord=jnp.inf)
        converged = done | (gnorm <= tolerance * jnp.maximum(1.0, jnp.abs(value)))
        updates, new_state = optimiser.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(converged, b, a), new, old)  # noqa: E731
        return (keep(new_params, params), keep(new_state, state), converged), (value, ~converged)

    def step(carry, iteration):
        def skip(carry, _):
            return carry, (objective(carry[0]), jnp.asarray(False))

        return jax.lax.cond(carry[2], skip, iterate, carry, iteration)

    state0 = optimiser.init(control)
    carry = (control, state0, jnp.asarray(False))
    (params, _, converged), (values, moved) = jax.lax.scan(step, carry, jnp.arange(max_iterations))
    final = _check_cost(objective(params), max_iterations, "variational", throw)
    return MinimiseResult(
        control=colour(params),
        costs=jnp.concatenate([values, final[None]]),
        iterations=jnp.sum(moved),
        converged=converged,
    )
