"""Training a surrogate or a model-error correction on analyses, resumable bit for bit.

[`Trainer`][] owns the training state (trained parameters, Optax state, step, PRNG key,
early-stopping state and loss history); one `eqx.filter_jit`-ed function does a whole
step (minibatch, loss, gradients, update). With a checkpoint directory the state is
saved every `checkpoint_every` steps, and a trainer built with ``resume=True`` continues
from the newest checkpoint: on CPU the run ends with bitwise the same parameters as one
that was never interrupted.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._checks import require_count
from .._training import optimiser_transform
from ..checkpoint import Checkpointer, resume_or_init
from ..hybrid import NeuralDynamics, ResolventCorrection, Surrogate, TendencyCorrection
from ..integrate import Resolvent
from ..nn import MLP
from ._data import RolloutPairs
from ._loss import Model, RolloutLoss

_FORMAT = "hybridda-learn/1"
_DEFAULT_LOSS = RolloutLoss()


# ---------------------------------------------------------------------- what is trained


def _network_path(model) -> tuple[str, ...] | None:
    """Attribute path of the learnt part of a hybrid model (``None``: not a known hybrid)."""
    if isinstance(model, ResolventCorrection):
        return ("correction",)
    if isinstance(model, Surrogate):
        return ("network",)
    if isinstance(model, Resolvent):
        if isinstance(model.dynamics, TendencyCorrection):
            return ("dynamics", "correction")
        if isinstance(model.dynamics, NeuralDynamics):
            return ("dynamics", "network")
    return None


def _get(model, path: tuple[str, ...]):
    return functools.reduce(getattr, path, model)


def _trainable_leaf(node) -> Any:
    # An MLP's input/output statistics are fixed by design (it stops their gradient);
    # leaving them out also keeps weight decay or an L2 penalty from shrinking them.
    if isinstance(node, MLP):
        spec = jax.tree.map(eqx.is_inexact_array, node)
        return eqx.tree_at(
            lambda m: (m.input_mean, m.input_std, m.output_scale), spec, (False, False, False)
        )
    return eqx.is_inexact_array(node)


def default_trainable(model: PyTree) -> PyTree[bool]:
    """The default filter spec of [`Trainer`][]: the floating-point arrays of the network only.

    - [`hybridda.ResolventCorrection`][]: its `correction`;
    - [`hybridda.Surrogate`][]: its `network`;
    - ``Resolvent(TendencyCorrection(physics, correction))``: the `correction`;
    - ``Resolvent(NeuralDynamics(network))``: the `network`;
    - any other model: every floating-point array.

    The physical model's parameters (e.g. the Lorenz-96 forcing) stay frozen, and so do
    the fixed input/output statistics of a [`hybridda.nn.MLP`][]. The result is a pytree
    of booleans shaped like `model`, usable with `eqx.partition`.
    """
    spec = jax.tree.map(lambda _: False, model)
    path = _network_path(model)
    if path is None:
        return jax.tree.map(eqx.is_inexact_array, model)
    network_spec = jax.tree.map(
        _trainable_leaf, _get(model, path), is_leaf=lambda node: isinstance(node, MLP)
    )
    return eqx.tree_at(lambda m: _get(m, path), spec, network_spec)


# ---------------------------------------------------------------------- state and results


class TrainState(eqx.Module):
    """Everything a training run needs to continue: what [`Trainer`][] checkpoints.

    `params` and `best_params` hold the trained leaves only (the rest of the model is
    ``None`` there). The history arrays have one slot per evaluation (unused ones are
    NaN / -1); `evals` of them are filled.
    """

    params: PyTree
    opt_state: PyTree
    key: PRNGKeyArray
    step: int
    train_loss_sum: Float[Array, ""]
    train_loss_count: int
    best_params: PyTree
    best_validation_loss: float
    best_step: int
    evals_since_best: int
    evals: int
    history_step: np.ndarray
    history_train: np.ndarray
    history_validation: np.ndarray


@dataclasses.dataclass(frozen=True)
class History:
    """Losses at each evaluation of a run, for tables and plots.

    - `step`: the training step of each evaluation (0 = before training).
    - `train_loss`: mean minibatch misfit over the steps since the previous evaluation
      (NaN at step 0).
    - `validation_loss`: misfit on the whole validation set (NaN without one).
    - `best_step`, `best_validation_loss`: the evaluation whose parameters
      [`TrainResult`][]`.model` holds (without validation: the last one, loss NaN).
    - `stopped_early`: whether `patience` ended the run before `steps`.

    Losses are the misfit of [`RolloutLoss`][] without its L2 penalty.
    """

    step: np.ndarray
    train_loss: np.ndarray
    validation_loss: np.ndarray
    best_step: int
    best_validation_loss: float
    stopped_early: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists of numbers, NaN as ``None``."""

        def clean(values):
            return [None if not math.isfinite(v) else v for v in np.asarray(values).tolist()]

        return {
            "step": [int(s) for s in self.step],
            "train_loss": clean(self.train_loss),
            "validation_loss": clean(self.validation_loss),
            "best_step": self.best_step,
            "best_validation_loss": clean([self.best_validation_loss])[0],
            "stopped_early": self.stopped_early,
        }


