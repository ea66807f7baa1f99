"""Pieces shared by every training loop (`learn.Trainer`, VAE, diffusion) and checkpoints."""

import dataclasses
import functools
import hashlib

import numpy as np
import optax


@functools.lru_cache(maxsize=32)
def _cached_transform(optimiser, learning_rate):
    return optimiser(learning_rate)


def optimiser_transform(optimiser, learning_rate) -> optax.GradientTransformation:
    """``optimiser(learning_rate)``, the same object for the same settings.

    A transformation is a pair of pure functions; building it once per (factory, rate)
    lets trainers with the same settings (a resumed run, the rounds of an iterated
    DA -> ML loop, repeated VAE fine-tuning) share one compiled step instead of tracing
    their own. Unhashable settings (a schedule object) get a fresh transformation.
    """
    try:
        return _cached_transform(optimiser, learning_rate)
    except TypeError:  # unhashable settings
        return optimiser(learning_rate)


def digest(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes: identifies the training data in a checkpoint's config."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def train_in_chunks(
    state, advance, *, steps: int, chunk: int, checkpointer=None, progress=False, what: str
):
    """Drive a resumable training run: compiled chunks of steps, checkpoints between them.

    `state` is an Equinox module with fields ``losses`` (a NumPy history of `steps`
    entries, NaN until done) and ``step`` (steps done); ``advance(state, count)``
    runs `count` steps (one compiled call) and returns ``(state, losses)`` with the new
    parameters, optimiser state and key and the chunk's `count` losses. After each chunk
    the history and step are updated and, with a `checkpointer`, saved (the last one
    forced). A tqdm bar shows progress when `progress`; the checkpointer is closed at
    the end. Raises `FloatingPointError` if any loss is non-finite (`what` names the
    model in the message). Returns the final state.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=state.step, desc=f"{what} training", leave=False)
    try:
        while state.step < steps:
            count = min(chunk, steps - state.step)
            new_state, losses = advance(state, count)
            history = state.losses.copy()
            history[state.step : state.step + count] = np.asarray(losses)
            state = dataclasses.replace(new_state, losses=history, step=state.step + count)
            if checkpointer is not None:
                checkpointer.save(state.step, state, force=state.step == steps)
            if bar is not None:
                bar.update(count)
                bar.set_postfix(loss=f"{float(losses[-1]):.4g}")
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            checkpointer.close()
    if not np.all(np.isfinite(state.losses)):
        raise FloatingPointError(
            f"{what} training diverged: the loss is non-finite from step "
            f"{int(np.argmax(~np.isfinite(state.losses)))}; lower `learning_rate` or check `data`."
        )
    return state
