"""Checkpoints of a training state with Orbax: save every k steps, keep the last few, resume.

A *state* is any pytree: typically ``(model, opt_state, step, key)`` with an Equinox
model, an Optax state, a step counter and a PRNG key. What is saved are its array
leaves (typed PRNG keys as their raw key data, Python numbers as 0-d arrays); the rest
(activation functions, static fields, the tree structure itself) comes back from a
`like` state built the same way, e.g. by the same ``init`` function. Restoring is
bit-exact, so a run resumed from step ``k`` reproduces the uninterrupted run.

Layout on disk, under `directory` (default ``checkpoints/<run>/``, relative to the
working directory)::

    config.json          the run's settings (optional, see `Checkpointer.save_config`)
    <step>/state/        the array leaves (Orbax StandardSave)
    <step>/manifest/     leaf paths, shapes, dtypes and SHA-256 digests (Orbax JsonSave)

Saves are synchronous: when `Checkpointer.save` returns, the step folder is complete
(Orbax writes it under a temporary name and renames it), so killing the process right
after a save leaves a usable checkpoint. Restores check every leaf against its digest:
a damaged checkpoint raises [`CheckpointError`][] naming the folder, never restores
wrong numbers.
"""

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PyTree

from ._training import digest

DEFAULT_ROOT = Path("checkpoints")
CONFIG_FILE = "config.json"
_FORMAT = "hybridda-checkpoint/1"
_ITEMS = ("state", "manifest")

