r"""Online learning with 4D-Var: the model's parameters in every window's control.

Farchi et al. (2021, J. Comput. Sci., section 5; 2023, JAMES) learn a model-error
correction *online*: each window of ``L`` cycles minimises the 4D-Var cost over the
initial state (weak-constraint: and the model errors) **and** the network's
parameters ``θ``,

$$J_w(x_0, θ) = J^\text{4D-Var}_w(x_0;\ M_θ) + \tfrac12\|θ - θ_{w-1}\|^2_{P^{-1}},$$

([`hybridda.variational.WithModelParameters`][]) with the previous window's estimate
``θ_{w-1}`` as the parameter background and ``P = diag(σ_w²)`` the confidence one window
has in it. The analysis at the window's end is the next window's background. The
parameters improve every time new observations arrive; nothing is stored but the
current ``(x_b, θ)``.

With a constant ``σ_w = σ`` (the papers' choice) ``θ`` is a random walk driven by each
window's observation noise: over long runs it keeps wandering, and in directions the
observations constrain weakly it drifts away (measured on the QG channel of
`paper/farchi2023_qg_online.py`: the learnt share of the model error rises, then
collapses after some hundred windows). ``parameter_std_decay = w₀`` shrinks it as
a static parameter's uncertainty shrinks when equally informative windows accumulate,
``σ_w = σ / √(1 + w / w₀)`` (a Kalman filter with an isotropic parameter covariance;
also the Robbins-Monro step ``∝ 1/w`` of stochastic approximation).

``accumulate_information = True`` shrinks ``σ`` per parameter instead, by what the
windows have actually told about each one: the information (precision) of a static
parameter adds up over independent windows, and keeping its diagonal,

$$P_{w+1}^{-1} = P_w^{-1} + κ \, \operatorname{diag}(J_wᵀ J_w), \qquad P_0^{-1} = σ^{-2},$$

where ``J_w`` is the Jacobian, with respect to ``θ`` at window ``w``'s analysis, of its
whitened residuals (the Gauss-Newton Hessian of its observation term). Parameters the
observations constrain stop moving sooner than those they do not (the Kalman filter of a
static parameter with a diagonal covariance; the diagonal Gauss-Newton preconditioner
of online natural-gradient methods). The state-parameter cross terms are ignored, which
overstates the information; ``κ`` (`information_scale`) scales it. The diagonal is
exact (one Jacobian-vector product per parameter) or estimated with Hutchinson's
Rademacher probes (one vector-Jacobian product each) for large networks.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

from .._checks import require_positive
from .._parameters import check_learnt, partition_learnt
from ..observe import AbstractObservation
from ..variational import FourDVar, WithModelParameters


class OnlineState(NamedTuple):
    """What one call of [`online_fourdvar`][] hands to the next (checkpoint it between
    chunks).

    - `background`: ``(n,)`` the next window's background (the last analysis's end).
    - `parameters`: ``(q,)`` ``θ`` after the last window.
    - `parameter_precision`: ``(q,)`` the diagonal of ``P⁻¹`` for the next window when
      information is accumulated, else ``None``.
    """

    background: Float[Array, " n"]
    parameters: Float[Array, " q"]
    parameter_precision: Float[Array, " q"] | None


class OnlineWindows(NamedTuple):
    """What [`online_fourdvar`][] records for each of ``W`` windows.

    - `analysis_end`: ``(W, n)`` the analysed state at the window's end (the next
      window's background).
    - `cost_before`, `cost_after`: ``(W,)`` the window's cost at the background
      (``(x_b, θ_{w-1})``) and after the minimisation.
    - `parameter_step`: ``(W,)`` the rms whitened parameter increment
      ``‖(θ_w - θ_{w-1}) / σ‖ / √q``: how far the window moved ``θ``, in prior stds.
    - `converged`: ``(W,)`` whether the minimiser met its stopping criterion.
    """

    analysis_end: Float[Array, "W n"]
    cost_before: Float[Array, " W"]
    cost_after: Float[Array, " W"]
    parameter_step: Float[Array, " W"]
    converged: Bool[Array, " W"]


def online_fourdvar(
    method: FourDVar,
    model: PyTree,
    observation: AbstractObservation,
    background: Float[Array, " n"],
    y_windows: Float[Array, "W L p"],
    *,
    where: Callable | None,
    parameter_std: Float[ArrayLike, "*q"],
    parameters: Float[Array, " q"] | None = None,
    first_window: int | Array = 0,
    first_cycle_offset: int = 0,
    parameter_std_decay: float | None = None,
    accumulate_information: bool = False,
    parameter_precision: Float[Array, " q"] | None = None,
    information_scale: float = 1.0,
    information_probes: int | None = None,
    key: PRNGKeyArray | None = None,
) -> tuple[OnlineState, OnlineWindows]:
    r"""``W`` consecutive windows of online 4D-Var, one `lax.scan` (jit-compiled).

    Window ``w`` (global index ``first_window + w``) starts at cycle
    ``c_w = (first_window + w) L`` and time ``c_w × model.cycle_length``; it minimises
    `method`'s window cost ([`FourDVar.window_cost`][]: strong, or weak-constraint with
    its ``Q``; its ``B``) over the state and ``θ`` with `method`'s minimiser, loops and
    tolerance, with ``y_windows[w]`` observed by
    ``observation.at_cycle(c_w + first_cycle_offset + k)``, ``k = 0 .. L-1``.

    Long runs go in chunks: pass the returned ``(background, θ)`` and
    ``first_window + W`` to the next call (checkpoint between calls, e.g. with
    [`hybridda.checkpoint.resume_or_init`][]); the chunks compose exactly into one run.

    **Arguments:**

    - `method`: a [`hybridda.variational.FourDVar`][] with ``shift == window`` (the
      windows follow each other) and no hybrid ensemble ``B``.
    - `model`: the one-cycle model holding the learnt leaves (e.g. a
      [`hybridda.ResolventCorrection`][]); its values of the learnt leaves are ignored
      when `parameters` is given.
    - `observation`, `background`: the operator, and ``x_b`` of the first window.
    - `y_windows`: ``(W, L, p)``, each window's observations (NaN: unobserved).
    - `where`: selects the learnt leaves of `model` as in `equinox.tree_at`
      (``lambda m: m.correction.network``; ``None``: every floating-point array).
    - `parameter_std`: ``σ > 0``, scalar or one per parameter (in the order of θ).
    - `parameter_std_decay`: ``None`` (default: the same ``σ`` in every window) or
      ``w₀ > 0``: window ``w`` (global index) uses ``σ / √(1 + w / w₀)``, so the
      prior variance halves after ``w₀`` windows, a third after ``2 w₀``, ....
    - `accumulate_information`: shrink ``σ`` per parameter by the accumulated diagonal
      Gauss-Newton information (module docstring); exclusive with the decay.
    - `parameter_precision`: ``(q,)`` the diagonal of ``P⁻¹`` of the first window (to
      continue a chunked run: the returned one); default ``1 / σ²``.
    - `information_scale`: ``κ > 0``, the weight of each window's information.
    - `information_probes`: ``None`` (default): the exact diagonal, one
      Jacobian-vector product per parameter (small ``q``); ``K``: Hutchinson's estimate
      ``mean_k (J_wᵀ v_k)²`` with ``K`` Rademacher probes ``v_k``, drawn from
      ``fold_in(key, w)`` (global window index ``w``: chunks compose exactly).
    - `key`: a `jax.random` key, required with `information_probes`.
    - `parameters`: ``θ`` before the first window (default: `model`'s own).
    - `first_window`: global index of the first window; `first_cycle_offset`: shift
      of the observation cycles (e.g. 1 when ``y[k]`` observes the state after ``k``
      cycles from an initial time 0 that is never observed).

    Returns ``(state, records)``: the [`OnlineState`][] after the last window (next
    background, ``θ``, and the accumulated precision) and the [`OnlineWindows`][]
    records.

    !!! cite "References"
        Farchi, Bocquet, Laloyaux, Bonavita and Malartic (2021), A comparison of combined
        data assimilation and machine learning methods for offline and online model
        error correction, *J. Comput. Sci.* 55, 101468.
        Farchi, Chrust, Bocquet, Laloyaux and Bonavita (2023), Online model error
        correction with neural networks in the incremental 4D-Var framework, *J. Adv.
        Model. Earth Syst.* 15, e2022MS003474.
    """
    check_online_method(method, y_windows)
    check_learnt(model, where)
    # Checked here, while concrete: inside the compiled scan it would only give NaNs.
    require_positive("parameter_std", parameter_std, "It is the parameters' prior std σ > 0.")
    if parameter_std_decay is not None:
        require_positive(
            "parameter_std_decay",
            parameter_std_decay,
            "It is the number of windows w₀ after which σ² has halved; None keeps σ constant.",
        )
    if parameters is None:
        parameters = partition_learnt(model, where)[0]
    parameters = jnp.asarray(parameters)
    sigma = jnp.asarray(parameter_std, dtype=jnp.result_type(float))
    information = None
    if accumulate_information:
        if parameter_std_decay is not None:
            raise ValueError(
                "Pass either `parameter_std_decay` or `accumulate_information`: both shrink "
                "σ over the windows."
            )
        require_positive(
            "information_scale",
            information_scale,
            "It is the weight κ > 0 of each window's information.",
        )
        if information_probes is not None:
            if int(information_probes) < 1:
                raise ValueError(
                    f"`information_probes` must be >= 1 (or None: the exact diagonal), got "
                    f"{information_probes}."
                )
            if key is None:
                raise ValueError(
                    "`information_probes` draws Rademacher probes: pass `key` (a jax.random key)."
                )
        if parameter_precision is None:
            parameter_precision = jnp.broadcast_to(1.0 / sigma**2, parameters.shape)
        parameter_precision = jnp.asarray(parameter_precision, dtype=sigma.dtype)
        if parameter_precision.shape != parameters.shape:
            raise ValueError(
                f"`parameter_precision` must have shape {parameters.shape} (one per parameter), "
                f"got {parameter_precision.shape}."
            )
        require_positive(
            "parameter_precision",
            parameter_precision,
            "It is the diagonal of P⁻¹, > 0 (the returned state's).",
        )
        probes = None if information_probes is None else int(information_probes)
        information = (parameter_precision, float(information_scale), probes, key)
    elif parameter_precision is not None or information_probes is not None or key is not None:
        raise ValueError(
            "`parameter_precision`, `information_probes` and `key` are used only with "
            "`accumulate_information=True`."
        )
    (background, theta, precision), records = _online_scan(
        method,
        model,
        observation,
        jnp.asarray(background),
        parameters,
        sigma,
        y_windows,
        jnp.asarray(first_window),
        where,
        first_cycle_offset,
        None if parameter_std_decay is None else float(parameter_std_decay),
        information,
    )
    return OnlineState(background, theta, precision), records


def check_online_method(method, y_windows) -> None:
    """Raise unless `method` is a FourDVar the online windows can carry (consecutive
    windows, static ``B``) and `y_windows` is ``(W, L, p)`` for its window ``L``."""
    if not isinstance(method, FourDVar):
        raise TypeError(f"`method` must be a FourDVar, got {type(method).__name__}.")
    if method.hybrid or method.stride != method.window:
        raise ValueError(
            "`method` must use consecutive windows (shift = window) and a static B: the "
            "online windows carry one state and θ, not an ensemble."
        )
    if y_windows.ndim != 3 or y_windows.shape[1] != method.window:
        raise ValueError(
            f"`y_windows` must have shape (windows, {method.window}, p) for a window of "
            f"{method.window} cycles, got {y_windows.shape}."
        )


@eqx.filter_jit
def _online_scan(
    method,
    model,
    observation,
    background,
    theta,
    sigma,
    y_windows,
    first_window,
    where,
    offset,
    decay,
    information,
):
    # `where`, `offset`, `decay`, κ and the probe count are static: one program per setting.
    L = method.window
    precision, scale, probes, key = (None,) * 4 if information is None else information

    def one(carry, inputs):
        background, theta, precision = carry
        y_window, index = inputs
        first_cycle = index * L
        inner = method.window_cost(
            model,
            observation,
            y_window,
            background,
            first_cycle * model.cycle_length,
            first_cycle + offset,
        )
        if precision is not None:
            std = 1.0 / jnp.sqrt(precision)
        elif decay is not None:
            std = sigma / jnp.sqrt(1.0 + index / decay)
        else:
            std = sigma
        cost = WithModelParameters(
            inner, where=where, parameter_background=theta, parameter_std=std
        )
        result = method.minimise(cost, cost.initial_control())
        end = cost.trajectory(result.control)[-1]
        new_theta = result.control[1].astype(theta.dtype)
        step = jnp.sqrt(jnp.mean(cost.parameter_residual(new_theta) ** 2))
        if precision is not None:
            window_key = None if key is None else jax.random.fold_in(key, index)
            gained = _information_diagonal(cost, result.control, probes, window_key)
            precision = precision + scale * gained.astype(precision.dtype)
        record = OnlineWindows(end, result.costs[0], result.costs[-1], step, result.converged)
        return (end, new_theta, precision), record

    indices = first_window + jnp.arange(y_windows.shape[0])
    return jax.lax.scan(one, (background, theta, precision), (y_windows, indices))


def _information_diagonal(cost: WithModelParameters, control, probes, key):
    """``diag(Jᵀ J)``, ``J`` the Jacobian of the wrapped cost's whitened residuals with
    respect to ``θ`` at `control` (state part fixed): exact, or Hutchinson's estimate."""
    state, theta = control

    def residuals(t):
        return cost.with_parameters(t).residuals(state)

    if probes is None:
        _, jvp = jax.linearize(residuals, theta)
        columns = jax.vmap(jvp, out_axes=1)(jnp.eye(theta.shape[0], dtype=theta.dtype))
        return jnp.sum(columns**2, axis=0)
    r, vjp = jax.vjp(residuals, theta)
    v = jax.random.rademacher(key, (probes, r.shape[0]), dtype=r.dtype)
    return jnp.mean(jax.vmap(lambda u: vjp(u)[0])(v) ** 2, axis=0)
