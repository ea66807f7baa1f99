r"""Online learning from streamed 4D-Var analyses: a replay buffer and a few optimiser
steps per window.

The second online method of Farchi et al.: the network is *not* in the 4D-Var control.
Each window ``w`` runs the window's 4D-Var with the current hybrid model ``M_θ``
(strong-constraint, or weak-constraint whose model-error forcing absorbs what ``M_θ``
still misses), from the background ``x_b`` (the previous window's analysis at its end),
which gives the analysed state at the window's end ``x^a_w``. The pair
``(x_b, x^a_w)`` (the training pair of the offline pipeline, which carries each
window-end analysis to the next) joins a ring buffer of the last ``B`` windows, and
``S`` optimiser steps on minibatches from the buffer minimise the ``L``-cycle misfit

$$\ell(θ) = \operatorname{mean}_{(x_b, x^a) ∈ \text{batch}} \tfrac1n
    \big\| M_θ^{L}(x_b) - x^a \big\|^2 .$$

So the data set of the offline method grows window by window, is produced by DA with
the improving model (better analyses, better targets: the DA → ML iteration of
Brajard et al. 2020 done online), and only the last ``B`` windows are kept. The returned
state also carries an exponential moving average of ``θ`` (Polyak-Ruppert averaging of
stochastic-approximation iterates, bias-corrected as Adam's moments), the usual
estimate to use from a constant-step online learner.

This is not the method of Farchi et al. (2023), whose network is in every window's
control ([`hybridda.learn.online_fourdvar`][]): it is the offline DA → ML iteration of
Brajard et al. (2020) and Farchi et al. (2021) run online, the network updated by
stochastic gradient steps as the analyses arrive, as in the online learning of the
operational hybrid model of Farchi et al. (2024), whose exact update was not at hand here.

References: Brajard, Carrassi, Bocquet and Bertino (2020), *J. Comput. Sci.* 44, 101171;
Farchi et al. (2023), *JAMES* 15, e2022MS003474; Polyak and Juditsky (1992),
*SIAM J. Control Optim.* 30, 838-855.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from .._parameters import check_learnt, partition_learnt, with_learnt
from ..observe import AbstractObservation
from ..variational import FourDVar, StrongFourDVar
from ._loss import rollout
from ._online import check_online_method


class ReplayState(NamedTuple):
    """What one call of [`online_replay_fourdvar`][] hands to the next (checkpoint it
    between chunks).

    - `background`: ``(n,)`` the next window's background.
    - `parameters`: ``(q,)`` the current ``θ`` (used by the next window's 4D-Var).
    - `average`: ``(q,)`` the exponential moving average of the ``θ`` after each window
      of the run (bias-corrected: the start's ``θ`` has no weight).
    - `optimiser_state`: the optax state.
    - `inputs`, `targets`: ``(B, n)`` the buffer's pairs ``(x_b, x^a)``; `filled`: how
      many of its ``B`` slots hold a pair (window ``w`` writes slot ``w mod B``; a
      buffer started full, from a data set, stays full).
    - `windows`: how many windows the run has done.
    """

    background: Float[Array, " n"]
    parameters: Float[Array, " q"]
    average: Float[Array, " q"]
    optimiser_state: PyTree
    inputs: Float[Array, "B n"]
    targets: Float[Array, "B n"]
    filled: Int[Array, ""]
    windows: Int[Array, ""]

    @classmethod
    def start(
        cls,
        background: Float[Array, " n"],
        parameters: Float[Array, " q"],
        optimiser: optax.GradientTransformation,
        buffer_windows: int,
        *,
        inputs: Float[Array, "B n"] | None = None,
        targets: Float[Array, "B n"] | None = None,
    ) -> "ReplayState":
        """The state of a new run: `background` for its first window, ``θ`` =
        `parameters` (also the average), a fresh optimiser state, and an empty buffer
        or, with `inputs` and `targets`, a full one.

        A full buffer continues training on a data set, e.g. fine-tuning a network
        pre-trained offline on the analyses of the same period (Farchi et al. 2024):
        pass that data set's ``B`` = `buffer_windows` pairs ``(x_b, x^a)`` in window
        order, and window ``w`` replaces pair ``w mod B``, so with ``B`` = the number of
        windows each window's offline pair is replaced by its new analysis."""
        background, parameters = jnp.asarray(background), jnp.asarray(parameters)
        shape = (buffer_windows, background.shape[0])
        if (inputs is None) != (targets is None):
            raise ValueError("Pass both `inputs` and `targets` (a full buffer), or neither.")
        if inputs is None:
            inputs = targets = jnp.zeros(shape, background.dtype)
            filled = 0
        else:
            inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
            for name, value in (("inputs", inputs), ("targets", targets)):
                if value.shape != shape:
                    raise ValueError(
                        f"`{name}` must hold `buffer_windows` pairs of states, shape {shape}, "
                        f"got {value.shape}: pass the data set's last {shape[0]} pairs or set "
                        "`buffer_windows` to its size."
                    )
                if not bool(jnp.all(jnp.isfinite(value))):
                    raise ValueError(f"`{name}` holds non-finite values.")
            filled = buffer_windows
        return cls(
            background, parameters, parameters, optimiser.init(parameters),
            inputs.astype(background.dtype), targets.astype(background.dtype),
            jnp.asarray(filled), jnp.asarray(0),
        )  # fmt: skip


class ReplayWindows(NamedTuple):
    """What [`online_replay_fourdvar`][] records for each of ``W`` windows.

    - `analysis_end`: ``(W, n)`` the analysed state at the window's end.
    - `cost_before`, `cost_after`: ``(W,)`` the 4D-Var cost at the background and at the
      analysis.
    - `training_loss`: ``(W,)`` the minibatch misfit ``ℓ`` averaged over the window's
      ``S`` steps (before each step).
    - `converged`: ``(W,)`` whether the 4D-Var minimiser met its stopping criterion.
    """

    analysis_end: Float[Array, "W n"]
    cost_before: Float[Array, " W"]
    cost_after: Float[Array, " W"]
    training_loss: Float[Array, " W"]
    converged: Bool[Array, " W"]


def online_replay_fourdvar(
    method: FourDVar,
    model: PyTree,
    observation: AbstractObservation,
    y_windows: Float[Array, "W L p"],
    *,
    where: Callable | None,
    optimiser: optax.GradientTransformation,
    key: PRNGKeyArray,
    state: ReplayState | None = None,
    background: Float[Array, " n"] | None = None,
    buffer_windows: int = 64,
    steps_per_window: int = 4,
    batch_size: int = 16,
    average_decay: float = 0.99,
    first_window: int | Array = 0,
    first_cycle_offset: int = 0,
) -> tuple[ReplayState, ReplayWindows]:
    r"""``W`` consecutive windows of online learning from streamed analyses, one
    `lax.scan` (jit-compiled); see the module docstring.

    Window ``w`` (global index ``first_window + w``) is the window of
    [`hybridda.learn.online_fourdvar`][] (same cycles, times and observation operators)
    with ``θ`` fixed at the state's `parameters`; then its pair enters the buffer and
    `steps_per_window` steps of `optimiser` follow, each on `batch_size` pairs drawn
    uniformly (with replacement) from the filled slots with ``fold_in(key, global window
    index)``, so chunks compose exactly into one run.

    **Arguments:**

    - `method`: a [`hybridda.variational.FourDVar`][] with consecutive windows and a
      static ``B`` (strong, or weak with its ``Q``).
    - `model`: the one-cycle model holding the learnt leaves (e.g. a
      [`hybridda.ResolventCorrection`][]). The training rollouts call it as ``model(x)``
      (autonomous, as [`hybridda.learn.rollout`][] and the `Trainer`).
    - `observation`, `y_windows` ``(W, L, p)``: as for `online_fourdvar`.
    - `where`: selects the learnt leaves (``None``: every floating-point array).
    - `optimiser`: an optax transformation, e.g. ``optax.adam(1e-3)``.
    - `key`: a `jax.random` key for the minibatches.
    - `state`: the [`ReplayState`][] returned by the previous chunk; ``None`` starts a
      run from `background` with `model`'s parameters, a fresh optimiser state and an
      empty buffer (`ReplayState.start` with `inputs` and `targets` starts one whose
      buffer is a data set's pairs).
    - `background`: ``x_b`` of the first window of a new run (not with `state`).
    - `buffer_windows` ``B``, `steps_per_window` ``S``, `batch_size`: the buffer's size
      in windows, the optimiser steps per window and the pairs per step (all ≥ 1).
    - `average_decay`: ``ρ ∈ [0, 1)``: after ``w`` windows the average is
      ``θ̄_w = Σ_{j≤w} ρ^{w-j} θ_j (1 - ρ) / (1 - ρ^w)`` over the run's iterates
      (``1 / (1 - ρ)`` windows of memory; ``ρ = 0``: the last ``θ``).
    - `first_window`, `first_cycle_offset`: as for `online_fourdvar`.

    Returns ``(state, records)``: the [`ReplayState`][] after the last window and the
    [`ReplayWindows`][] records.
    """
    check_online_method(method, y_windows)
    check_learnt(model, where)
    for name, value in (
        ("buffer_windows", buffer_windows),
        ("steps_per_window", steps_per_window),
        ("batch_size", batch_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if not 0.0 <= float(average_decay) < 1.0:
        raise ValueError(
            f"`average_decay` must be in [0, 1) (the weight of the old average), got "
            f"{average_decay}."
        )
    if state is None:
        if background is None:
            raise ValueError("Start a run with `background` (x_b of its first window), or "
                             "continue one with the returned `state`.")  # fmt: skip
        theta = partition_learnt(model, where)[0]
        state = ReplayState.start(background, theta, optimiser, buffer_windows)
    else:
        if background is not None:
            raise ValueError("Pass `background` only to start a run; `state` carries it.")
        if state.inputs.shape[0] != buffer_windows:
            raise ValueError(
                f"`state` holds a buffer of {state.inputs.shape[0]} windows, not "
                f"`buffer_windows` = {buffer_windows}: continue a run with its own settings."
            )
        if state.parameters.shape != partition_learnt(model, where)[0].shape:
            raise ValueError(
                f"`state.parameters` has shape {state.parameters.shape}, but `where` selects "
                f"{partition_learnt(model, where)[0].shape[0]} parameters of `model`."
            )
    return _replay_scan(
        method,
        model,
        observation,
        state,
        y_windows,
        jnp.asarray(first_window),
        key,
        where,
        optimiser,
        steps_per_window,
        batch_size,
        float(average_decay),
        first_cycle_offset,
    )


@eqx.filter_jit
def _replay_scan(
    method,
    model,
    observation,
    state,
    y_windows,
    first_window,
    key,
    where,
    optimiser,
    steps,
    batch_size,
    decay,
    offset,
):
    L = method.window
    buffer_size = state.inputs.shape[0]

    def misfit(theta, inputs, targets):
        hybrid = with_learnt(model, where, theta)
        predicted = jax.vmap(lambda x: rollout(hybrid, x, L)[-1])(inputs)
        return jnp.mean((predicted - targets) ** 2)

    def one(state, inputs):
        y_window, index = inputs
        background = state.background
        first_cycle = index * L
        cost = method.window_cost(
            with_learnt(model, where, state.parameters),
            observation,
            y_window,
            background,
            first_cycle * model.cycle_length,
            first_cycle + offset,
        )
        start = background if isinstance(cost, StrongFourDVar) else cost.initial_control()
        result = method.minimise(cost, start)
        end = cost.trajectory(result.control)[-1]
        slot = index % buffer_size
        buffer_in = state.inputs.at[slot].set(background)
        buffer_out = state.targets.at[slot].set(end.astype(state.targets.dtype))
        filled = jnp.minimum(state.filled + 1, buffer_size)

        def train_step(carry, step_key):
            theta, optimiser_state = carry
            rows = jax.random.randint(step_key, (batch_size,), 0, filled)
            loss, grad = jax.value_and_grad(misfit)(theta, buffer_in[rows], buffer_out[rows])
            updates, optimiser_state = optimiser.update(grad, optimiser_state, theta)
            return (optax.apply_updates(theta, updates), optimiser_state), loss

        step_keys = jax.random.split(jax.random.fold_in(key, index), steps)
        (theta, optimiser_state), losses = jax.lax.scan(
            train_step, (state.parameters, state.optimiser_state), step_keys
        )
        # Bias-corrected EMA: θ̄_w = Σ_{j≤w} ρ^{w-j} θ_j (1 - ρ) / (1 - ρ^w).
        windows = state.windows + 1
        weight = (1.0 - decay) / (1.0 - decay ** windows.astype(theta.dtype))
        average = state.average + weight * (theta - state.average)
        new_state = ReplayState(
            end, theta, average, optimiser_state, buffer_in, buffer_out, filled, windows
        )
        record = ReplayWindows(
            end, result.costs[0], result.costs[-1], jnp.mean(losses), result.converged
        )
        return new_state, record

    indices = first_window + jnp.arange(y_windows.shape[0])
    return jax.lax.scan(one, state, (y_windows, indices))
