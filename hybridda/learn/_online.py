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
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from .._checks import require_positive
from .._parameters import check_learnt, partition_learnt
from ..observe import AbstractObservation
from ..variational import FourDVar, WithModelParameters


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
) -> tuple[tuple[Float[Array, " n"], Float[Array, " q"]], OnlineWindows]:
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
    - `parameters`: ``θ`` before the first window (default: `model`'s own).
    - `first_window`: global index of the first window; `first_cycle_offset`: shift
      of the observation cycles (e.g. 1 when ``y[k]`` observes the state after ``k``
      cycles from an initial time 0 that is never observed).

    Returns ``((background, θ), records)``: the next window's background and the
    parameters after the last window, and the [`OnlineWindows`][] records.

    !!! cite "References"
        Farchi, Bocquet, Laloyaux, Bonavita and Malartic (2021), A comparison of combined
        data assimilation and machine learning methods for offline and online model
        error correction, *J. Comput. Sci.* 55, 101468.
        Farchi, Chrust, Bocquet, Laloyaux and Bonavita (2023), Online model error
        correction with neural networks in the incremental 4D-Var framework, *J. Adv.
        Model. Earth Syst.* 15, e2022MS003474.
    """
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
    return _online_scan(
        method,
        model,
        observation,
        jnp.asarray(background),
        jnp.asarray(parameters),
        jnp.asarray(parameter_std, dtype=jnp.result_type(float)),
        y_windows,
        jnp.asarray(first_window),
        where,
        first_cycle_offset,
        None if parameter_std_decay is None else float(parameter_std_decay),
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
):
    L = method.window  # `where`, `offset` and `decay` are static: one program per setting

    def one(carry, inputs):
        background, theta = carry
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
        std = sigma if decay is None else sigma / jnp.sqrt(1.0 + index / decay)
        cost = WithModelParameters(
            inner, where=where, parameter_background=theta, parameter_std=std
        )
        result = method.minimise(cost, cost.initial_control())
        end = cost.trajectory(result.control)[-1]
        new_theta = result.control[1].astype(theta.dtype)
        step = jnp.sqrt(jnp.mean(cost.parameter_residual(new_theta) ** 2))
        record = OnlineWindows(end, result.costs[0], result.costs[-1], step, result.converged)
        return (end, new_theta), record

    indices = first_window + jnp.arange(y_windows.shape[0])
    return jax.lax.scan(one, (background, theta), (y_windows, indices))