class TrainResult(NamedTuple):
    """What [`Trainer.fit`][] returns.

    - `model`: the model with the best validation parameters (without validation data:
      the last ones).
    - `last_model`: the model after the last step taken.
    - `history`: the [`History`][] of losses.
    """

    model: PyTree
    last_model: PyTree
    history: History


# ---------------------------------------------------------------------- compiled pieces


@eqx.filter_jit
def _train_step(params, frozen, opt_state, key, loss_sum, pairs, loss, optimiser, batch_size):
    """One step: draw a minibatch, differentiate the loss, apply the optimiser's update."""
    key, batch_key = jax.random.split(key)
    if batch_size is None:
        batch = pairs
    else:
        batch = pairs.take(jax.random.choice(batch_key, len(pairs), (batch_size,), replace=False))

    def objective(trained):
        misfit = loss(eqx.combine(trained, frozen), batch)
        return misfit + loss.penalty(trained), misfit

    (_, misfit), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimiser.update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    return params, opt_state, key, loss_sum + misfit.astype(loss_sum.dtype)


@eqx.filter_jit
def _misfit(params, frozen, pairs, loss):
    return loss(eqx.combine(params, frozen), pairs)


# ---------------------------------------------------------------------- the trainer


class Trainer:
    """Fit a one-cycle model to analyses by minimising a [`RolloutLoss`][] with Optax.

    **Arguments:**

    - `model`: the model ``x -> x`` over one cycle: a [`hybridda.Surrogate`][], a
      [`hybridda.ResolventCorrection`][], ``Resolvent(TendencyCorrection(...))``, ...
    - `train`: the training examples ([`rollout_pairs`][]); their rollout length is the
      rollout of the loss.
    - `validation`: examples for the validation loss, early stopping and the choice of
      the returned parameters; ``None`` to train without (the last parameters win).
    - `key`: PRNG key for the minibatches (the only randomness of the run).
    - `steps`: total number of optimiser steps.
    - `batch_size`: examples per step, drawn without replacement (``None``: all of
      them, full-batch training).
    - `learning_rate`: a number > 0, or an Optax schedule (a function of the step).
    - `optimiser`: a factory ``learning_rate -> optax.GradientTransformation``, default
      `optax.adam`; e.g. ``functools.partial(optax.adamw, weight_decay=1e-4)`` or
      ``lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))``.
    - `loss`: a [`RolloutLoss`][] (discount, variance floor, L2 weight).
    - `trainable`: an Equinox filter spec selecting the leaves to train (a pytree of
      booleans / callables, a prefix of `model`, as for `eqx.partition`); only
      floating-point arrays among them are trained. Default [`default_trainable`][]:
      the network only, the physical model frozen. To train everything pass
      `eqx.is_inexact_array`; to also learn, say, the Lorenz-96 forcing of a tendency
      correction: ``eqx.tree_at(lambda m: m.dynamics.dynamics.forcing,
      default_trainable(model), True)``.
    - `eval_every`: evaluate (and record the history) every this many steps, plus
      before the first step and after the last.
    - `patience`: stop after this many evaluations in a row without a lower validation
      loss (``None``: never stop early). Needs `validation`.
    - `checkpoint_dir`: where to save the [`TrainState`][] (``None``: no checkpoints);
      `checkpoint_every` steps between saves (default `eval_every`); `max_to_keep`
      checkpoints kept. The last step is always saved.
    - `resume`: continue the run saved in `checkpoint_dir` from its newest step. Its
      settings (the ones above, the data's digest, the trained shapes, `config`) must
      match the saved ``config.json``; otherwise an error names the differing settings
      and nothing is written. Without `resume` a directory that already holds
      checkpoints is an error too (never two runs in one folder).
    - `config`: extra JSON-serialisable settings to store and check with the run.
      The whole set is the attribute `config` (worth writing beside the results).
    - `progress`: show a tqdm progress bar.

    Training happens in [`fit`][]. All arguments are checked here, before anything is
    written.
    """

    def __init__(
        self,
        model: Model,
        train: RolloutPairs,
        validation: RolloutPairs | None = None,
        *,
        key: PRNGKeyArray,
        steps: int,
        batch_size: int | None = 32,
        learning_rate: float | optax.Schedule = 1e-3,
        optimiser: Callable[..., optax.GradientTransformation] = optax.adam,
        loss: RolloutLoss = _DEFAULT_LOSS,
        trainable: PyTree | None = None,
        eval_every: int = 100,
        patience: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        max_to_keep: int | None = 3,
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
        progress: bool = True,
    ):
        if not isinstance(key, jax.Array):
            raise TypeError(f"`key` must be a JAX PRNG key such as jax.random.key(0), got {key!r}.")
        require_count("steps", steps, "optimiser steps in total")
        require_count("eval_every", eval_every, "steps between evaluations")
        if not isinstance(loss, RolloutLoss):
            raise TypeError(f"`loss` must be a RolloutLoss, got {type(loss).__name__}.")
        _check_pairs("train", train)
        if validation is not None:
            _check_pairs("validation", validation, like=train)
        if batch_size is not None:
            require_count("batch_size", batch_size, "examples per step; None for all")
            if batch_size > len(train):
                raise ValueError(
                    f"`batch_size` ({batch_size}) exceeds the {len(train)} training examples; "
                    "pass a smaller one, or batch_size=None for full-batch training."
                )
        if patience is not None:
            require_count("patience", patience, "evaluations without improvement")
            if validation is None:
                raise ValueError(
                    "`patience` (early stopping) needs `validation` examples; pass them or "
                    "set patience=None."
                )
        if checkpoint_every is not None:
            require_count("checkpoint_every", checkpoint_every, "steps between checkpoints")
            if checkpoint_dir is None:
                raise ValueError("`checkpoint_every` needs a `checkpoint_dir` to save to.")
        if resume and checkpoint_dir is None:
            raise ValueError("`resume=True` needs the `checkpoint_dir` of the run to continue.")
        optimiser_transform = _make_optimiser(optimiser, learning_rate)
        user_config = json.loads(_to_json(config, "config")) if config is not None else None

        if trainable is None:
            trainable = default_trainable(model)
        try:
            params, frozen = eqx.partition(model, trainable)
        except ValueError as error:
            raise ValueError(
                f"`trainable` is not a filter spec for this model ({error}); build it from "
                "default_trainable(model) or pass eqx.is_inexact_array."
            ) from error
        params, not_float = eqx.partition(params, eqx.is_inexact_array)
        frozen = eqx.combine(frozen, not_float)
        if not jax.tree.leaves(params):
            raise ValueError(
                "`trainable` selects no floating-point array of `model`: nothing to train. "
                "Pass a model with a network, or trainable=eqx.is_inexact_array."
            )
        _check_output_shapes(
            model, jax.ShapeDtypeStruct(train.inputs.shape[1:], train.inputs.dtype)
        )
        # Strongly typed copies: a restored checkpoint is strongly typed, and the step
        # must see the same types whether or not the run was resumed.
        params = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), params)

        self.train, self.validation = train, validation
        self.steps, self.batch_size, self.eval_every = steps, batch_size, eval_every
        self.patience, self.loss, self.optimiser = patience, loss, optimiser_transform
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every if checkpoint_every is not None else eval_every
        self.max_to_keep = max_to_keep
        self._frozen = frozen
        evals = 1 + steps // eval_every + (1 if steps % eval_every else 0)
        dtype = train.inputs.dtype

        def init_state() -> TrainState:
            return TrainState(
                params=params,
                opt_state=optimiser_transform.init(params),
                key=key,
                step=0,
                train_loss_sum=jnp.zeros((), dtype),
                train_loss_count=0,
                best_params=params,
                best_validation_loss=math.inf,
                best_step=0,
                evals_since_best=0,
                evals=0,
                history_step=np.full(evals, -1, dtype=np.int64),
                history_train=np.full(evals, np.nan),
                history_validation=np.full(evals, np.nan),
            )

        self.config = _run_config(
            {"steps": steps, "batch_size": batch_size, "eval_every": eval_every},
            patience=patience,
            learning_rate=learning_rate,
            optimiser=optimiser,
            loss=loss,
            train=train,
            validation=validation,
            params=params,
            frozen=frozen,
            key=key,
            user=user_config,
        )
        if checkpoint_dir is None:
            self._state = init_state()
            return
        self._state, _, checkpointer = resume_or_init(
            checkpoint_dir,
            init_state,
            resume=resume,
            config=self.config,
            max_to_keep=max_to_keep,
            save_every=self.checkpoint_every,
        )
        checkpointer.close()  # fit opens its own

    # ------------------------------------------------------------------ accessors

    @property
    def state(self) -> TrainState:
        """The whole training state (what a checkpoint holds)."""
        return self._state

    @property
    def step(self) -> int:
        """Optimiser steps taken so far."""
        return self._state.step

    @property
    def model(self) -> Model:
        """The model with the current parameters."""
        return eqx.combine(self._state.params, self._frozen)

    @property
    def best_model(self) -> Model:
        """The model with the parameters of the lowest validation loss so far."""
        return eqx.combine(self._state.best_params, self._frozen)

    @property
    def stopped_early(self) -> bool:
        """Whether `patience` evaluations in a row brought no lower validation loss."""
        return self.patience is not None and self._state.evals_since_best >= self.patience

    @property
    def finished(self) -> bool:
        """Whether `fit` has nothing left to do (all steps taken, or stopped early)."""
        return self._state.step >= self.steps or self.stopped_early

    @property
    def history(self) -> History:
        """The losses recorded so far."""
        state = self._state
        filled = slice(0, state.evals)
        return History(
            step=state.history_step[filled].copy(),
            train_loss=state.history_train[filled].copy(),
            validation_loss=state.history_validation[filled].copy(),
            best_step=state.best_step,
            best_validation_loss=(
                state.best_validation_loss if self.validation is not None else math.nan
            ),
            stopped_early=self.stopped_early,
        )

    def result(self) -> TrainResult:
        """Best model, current model and history, as [`fit`][] returns them."""
        return TrainResult(self.best_model, self.model, self.history)

    # ------------------------------------------------------------------ training

    def fit(
        self, *, until: int | None = None, callback: Callable[["Trainer"], None] | None = None
    ) -> TrainResult:
        """Train until `steps` (or step `until`, a pause) or until early stopping.

        Evaluates before the first step, every `eval_every` steps and after the last,
        then calls ``callback(trainer)`` (e.g. to log ``trainer.history``). With a
        `checkpoint_dir` the state is saved every `checkpoint_every` steps and at the
        step where `fit` returns; an exception (or a killed process) loses only the
        steps since the last save. Calling `fit` again continues the run.
        """
        stop_at = self.steps if until is None else until
        if (
            isinstance(stop_at, bool)
            or not isinstance(stop_at, int)
            or not 0 <= stop_at <= self.steps
        ):
            raise ValueError(f"`until` must be a step between 0 and {self.steps}, got {until!r}.")
        from tqdm.auto import tqdm

        checkpointer = None
        if self.checkpoint_dir is not None:
            checkpointer = Checkpointer(
                self.checkpoint_dir, max_to_keep=self.max_to_keep, save_every=self.checkpoint_every
            )
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not self.progress,
        )
        try:
            if self._state.evals == 0:
                self._evaluate(callback, bar)
            while self.step < stop_at and not self.stopped_early:
                self._take_step()
                bar.update()
                if self.step % self.eval_every == 0 or self.step == self.steps:
                    self._evaluate(callback, bar)
                if checkpointer is not None:
                    checkpointer.save(self.step, self._state)
            if checkpointer is not None:
                checkpointer.save(self.step, self._state, force=True)
        finally:
            bar.close()
            if checkpointer is not None:
                checkpointer.close()
        return self.result()

    def _take_step(self) -> None:
        state = self._state
        params, opt_state, key, loss_sum = _train_step(
            state.params,
            self._frozen,
            state.opt_state,
            state.key,
            state.train_loss_sum,
            self.train,
            self.loss,
            self.optimiser,
            self.batch_size,
        )
        self._state = dataclasses.replace(
            state,
            params=params,
            opt_state=opt_state,
            key=key,
            step=state.step + 1,
            train_loss_sum=loss_sum,
            train_loss_count=state.train_loss_count + 1,
        )

    def _evaluate(self, callback, bar) -> None:
        state = self._state
        train_loss = (
            float(state.train_loss_sum) / state.train_loss_count
            if state.train_loss_count
            else math.nan
        )
        history_step, history_train, history_validation = (
            state.history_step.copy(),
            state.history_train.copy(),
            state.history_validation.copy(),
        )
        history_step[state.evals], history_train[state.evals] = state.step, train_loss
        changes = {}
        if self.validation is None:
            changes = {"best_params": state.params, "best_step": state.step}
        else:
            validation_loss = float(_misfit(state.params, self._frozen, self.validation, self.loss))
            history_validation[state.evals] = validation_loss
            if validation_loss < state.best_validation_loss:  # NaN never improves
                changes = {
                    "best_params": state.params,
                    "best_step": state.step,
                    "best_validation_loss": validation_loss,
                    "evals_since_best": 0,
                }
            else:
                changes = {"evals_since_best": state.evals_since_best + 1}
        self._state = dataclasses.replace(
            state,
            train_loss_sum=jnp.zeros_like(state.train_loss_sum),
            train_loss_count=0,
            evals=state.evals + 1,
            history_step=history_step,
            history_train=history_train,
            history_validation=history_validation,
            **changes,
        )
        bar.set_postfix(
            train=f"{train_loss:.4g}",
            validation=f"{history_validation[state.evals]:.4g}",
            best=f"{self._state.best_validation_loss:.4g}",
            refresh=False,
        )
        if callback is not None:
            callback(self)


