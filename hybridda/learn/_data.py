"""Analyses as training data: trajectories, rollout windows and a leak-free split.

The offline DA → ML loop (Brajard et al. 2020; Farchi et al. 2021) learns a model from
an *analysis* trajectory ``x^a_0 .. x^a_{K-1}`` produced by a DA run: the analyses play
the role of the (unknown) truth, and their error variance says how much to trust each
of them. A training example is a *window* of ``r + 1`` consecutive analyses: the model
starts from ``x^a_k`` and its ``r`` successive forecasts are compared with
``x^a_{k+1} .. x^a_{k+r}``.

!!! cite "References"
    Brajard, Carrassi, Bocquet and Bertino (2020), Combining data assimilation and
    machine learning to emulate a dynamical model from sparse and noisy observations: a
    case study with the Lorenz 96 model, *J. Comput. Sci.* 44, 101171. Farchi, Laloyaux,
    Bonavita and Bocquet (2021), Using machine learning to correct model error in data
    assimilation and forecast applications, *QJRMS* 147, 3067-3084.
"""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._checks import concrete, require_count
from ..cycle import Trajectory


class AnalysisDataset(eqx.Module):
    """One analysis trajectory and, optionally, the variance of its errors.

    **Arguments:**

    - `analysis`: ``(K, n)``, the analysis (mean) state of each of ``K`` consecutive
      cycles. Missing analyses are non-finite (NaN) rows; the windows touching them are
      skipped by [`rollout_pairs`][].
    - `variance`: ``None`` (every analysis equally trusted), ``(K, n)`` (e.g. the
      analysis ensemble variance of each variable) or ``(K,)`` (one value per cycle,
      e.g. the squared analysis spread; broadcast over the variables). Must be >= 0.

    Build it from a DA run with [`AnalysisDataset.from_trajectory`][].
    """

    analysis: Float[Array, "K n"]
    variance: Float[Array, "K n"] | None

    def __init__(self, analysis: ArrayLike, variance: ArrayLike | None = None):
        analysis = jnp.asarray(analysis)
        if not jnp.issubdtype(analysis.dtype, jnp.floating):
            analysis = analysis.astype(float)
        if analysis.ndim != 2 or analysis.shape[1] < 1:
            raise ValueError(
                f"`analysis` must have shape (cycles, n), one state per row, got {analysis.shape}."
            )
        cycles, n = analysis.shape
        if variance is not None:
            variance = jnp.asarray(variance, dtype=analysis.dtype)
            if variance.shape == (cycles,):
                variance = jnp.broadcast_to(variance[:, None], (cycles, n))
            if variance.shape != (cycles, n):
                raise ValueError(
                    f"`variance` must have shape {(cycles, n)} (per variable) or {(cycles,)} "
                    f"(per cycle, e.g. the squared spread), got {variance.shape}."
                )
            values = concrete(variance)
            if values is not None and np.any(values[np.isfinite(values)] < 0):
                raise ValueError(
                    "`variance` must be >= 0 (an error variance); pass the analysis ensemble "
                    "variance or the squared spread, not a difference of them."
                )
        self.analysis = analysis
        self.variance = variance

    @classmethod
    def from_trajectory(cls, trajectory: Trajectory, *, ensemble: bool = True):
        """The analysis means of a DA run and their error variance.

        With ``ensemble=True`` and a trajectory stored with ``store_ensembles=True``, the
        variance is that of the analysis ensemble, per variable (unbiased); otherwise it
        is the squared analysis spread, one value per cycle.
        """
        if ensemble and trajectory.analysis_ensemble is not None:
            variance = jnp.var(trajectory.analysis_ensemble, axis=1, ddof=1)
        else:
            variance = trajectory.analysis_spread**2
        return cls(trajectory.analysis_mean, variance)

    @property
    def cycles(self) -> int:
        return self.analysis.shape[0]

    @property
    def state_size(self) -> int:
        return self.analysis.shape[1]

    def segment(self, start: int, stop: int) -> "AnalysisDataset":
        """Cycles ``start .. stop - 1`` (a contiguous block in time)."""
        variance = None if self.variance is None else self.variance[start:stop]
        return AnalysisDataset(self.analysis[start:stop], variance)


