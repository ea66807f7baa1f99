"""The M-step of expectation-maximisation for a parametric model with additive model error.

With the model ``x_{k+1} = M_θ(x_k) + η_k``, ``η_k ~ N(0, Q)``, and samples of the
smoothing posterior of the transitions ``(x_k, x_{k+1})`` (e.g. the members of
[`hybridda.filters.ensemble_smoother`][]), the M-step maximises the expected complete
log-likelihood: ``θ`` minimises the weak-constraint model term
``½ Σ ‖x_{k+1} - M_θ(x_k)‖²_{Q⁻¹}`` ([`TransitionFit`][], a cost for
[`hybridda.variational.gauss_newton`][]) and ``Q`` is the mean outer product of the
residuals ([`model_error_variance`][]) (Bocquet, Brajard, Carrassi and Bertino 2020,
section 3).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from .._checks import as_float_array


def _residuals(model, states, next_states):
    """``x_{k+1} - M(x_k)`` for every row (autonomous one-cycle model)."""
    return next_states - model.ensemble(states, 0.0)


def model_error_variance(
    model,
    states: Float[Array, "M n"] | Float[Array, "K N n"],
    next_states: Float[Array, "M n"] | Float[Array, "K N n"],
    *,
    diagonal: bool = False,
) -> Float[Array, "*n"]:
    r"""The EM update of ``Q``: the expected square of ``x_{k+1} - M(x_k)`` under the samples.

    ``Q = (1/K) Σ_k E[(x_{k+1} - M(x_k))(x_{k+1} - M(x_k))ᵀ]``, restricted to a scalar
    variance ``q`` (``Q = q I``, mean over transitions and variables; default) or to its
    diagonal (`diagonal`, one variance per variable) (Bocquet et al. 2020, section 3;
    Shumway and Stoffer 1982). The expectation is over the smoothing posterior of each
    pair, so its spread enters: the smoothed means alone underestimate ``Q``.

    - Samples ``(M, n)``: the expectation is the mean over all rows.
    - Ensembles ``(K, N, n)`` (transition ``k``, member ``i``, as
      [`hybridda.filters.SmootherOutput`][]'s `transition_start` / `transition_end`):
      per transition, the squared mean residual plus the ensemble's unbiased variance
      (``1/(N-1)``, the covariance the ensemble filter itself represents), so that a
      small ensemble does not shrink ``Q`` by ``(N-1)/N``.

    **Arguments:**

    - `model`: one cycle ``x -> x`` with an `ensemble(E, t0)` method (a
      [`hybridda.Resolvent`][]); autonomous (called at ``t0 = 0``).
    - `states`, `next_states`: samples of ``x_k`` and ``x_{k+1}``, ``(M, n)`` or
      ``(K, N, n)`` with ``N ≥ 2``.
    - `diagonal`: return ``(n,)`` variances instead of one scalar.
    """
    if (
        states.ndim not in (2, 3)
        or states.shape != next_states.shape
        or states.shape[0] < 1
        or (states.ndim == 3 and states.shape[1] < 2)
    ):
        raise ValueError(
            "`states` and `next_states` must have the same shape, (samples >= 1, n) or "
            f"(transitions >= 1, members >= 2, n), got {states.shape} and {next_states.shape}."
        )
    if states.ndim == 2:
        squared = _residuals(model, states, next_states) ** 2
    else:
        K, N, n = states.shape
        residuals = _residuals(
            model, states.reshape(K * N, n), next_states.reshape(K * N, n)
        ).reshape(K, N, n)
        squared = residuals.mean(axis=1) ** 2 + residuals.var(axis=1, ddof=1)
    return squared.mean(axis=0) if diagonal else squared.mean()


class TransitionFit(eqx.Module):
    r"""``J(θ) = ½ Σ_k ‖x_{k+1} - M_θ(x_k)‖²_{Q⁻¹}``: the weak-constraint model term in ``θ``.

    The M-step of EM for the parameters ``θ`` of a model (Bocquet et al. 2020, eq. 13),
    as a cost with `residuals` so that [`hybridda.variational.gauss_newton`][]
    minimises it matrix-free. ``Q = diag(variance)`` (a scalar broadcast to every
    variable, or one per variable).

    **Arguments:**

    - `model`: one cycle with `ensemble(E, t0)` (autonomous), holding the parameters.
    - `where`: ``model -> θ`` (the pytree that is fitted), as for `eqx.tree_at`.
    - `states`, `next_states`: ``(M, n)`` samples of the transitions.
    - `model_error_variance`: ``q`` > 0, scalar or ``(n,)``; default 1.
    """

    model: eqx.Module
    where: Callable = eqx.field(static=True)
    states: Float[Array, "M n"]
    next_states: Float[Array, "M n"]
    model_error_variance: Float[Array, "*n"] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        if self.states.ndim != 2 or self.states.shape != self.next_states.shape:
            raise ValueError(
                "`states` and `next_states` must have the same shape (samples, n), got "
                f"{self.states.shape} and {self.next_states.shape}."
            )
        if self.model_error_variance.shape not in ((), (self.states.shape[1],)):
            raise ValueError(
                "`model_error_variance` must be a scalar or have one entry per variable "
                f"({self.states.shape[1]}), got shape {self.model_error_variance.shape}."
            )

    def parameters(self) -> PyTree:
        """The current ``θ`` (a starting point for the minimiser)."""
        return self.where(self.model)

    def with_parameters(self, parameters: PyTree):
        """The model with ``θ`` replaced."""
        return eqx.tree_at(self.where, self.model, parameters)

    def residuals(self, parameters: PyTree) -> Float[Array, " m"]:
        """Whitened residuals ``Q^{-1/2}(x_{k+1} - M_θ(x_k))``, flattened."""
        residuals = _residuals(self.with_parameters(parameters), self.states, self.next_states)
        scale = jnp.broadcast_to(jnp.sqrt(self.model_error_variance), residuals.shape[-1:])
        return (residuals / scale[None, :]).ravel()

    def __call__(self, parameters: PyTree) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.residuals(parameters) ** 2)


def fit_transitions(
    cost: TransitionFit, *, iterations: int = 5, chunk: int = 4096, damping: float = 1e-10
) -> tuple[PyTree, Float[Array, " iterations_plus_one"]]:
    r"""Minimise a [`TransitionFit`][] by Gauss-Newton with its dense normal equations.

    For models with few parameters (tens; a quadratic-monomial surrogate has 18 or 30)
    the Jacobian is formed by forward mode, `chunk` samples at a time (``JᵀJ`` and
    ``Jᵀr`` are accumulated in a `lax.scan`, so memory does not grow with the data),
    and the small system ``(JᵀJ + δ diag(JᵀJ)) Δθ = -Jᵀr`` is solved by Cholesky; a
    step that does not lower the cost is halved (up to 10 times), so the cost never
    increases. Much faster than matrix-free CG there: one pass over the data per
    iteration instead of two per CG step.

    **Returns:** the fitted parameters and the cost before and after each iteration.
    """

    theta0 = cost.parameters()
    flat0, unravel = ravel_pytree(theta0)
    samples = cost.states.shape[0]
    chunk = min(chunk, samples)
    blocks = -(-samples // chunk)
    pad = blocks * chunk - samples
    # Pad by repeating the first sample with zero weight (static shapes per block).
    weights = jnp.concatenate([jnp.ones(samples), jnp.zeros(pad)]).reshape(blocks, chunk)
    states = jnp.concatenate([cost.states, jnp.repeat(cost.states[:1], pad, 0)])
    following = jnp.concatenate([cost.next_states, jnp.repeat(cost.next_states[:1], pad, 0)])
    states = states.reshape(blocks, chunk, -1)
    following = following.reshape(blocks, chunk, -1)

    def block_residuals(flat, x, x_next, w):
        part = eqx.tree_at(lambda c: (c.states, c.next_states), cost, (x, x_next))
        return part.residuals(unravel(flat)).reshape(chunk, -1) * jnp.sqrt(w)[:, None]

    def normal_equations(flat):
        def accumulate(carry, inputs):
            JtJ, Jtr, value = carry
            r, jvp = jax.linearize(lambda f: block_residuals(f, *inputs).ravel(), flat)
            J = jax.vmap(jvp, out_axes=1)(jnp.eye(flat.size, dtype=flat.dtype))
            return (JtJ + J.T @ J, Jtr + J.T @ r, value + 0.5 * r @ r), None

        zero = jnp.zeros((), flat.dtype)
        init = (jnp.zeros((flat.size, flat.size), flat.dtype), jnp.zeros_like(flat), zero)
        return jax.lax.scan(accumulate, init, (states, following, weights))[0]

    def total_cost(flat):
        def one(value, inputs):
            r = block_residuals(flat, *inputs)
            return value + 0.5 * jnp.sum(r**2), None

        value = jax.lax.scan(one, jnp.zeros((), flat.dtype), (states, following, weights))[0]
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    def iterate(flat, _):
        JtJ, Jtr, value = normal_equations(flat)
        matrix = JtJ + damping * jnp.diag(jnp.diag(JtJ)) + jnp.finfo(flat.dtype).tiny
        step = -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(matrix), Jtr)

        def halve(carry):
            scale, _ = carry
            return scale / 2, total_cost(flat + scale / 2 * step)

        def worse(carry):
            scale, new = carry
            return (new > value) & (scale > 2.0**-10)

        scale, new = jax.lax.while_loop(worse, halve, (1.0, total_cost(flat + step)))
        flat = jnp.where(new <= value, flat + scale * step, flat)
        return flat, jnp.minimum(new, value)

    flat, costs = jax.lax.scan(iterate, flat0, None, length=iterations)
    return unravel(flat), jnp.concatenate([cost(theta0)[None], costs])