# ---------------------------------------------------------------------- checks


def _check_pairs(name: str, pairs, like: RolloutPairs | None = None) -> None:
    if not isinstance(pairs, RolloutPairs):
        raise TypeError(
            f"`{name}` must be RolloutPairs, got {type(pairs).__name__}; build it with "
            "hybridda.learn.rollout_pairs(datasets, rollout)."
        )
    if len(pairs) == 0:
        raise ValueError(
            f"`{name}` holds no example: every window of analyses is missing. Check the "
            "analyses for NaN, or use a smaller rollout or validation fraction."
        )
    if not all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(pairs)):
        raise ValueError(
            f"`{name}` has non-finite values; build it with rollout_pairs, which skips the "
            "windows with missing (non-finite) analyses."
        )
    if like is None:
        return
    if (pairs.rollout, pairs.state_size) != (like.rollout, like.state_size):
        raise ValueError(
            f"`{name}` has rollout {pairs.rollout} and state size {pairs.state_size}, but "
            f"`train` has {like.rollout} and {like.state_size}; build both with the same "
            "rollout from the same system."
        )
    if (pairs.variance is None) != (like.variance is None):
        raise ValueError(
            f"`{name}` and `train` must both have analysis variances or both not: otherwise "
            "their losses are weighted differently and cannot be compared."
        )