class RolloutPairs(eqx.Module):
    """Training examples for a rollout of ``r`` cycles: inputs and multi-step targets.

    - `inputs`: ``(B, n)``, the analyses ``x^a_k`` the model starts from.
    - `targets`: ``(B, r, n)``, the analyses ``x^a_{k+1} .. x^a_{k+r}``.
    - `variance`: ``(B, r, n)``, the error variance of each target, or ``None``.

    Built by [`rollout_pairs`][]; indexable with [`take`][] (a minibatch).
    """

    inputs: Float[Array, "B n"]
    targets: Float[Array, "B r n"]
    variance: Float[Array, "B r n"] | None = None

    def __check_init__(self):
        windows, n = self.inputs.shape
        if self.targets.shape[0] != windows or self.targets.shape[2] != n:
            raise ValueError(
                f"`targets` must have shape ({windows}, r, {n}) to match `inputs` "
                f"{self.inputs.shape}, got {self.targets.shape}."
            )
        if self.variance is not None and self.variance.shape != self.targets.shape:
            raise ValueError(
                f"`variance` must have the shape of `targets` {self.targets.shape}, "
                f"got {self.variance.shape}."
            )

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def rollout(self) -> int:
        """``r``, the number of cycles each example is rolled out over."""
        return self.targets.shape[1]

    @property
    def state_size(self) -> int:
        return self.inputs.shape[1]

    def take(self, index: Int[Array, " b"]) -> "RolloutPairs":
        """The examples at `index` (a minibatch)."""
        return jax.tree.map(lambda a: a[index], self)


def rollout_pairs(
    datasets: AnalysisDataset | Sequence[AnalysisDataset], rollout: int
) -> RolloutPairs:
    """Every window of ``rollout + 1`` consecutive, finite analyses as one training example.

    Windows are taken within each trajectory (never across two of them), with stride 1:
    a trajectory of ``K`` cycles gives up to ``K - rollout`` examples. A window is
    skipped when any of its analyses (or their variances) is non-finite: a missing
    cycle removes the ``rollout + 1`` windows through it.

    Raises `ValueError` when no window is left (every analysis missing, or every
    trajectory shorter than ``rollout + 1`` cycles).
    """
    require_count("rollout", rollout, "forecast cycles per training example")
    datasets = _as_list(datasets)
    with_variance = {ds.variance is not None for ds in datasets}
    if len(with_variance) > 1:
        raise ValueError(
            "Either every dataset in `datasets` has a `variance` or none has: the loss weighs "
            "all targets the same way."
        )
    inputs, targets, variances = [], [], []
    for ds in datasets:
        if ds.cycles < rollout + 1:
            continue
        analysis = _windows(ds.analysis, rollout)
        finite = np.isfinite(analysis).all(axis=(1, 2))
        if ds.variance is not None:
            variance = _windows(ds.variance, rollout)[:, 1:]
            finite &= np.isfinite(variance).all(axis=(1, 2))
            variances.append(variance[finite])
        inputs.append(analysis[finite, 0])
        targets.append(analysis[finite, 1:])
    count = sum(len(x) for x in inputs)
    if count == 0:
        cycles = sum(ds.cycles for ds in datasets)
        missing = sum(
            int((~np.isfinite(np.asarray(ds.analysis))).any(axis=1).sum()) for ds in datasets
        )
        raise ValueError(
            f"The analyses give no training window of rollout + 1 = {rollout + 1} consecutive "
            f"finite cycles ({len(datasets)} trajectories, {cycles} cycles, {missing} of them "
            "with a missing (non-finite) analysis). Pass analyses with finite values, longer "
            "trajectories, or a smaller `rollout`."
        )
    return RolloutPairs(
        jnp.asarray(np.concatenate(inputs)),
        jnp.asarray(np.concatenate(targets)),
        jnp.asarray(np.concatenate(variances)) if variances else None,
    )