State = TypeVar("State")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored: damaged, incomplete, or of another state."""


def checkpoint_directory(run: str, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """The default place for the checkpoints of run `run`: ``checkpoints/<run>``."""
    if not run or Path(run).is_absolute() or ".." in Path(run).parts:
        raise ValueError(f"`run` must be a plain relative name such as 'learn_l96', got {run!r}.")
    return Path(root) / run


class Checkpointer:
    """Save, list and restore the states of one training run (an Orbax `CheckpointManager`).

    **Arguments:**

    - `directory`: folder of the run's checkpoints (relative paths are resolved against
      the working directory); created when missing unless ``create=False``.
    - `max_to_keep`: keep only the newest `max_to_keep` steps (``None``: keep all).
    - `save_every`: [`save`][] writes steps that are multiples of it (others only with
      ``force=True``, e.g. the last step).

    Use as a context manager, or call [`close`][] when done.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_every: int = 1,
        create: bool = True,
    ):
        if max_to_keep is not None and (not _is_int(max_to_keep) or max_to_keep < 1):
            raise ValueError(
                f"`max_to_keep` must be a positive integer or None (keep all), got {max_to_keep!r}."
            )
        if not _is_int(save_every) or save_every < 1:
            raise ValueError(
                f"`save_every` must be a positive integer (steps per save), got {save_every!r}."
            )
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.save_every = save_every
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(f"The checkpoint directory {self.directory} does not exist.")
        ocp = _orbax()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release Orbax's resources (every save has already finished)."""
        self._manager.close()

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.directory)!r}, max_to_keep={self.max_to_keep}, "
            f"save_every={self.save_every})"
        )

    # ------------------------------------------------------------------ listing

    def all_steps(self) -> list[int]:
        """Steps with a finished checkpoint, oldest first (read from disk each time)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_path(self, step: int) -> Path:
        """The folder holding step `step`."""
        return self.directory / str(step)

    # ------------------------------------------------------------------ save

    def should_save(self, step: int | np.integer | Int[Array, ""]) -> bool:
        """Whether [`save`][] (without ``force``) writes `step`."""
        return _as_step(step) % self.save_every == 0

    def save(
        self, step: int | np.integer | Int[Array, ""], state: PyTree, *, force: bool = False
    ) -> bool:
        """Write `state` as step `step` if it is due (or `force`); wait until it is on disk.

        Returns whether a checkpoint was written. A step that is already saved is left
        as it is (in a deterministic training loop the same step is the same state), and
        so is a step older than the newest one. Afterwards only the newest `max_to_keep`
        steps remain.
        """
        step = _as_step(step)
        if not (force or self.should_save(step)):
            return False
        latest = self.latest_step()
        if latest is not None and step <= latest:
            return False
        arrays, manifest = _encode(state)
        if not arrays:
            raise ValueError("`state` has no array leaves: there is nothing to checkpoint.")
        manifest["step"] = step
        ocp = _orbax()
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), manifest=ocp.args.JsonSave(manifest)
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        return bool(saved)

    # ------------------------------------------------------------------ restore

    def restore(self, like: State, step: int | np.integer | Int[Array, ""] | None = None) -> State:
        """The state saved at `step` (default: the newest), shaped like `like`.

        `like` is a state of the same structure, e.g. a freshly initialised one: its
        non-array leaves are reused, its arrays give the expected shapes and dtypes (and
        shardings; restored JAX arrays on one device go to the default device).

        Raises `FileNotFoundError` when there is no such step and [`CheckpointError`][]
        when the checkpoint is damaged or holds a differently shaped state.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"There is no finished checkpoint in {self.directory}. Start the run from "
                "scratch (without --resume), or point to the directory of the run to resume."
            )
        step = steps[-1] if step is None else _as_step(step)
        if step not in steps:
            raise FileNotFoundError(
                f"There is no checkpoint for step {step} in {self.directory}; saved steps: {steps}."
            )
        expected = _specs(like)
        ocp = _orbax()
        try:
            manifest = self._manager.restore(
                step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore())
            ).manifest
            if (
                not isinstance(manifest, dict)
                or manifest.get("format") != _FORMAT
                or not isinstance(manifest.get("leaves"), list)
            ):
                raise ValueError("its manifest is not a hybridda checkpoint manifest")
        except Exception as error:  # Orbax raises many types for damaged files
            raise self._damaged(step, steps, error) from error
        _check_compatible(manifest["leaves"], expected, self.step_path(step))
        target = {
            _leaf_name(i): np.empty(entry["shape"], dtype=np.dtype(entry["dtype"]))
            for i, entry in enumerate(manifest["leaves"])
        }
        try:
            arrays = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            ).state
            for i, entry in enumerate(manifest["leaves"]):
                array = np.asarray(arrays[_leaf_name(i)])
                if digest(array) != entry["sha256"]:
                    raise ValueError(f"leaf {entry['path']} does not match its SHA-256 digest")
        except Exception as error:
            raise self._damaged(step, steps, error) from error
        return _decode(like, [np.asarray(arrays[_leaf_name(i)]) for i in range(len(target))])

    def _damaged(self, step: int, steps: list[int], error: Exception) -> CheckpointError:
        older = [s for s in steps if s < step]
        fallback = (
            f"delete that folder to resume from step {older[-1]}, or "
            if older
            else "there is no older checkpoint: "
        )
        reason = str(error)
        if len(reason) > 300:  # TensorStore errors carry a long JSON spec
            reason = reason[:300] + " ..."
        return CheckpointError(
            f"The checkpoint {self.step_path(step)} is damaged or incomplete "
            f"({type(error).__name__}: {reason}). To go on, {fallback}delete "
            f"{self.directory} and start the run from scratch (without --resume)."
        )

    # ------------------------------------------------------------------ config

    def save_config(self, config: Mapping[str, Any]) -> None:
        """Write the run's settings to ``config.json`` in the directory (atomically)."""
        text = json.dumps(dict(config), indent=2, sort_keys=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{CONFIG_FILE}.tmp"
        temporary.write_text(text + "\n")
        os.replace(temporary, self.directory / CONFIG_FILE)

    def load_config(self) -> dict[str, Any]:
        """The settings written by [`save_config`][]."""
        path = self.directory / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: this run saved no configuration "
                "(Checkpointer.save_config), so its settings cannot be checked."
            )
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{path} is not valid JSON ({error}); restore it or delete the run directory."
            ) from error