def _check_output_shapes(model, x: jax.ShapeDtypeStruct) -> None:
    """The network and the whole model must map one state ``(n,)`` to ``(n,)``."""
    # The network first: a correction with one output would broadcast silently in
    # M(x) + c(x), so the whole model's shape alone would not catch it.
    path = _network_path(model)
    if path is not None:
        _check_maps_state(
            f"The network `model.{'.'.join(path)}`",
            _get(model, path),
            x,
            f"Build it with input and output size {x.shape[0]}.",
        )
    _check_maps_state("`model`", model, x, "A one-cycle model returns a state like its input.")


def _check_maps_state(name: str, function, x: jax.ShapeDtypeStruct, fix: str) -> None:
    try:
        out = jax.eval_shape(function, x)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} cannot be applied to one state of shape {x.shape} ({error}). {fix}"
        ) from error
    shape = getattr(out, "shape", type(out).__name__)
    if shape != x.shape:
        raise ValueError(
            f"{name} maps a state of shape {x.shape} to {shape}, not to the state's shape. {fix}"
        )


def _make_optimiser(optimiser, learning_rate) -> optax.GradientTransformation:
    if callable(learning_rate) and not isinstance(learning_rate, int | float):
        rate = learning_rate  # a schedule: its values are the user's business
    else:
        if (
            isinstance(learning_rate, bool)
            or not isinstance(learning_rate, int | float | np.floating | np.integer)
            or not math.isfinite(learning_rate)
            or learning_rate <= 0
        ):
            raise ValueError(
                f"`learning_rate` must be a finite number > 0 (or an Optax schedule), got "
                f"{learning_rate!r}; e.g. learning_rate=1e-3."
            )
        rate = float(learning_rate)
    if not callable(optimiser):
        raise TypeError(
            "`optimiser` must be a factory learning_rate -> optax.GradientTransformation, "
            f"e.g. optax.adam, got {type(optimiser).__name__}."
        )
    transform = optimiser_transform(optimiser, rate)
    if not (hasattr(transform, "init") and hasattr(transform, "update")):
        raise TypeError(
            f"`optimiser({rate!r})` returned {type(transform).__name__}, not an Optax "
            "GradientTransformation."
        )
    return transform