def train_validation_split(
    datasets: AnalysisDataset | Sequence[AnalysisDataset],
    validation_fraction: float,
    *,
    key: PRNGKeyArray,
    block_length: int | None = None,
    gap: int = 0,
) -> tuple[list[AnalysisDataset], list[AnalysisDataset]]:
    """Split analyses into training and validation segments by contiguous blocks in time.

    Consecutive analyses are strongly correlated, so holding out randomly chosen
    *windows* would validate on near-copies of training windows (leakage). Instead each
    trajectory is cut into blocks of `block_length` cycles (default: 10 blocks per
    trajectory; the last block of a trajectory may be shorter), and
    ``round(validation_fraction × blocks)`` of all the blocks (at least one, and at
    least one left for training), drawn with `key`, are held out. Neighbouring blocks of
    the same set are joined into one segment, so every training window from
    [`rollout_pairs`][] lies inside training cycles and every validation window inside
    validation cycles: no window straddles the two. With ``gap > 0`` the `gap` cycles
    of a validation segment next to a training segment are dropped as well, so the
    closest training and validation analyses are more than `gap` cycles apart. Choose
    blocks much longer than the correlation time of the analyses.

    The split depends only on `key` and the trajectory lengths (deterministic).

    **Returns:** ``(train, validation)``: two lists of [`AnalysisDataset`][] segments in
    time order, ready for [`rollout_pairs`][].
    """
    fraction = concrete(validation_fraction)
    if (
        fraction is None
        or fraction.ndim != 0
        or fraction.dtype == bool
        or not np.issubdtype(fraction.dtype, np.number)
        or not 0.0 < float(fraction) < 1.0
    ):
        raise ValueError(
            "`validation_fraction` must be a number strictly between 0 and 1 (the share of "
            f"cycles held out for validation, e.g. 0.2), got {validation_fraction!r}."
        )
    if block_length is not None:
        require_count("block_length", block_length, "cycles per block")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"`gap` (cycles dropped at each boundary) must be >= 0, got {gap!r}.")
    datasets = _as_list(datasets)
    blocks = []  # (dataset index, start, stop), in time order
    for d, ds in enumerate(datasets):
        length = block_length if block_length is not None else max(1, math.ceil(ds.cycles / 10))
        blocks += [
            (d, start, min(start + length, ds.cycles)) for start in range(0, ds.cycles, length)
        ]
    if len(blocks) < 2:
        raise ValueError(
            f"The analyses form {len(blocks)} block(s) of `block_length` cycles: at least 2 "
            "are needed to hold one out. Pass a smaller `block_length` or more cycles."
        )
    held_out = min(max(round(float(fraction) * len(blocks)), 1), len(blocks) - 1)
    order = np.asarray(jax.random.permutation(key, len(blocks)))
    is_validation = np.zeros(len(blocks), dtype=bool)
    is_validation[order[:held_out]] = True

    train, validation = [], []
    for d, ds in enumerate(datasets):
        runs = _runs(
            [(b[1], b[2], v) for b, v in zip(blocks, is_validation, strict=True) if b[0] == d]
        )
        for i, (start, stop, held) in enumerate(runs):
            if held:
                # Trim next to a training run only (a trajectory's own ends border nothing).
                start += gap if i > 0 else 0
                stop -= gap if i < len(runs) - 1 else 0
            if stop > start:
                (validation if held else train).append(ds.segment(start, stop))
    return train, validation


def _as_list(datasets) -> list[AnalysisDataset]:
    if isinstance(datasets, AnalysisDataset):
        return [datasets]
    datasets = list(datasets)
    if not datasets or not all(isinstance(ds, AnalysisDataset) for ds in datasets):
        raise ValueError("`datasets` must be an AnalysisDataset or a non-empty list of them.")
    sizes = {ds.state_size for ds in datasets}
    if len(sizes) > 1:
        raise ValueError(f"Every dataset in `datasets` must have the same state size, got {sizes}.")
    return datasets


def _windows(array, rollout: int) -> np.ndarray:
    """``(K, n)`` → ``(K - rollout, rollout + 1, n)``: every window of consecutive rows."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(array), rollout + 1, axis=0)
    return np.moveaxis(windows, -1, 1)


def _runs(blocks):
    """Join neighbouring ``(start, stop, held_out)`` blocks with the same ``held_out``."""
    runs = []
    for start, stop, held in blocks:
        if runs and runs[-1][2] == held:
            runs[-1] = (runs[-1][0], stop, held)
        else:
            runs.append((start, stop, held))
    return runs