def resume_or_init(
    directory: str | os.PathLike,
    init_fn: Callable[[], State],
    *,
    resume: bool,
    config: Mapping[str, Any] | None = None,
    max_to_keep: int | None = 3,
    save_every: int = 1,
) -> tuple[State, int, Checkpointer]:
    """Start a run afresh or continue it from its newest checkpoint; never silently both.

    - ``resume=True``: restore the newest step in `directory` into the structure of
      ``init_fn()``. A missing directory, one without checkpoints, or a `config` that
      differs from the saved one raises (naming the path and what to do), rather than
      quietly starting over.
    - ``resume=False``: ``init_fn()`` at step 0; `config` (if given) is written to
      ``config.json``. If `directory` already holds checkpoints this raises instead of
      mixing two runs in one folder.

    **Returns:** ``(state, step, checkpointer)``: the state after `step` training steps
    (0 for a fresh start) and the [`Checkpointer`][] to save the next steps with.
    """
    directory = Path(directory)
    if resume:
        if not directory.is_dir():
            raise FileNotFoundError(
                f"Cannot resume: the checkpoint directory {directory.absolute()} does not "
                "exist. Start without --resume to train from scratch, or pass the directory "
                "of the run to resume."
            )
        checkpointer = Checkpointer(
            directory, max_to_keep=max_to_keep, save_every=save_every, create=False
        )
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"Cannot resume: {checkpointer.directory} holds no finished checkpoint. "
                "Start without --resume to train from scratch."
            )
        if config is not None:
            _check_same_config(checkpointer.load_config(), config, checkpointer.directory)
        return checkpointer.restore(init_fn(), step), step, checkpointer
    if directory.is_dir():
        with Checkpointer(directory, max_to_keep=max_to_keep, create=False) as existing:
            steps = existing.all_steps()
        if steps:
            raise FileExistsError(
                f"{directory.absolute()} already holds checkpoints (steps {steps}). Pass "
                "--resume to continue that run, or delete the directory (or choose another) "
                "to start afresh."
            )
    checkpointer = Checkpointer(directory, max_to_keep=max_to_keep, save_every=save_every)
    if config is not None:
        checkpointer.save_config(config)
    return init_fn(), 0, checkpointer


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a finished checkpoint (``False`` if it does not exist).

    For scripts made of several checkpointed stages, whose ``--resume`` continues the
    stages that had started and starts the others afresh:
    ``resume_or_init(stage, init, resume=args.resume and has_checkpoint(stage))``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return False
    with Checkpointer(directory, create=False) as checkpointer:
        return checkpointer.latest_step() is not None


RUN_CONFIG_FILE = "run_config.json"


def prepare_run_directory(
    directory: str | os.PathLike, config: Mapping[str, Any], *, resume: bool
) -> Path:
    """Claim `directory` for one run made of several checkpointed stages; never mix runs.

    For scripts whose run has several stages, each with its own [`Checkpointer`][] or
    [`resume_or_init`][] in a subfolder (e.g. ``da/`` and ``train/``): the run's
    settings are written once to ``run_config.json``.

    - ``resume=False``: `directory` must be missing or empty (else `FileExistsError`:
      pass ``--resume`` or choose another directory); it is created and `config` saved.
    - ``resume=True``: ``run_config.json`` must exist (else `FileNotFoundError`) and
      hold the same settings (else `ValueError` naming each difference).

    Returns the directory as a `Path`.
    """
    directory = Path(directory)
    settings = directory / RUN_CONFIG_FILE
    if resume:
        if not settings.is_file():
            raise FileNotFoundError(
                f"Cannot resume: {settings.absolute()} does not exist. Run without --resume "
                "to start afresh, or pass the directory of the run to resume."
            )
        _check_same_config(json.loads(settings.read_text()), config, directory)
        return directory
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(
            f"{directory.absolute()} already holds a run. Pass --resume to continue it, or "
            "choose another directory (e.g. --checkpoint-dir) to start another."
        )
    directory.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(json.loads(json.dumps(dict(config))), indent=2))
    return directory


# ---------------------------------------------------------------------- encoding


def _orbax():
    # Imported on first use: Orbax costs ~0.6 s to import and most uses of hybridda
    # never checkpoint.
    import orbax.checkpoint as ocp

    return ocp


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_step(step) -> int:
    step = int(step)
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step}.")
    return step


