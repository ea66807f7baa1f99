"""Pieces shared by every training loop (`learn.Trainer`, VAE, diffusion) and checkpoints."""

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