# ---------------------------------------------------------------------- config


def _run_config(
    counts,
    *,
    patience,
    learning_rate,
    optimiser,
    loss,
    train,
    validation,
    params,
    frozen,
    key,
    user,
) -> dict[str, Any]:
    """The settings that determine a run's numbers, as they go to ``config.json``."""
    return {
        "format": _FORMAT,
        **counts,
        "patience": patience,
        "learning_rate": _describe_rate(learning_rate),
        "optimiser": _describe_callable(optimiser),
        "loss": {"discount": loss.discount, "variance_floor": loss.variance_floor, "l2": loss.l2},
        "rollout": train.rollout,
        "state_size": train.state_size,
        "train_examples": len(train),
        "validation_examples": None if validation is None else len(validation),
        "data_sha256": _digest((train, validation)),
        "trained_shapes": [list(a.shape) for a in jax.tree.leaves(params)],
        "frozen_sha256": _digest(eqx.filter(frozen, eqx.is_array)),
        "key": _key_data(key),
        "user": user,
    }


def _to_json(value, name: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"`{name}` must be JSON-serialisable ({error}).") from error


def _describe_callable(function) -> str:
    """A name stable across processes (no memory addresses), for ``config.json``."""
    if isinstance(function, functools.partial):
        arguments = [repr(a) for a in function.args]
        arguments += [f"{k}={v!r}" for k, v in sorted(function.keywords.items())]
        return f"{_describe_callable(function.func)}({', '.join(arguments)})"
    # The top-level package only: optax.adam lives in optax._src.alias today.
    package = (getattr(function, "__module__", None) or "").split(".")[0]
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{package}.{name}" if package else name


def _describe_rate(learning_rate) -> float | str:
    if isinstance(learning_rate, int | float | np.floating | np.integer):
        return float(learning_rate)
    return f"schedule {_describe_callable(learning_rate)}"


def _digest(tree) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _key_data(key) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()