def _leaf_name(index: int) -> str:
    return f"leaf_{index:05d}"


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _kind(leaf) -> str | None:
    """How a leaf is stored: a (key) array, a Python number, or not at all (``None``)."""
    if _is_key(leaf):
        return "key"
    if isinstance(leaf, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct):
        return "array"
    if isinstance(leaf, bool | int | float):
        return type(leaf).__name__
    return None


def _specs(state) -> list[dict[str, Any]]:
    """Path, kind, shape and dtype of each stored leaf of `state`, without copying data."""
    specs = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        kind = _kind(leaf)
        if kind is None:
            continue
        if kind == "key":
            data = jax.eval_shape(jax.random.key_data, leaf)
            shape, dtype = data.shape, data.dtype
        elif kind == "array":
            shape, dtype = leaf.shape, leaf.dtype
        else:
            array = np.asarray(leaf)
            shape, dtype = array.shape, array.dtype
        specs.append(
            {
                "path": jax.tree_util.keystr(path),
                "kind": kind,
                "shape": list(shape),
                "dtype": np.dtype(dtype).name,
            }
        )
    return specs


def _host_array(leaf) -> np.ndarray:
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def _encode(state) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The stored leaves of `state` as host arrays, and the manifest describing them."""
    specs = _specs(state)
    leaves = [leaf for leaf in jax.tree.leaves(state) if _kind(leaf) is not None]
    arrays = {}
    for i, (spec, leaf) in enumerate(zip(specs, leaves, strict=True)):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise ValueError(f"Leaf {spec['path']} of `state` is abstract: save concrete arrays.")
        arrays[_leaf_name(i)] = _host_array(leaf)
        spec["sha256"] = digest(arrays[_leaf_name(i)])
    return arrays, {"format": _FORMAT, "leaves": specs}


def _check_compatible(saved: list[dict], expected: list[dict], path: Path) -> None:
    fields = ("path", "kind", "shape", "dtype")
    saved = [tuple(str(entry[f]) for f in fields) for entry in saved]
    expected = [tuple(str(entry[f]) for f in fields) for entry in expected]
    if saved == expected:
        return
    if len(saved) != len(expected):
        problem = f"it holds {len(saved)} array leaves, `like` has {len(expected)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(saved, expected, strict=True)) if a != b)
        problem = (
            f"leaf {first} is (path, kind, shape, dtype) = {saved[first]} there but "
            f"{expected[first]} in `like`"
        )
    raise CheckpointError(
        f"The checkpoint {path} does not fit the state passed as `like`: {problem}. Build "
        "`like` with the same model, optimiser and settings as the run that saved it."
    )


def _decode(like, arrays: list[np.ndarray]):
    """`like` with its stored leaves replaced, in order, by `arrays`."""
    leaves, treedef = jax.tree.flatten(like)
    stored = iter(arrays)
    out = []
    for leaf in leaves:
        kind = _kind(leaf)
        if kind is None:
            out.append(leaf)
            continue
        array = next(stored)
        if kind == "key":
            out.append(jax.random.wrap_key_data(array, impl=jax.random.key_impl(leaf)))
        elif isinstance(leaf, np.ndarray):
            out.append(array)
        elif isinstance(leaf, np.generic):
            out.append(array[()])
        elif isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1:
            out.append(jax.device_put(array, leaf.sharding))
        elif kind == "array":
            out.append(jnp.asarray(array))
        else:
            out.append(type(leaf)(array.item()))
    return jax.tree.unflatten(treedef, out)


def _check_same_config(saved: Mapping[str, Any], config: Mapping[str, Any], directory: Path):
    current = json.loads(json.dumps(dict(config)))  # as it would read back from JSON
    keys = sorted(set(saved) | set(current))
    differing = [k for k in keys if saved.get(k, "<missing>") != current.get(k, "<missing>")]
    if differing:
        details = ", ".join(
            f"{k}: saved {saved.get(k, '<missing>')!r}, now {current.get(k, '<missing>')!r}"
            for k in differing
        )
        raise ValueError(
            f"Cannot resume {directory} with different settings ({details}). Resume with the "
            "settings of that run, or start a new run in another directory."
        )
