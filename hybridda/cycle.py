"""Twin experiments: truth run, synthetic observations, and cycled assimilation.

`assimilate` is one `lax.scan` over cycles: forecast every member with the model's
resolvent, then call the method's analysis. It is a pure function of its inputs, so it
can be jitted, vmapped over seeds, or differentiated end to end.
"""

import functools
from typing import Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._method import AbstractAnalysisMethod, AbstractWindowMethod, WindowWeights, window_weights
from .observe import AbstractObservation, check_observations


@runtime_checkable
class EnsembleModel(Protocol):
    """What cycling needs of a model: one-cycle ensemble propagation.

    [`hybridda.integrate.Resolvent`][] (and every hybrid model built on it) satisfies it.
    """

    cycle_length: float

    def ensemble(self, E: Float[Array, "N n"], t0) -> Float[Array, "N n"]: ...

    def __call__(self, x: Float[Array, " n"], t0) -> Float[Array, " n"]: ...


class Trajectory(eqx.Module):
    """The output of [`assimilate`][]: means and spreads of forecast and analysis.

    Arrays have a leading cycle axis ``K``. `forecast_ensemble` / `analysis_ensemble`
    are stored only with ``store_ensembles=True`` (shape ``(K, N, n)``), else ``None``.
    Spread is ``sqrt(mean_i var_i)`` over variables, with the unbiased variance.
    Window methods ([`assimilate_windows`][]) have one entry per window (at its end) and
    also fill `costs` (per minimisation iteration) and `converged`.
    """

    times: Float[Array, " K"]
    forecast_mean: Float[Array, "K n"]
    analysis_mean: Float[Array, "K n"]
    forecast_spread: Float[Array, " K"]
    analysis_spread: Float[Array, " K"]
    final_ensemble: Float[Array, "N n"]
    forecast_ensemble: Float[Array, "K N n"] | None = None
    analysis_ensemble: Float[Array, "K N n"] | None = None
    costs: Float[Array, "K iterations"] | None = None
    converged: Bool[Array, " K"] | None = None

    @property
    def cycles(self) -> int:
        return self.times.shape[0]

    @classmethod
    def from_xarray(cls, dataset) -> "Trajectory":
        """Inverse of `to_xarray` (e.g. on `hybridda.io.load_netcdf(path)`)."""
        missing = [
            name
            for name in ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread")
            if name not in dataset
        ]
        if missing:
            raise ValueError(f"The dataset is not a hybridda trajectory: it lacks {missing}.")

        def field(name):
            return jnp.asarray(dataset[name].values) if name in dataset else None

        return cls(
            times=jnp.asarray(dataset["time"].values),
            forecast_mean=field("forecast_mean"),
            analysis_mean=field("analysis_mean"),
            forecast_spread=field("forecast_spread"),
            analysis_spread=field("analysis_spread"),
            final_ensemble=field("final_ensemble"),
            forecast_ensemble=field("forecast_ensemble"),
            analysis_ensemble=field("analysis_ensemble"),
        )

    @staticmethod
    def concatenate(parts: "list[Trajectory]") -> "Trajectory":
        """Join trajectories of consecutive chunks of cycles (the last final ensemble wins)."""
        final = parts[-1].final_ensemble
        joined = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)
        return eqx.tree_at(lambda t: t.final_ensemble, joined, final)

    def to_xarray(self, truth: Float[Array, "K n"] | None = None, observations=None):
        """An `xarray.Dataset` (dims ``time``, ``member``, ``variable``); see `hybridda.io`."""
        from .io import trajectory_to_xarray

        return trajectory_to_xarray(self, truth=truth, observations=observations)


def _spread(E):
    if E.shape[0] < 2:
        return jnp.zeros(())
    return jnp.sqrt(jnp.mean(jnp.var(E, axis=0, ddof=1)))


def simulate(model: EnsembleModel, x0: Float[Array, " n"], cycles: int, t0: float = 0.0):
    """Run `model` from `x0` for `cycles` cycles; returns states at times 0..cycles."""

    def step(x, k):
        x = model(x, t0 + k * model.cycle_length)
        return x, x

    _, states = jax.lax.scan(step, x0, jnp.arange(cycles))
    return jnp.concatenate([x0[None], states])


def spin_up(model: EnsembleModel, x0: Float[Array, " n"], cycles: int) -> Float[Array, " n"]:
    """Integrate `cycles` cycles from `x0` and return the final state (on the attractor)."""
    return jax.lax.fori_loop(0, cycles, lambda k, x: model(x, 0.0), x0)


def synthesise_observations(
    observation: AbstractObservation, truth: Float[Array, "K n"], key: PRNGKeyArray
) -> Float[Array, "K p"]:
    """``y_k = H_k(x_k) + ε_k`` for each row ``x_k`` of `truth` (cycle ``k = 0..K-1``)."""
    keys = jax.random.split(key, truth.shape[0])
    cycles = jnp.arange(truth.shape[0])
    return jax.vmap(lambda k, x, kk: observation.at_cycle(k).sample(x, kk))(cycles, truth, keys)


def initial_ensemble(
    key: PRNGKeyArray, centre: Float[Array, " n"], ensemble_size: int, std: float = 1.0
) -> Float[Array, "N n"]:
    """``centre + std · ξ`` with ``ξ ~ N(0, I)``, one row per member."""
    if ensemble_size < 1:
        raise ValueError(f"`ensemble_size` must be >= 1, got {ensemble_size}.")
    return centre[None, :] + std * jax.random.normal(key, (ensemble_size, centre.shape[0]))


def check_cycling_arguments(observation, method, y_seq, init) -> None:
    """Static checks shared by every cycled run, with messages naming the argument."""
    if init.ndim != 2:
        raise ValueError(f"`init` (the initial ensemble) must have shape (N, n), got {init.shape}.")
    if init.shape[0] < method.min_ensemble_size:
        raise ValueError(
            f"`ensemble_size` must be >= {method.min_ensemble_size} for "
            f"{type(method).__name__}, got {init.shape[0]}."
        )
    if y_seq.ndim != 2 or y_seq.shape[1] != observation.obs_size:
        raise ValueError(
            f"`y_seq` must have shape (cycles, {observation.obs_size}), got {y_seq.shape}."
        )


def check_block_size(name: str, value, meaning: str) -> None:
    """`value` must be ``None`` or a positive integer (a number of cycles)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}` ({meaning}) must be a positive integer or None, got {value!r}.")


def scan_in_blocks(block, carry, inputs, size: int):
    """Apply ``block(carry, inputs) -> (carry, outputs)`` to consecutive blocks of `size`
    cycles (the last one shorter when `size` does not divide the cycles), in a `lax.scan`.
    """
    cycles = jax.tree.leaves(inputs)[0].shape[0]
    size = min(size, cycles)
    blocks, remainder = divmod(cycles, size)
    head = jax.tree.map(lambda a: a[: blocks * size].reshape(blocks, size, *a.shape[1:]), inputs)
    carry, out = jax.lax.scan(block, carry, head)
    out = jax.tree.map(lambda a: a.reshape(blocks * size, *a.shape[2:]), out)
    if remainder:
        tail = jax.tree.map(lambda a: a[blocks * size :], inputs)
        carry, tail_out = block(carry, tail)
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail_out)
    # Materialise the outputs in their unblocked shape: otherwise XLA may fuse the
    # reshape into a later reduction and sum in another order (a different last bit).
    return carry, jax.lax.optimization_barrier(out)


def assimilate(
    model: EnsembleModel,
    observation: AbstractObservation,
    method: AbstractAnalysisMethod,
    y_seq: Float[Array, "K p"],
    init: Float[Array, "N n"],
    key: PRNGKeyArray,
    *,
    t0: float | Float[Array, ""] = 0.0,
    first_cycle: int | Int[Array, ""] = 0,
    store_ensembles: bool = False,
    checkpoint: int | None = None,
) -> Trajectory:
    """Cycle forecast and analysis over the observations `y_seq` (one `lax.scan`).

    Cycle ``k`` (0-based, counted from `first_cycle`) forecasts from the previous
    analysis (or `init`) to time ``t0 + (k+1) Δt`` and assimilates ``y_seq[k]`` with the
    operator ``observation.at_cycle(first_cycle + k)``. NaN entries in `y_seq` are
    missing observations. The key of cycle ``c`` is ``fold_in(key, c)``, so running the
    cycles in chunks (passing `first_cycle`, `t0` and the previous `final_ensemble`)
    gives exactly the same numbers as one run.

    **Arguments:**

    - `model`: the resolvent (or hybrid model) propagating an ensemble over one cycle.
    - `observation`: the observation operator and error model.
    - `method`: any analysis method (ensemble filter, 3D-Var).
    - `y_seq`: observations, shape ``(K, p)``.
    - `init`: initial ensemble ``(N, n)`` (``N = 1`` for 3D-Var).
    - `key`: PRNG key (folded with the cycle index).
    - `t0`, `first_cycle`: time and index of the first cycle (for chunked runs).
    - `store_ensembles`: also return every forecast and analysis ensemble.
    - `checkpoint`: ``None`` (default) or a block size ``B`` ≥ 1 for reverse-mode
      differentiation of long runs. The cycles then run as a `lax.scan` over blocks of
      ``B`` cycles (plus one shorter block for the remaining ``K mod B`` cycles), each
      block a `jax.checkpoint`-ed inner `lax.scan`: a gradient keeps only the ensembles
      at block boundaries and recomputes one block at a time, so its memory is about
      ``K/B`` ensembles plus the intermediates of ``B`` cycles instead of those of all
      ``K`` cycles (``B ≈ √K`` minimises it), for one extra forward pass. The numbers
      are those of ``checkpoint=None`` (the same operations, cycle by cycle); forward
      runs cost the same.

    **Returns:** a [`Trajectory`][].
    """
    check_cycling_arguments(observation, method, y_seq, init)
    check_block_size("checkpoint", checkpoint, "cycles per rematerialised block")
    y_seq = check_observations(y_seq, "y_seq")
    y_seq = eqx.error_if(
        y_seq,
        jnp.all(jnp.isnan(y_seq)),
        "`y_seq` is entirely NaN: there is nothing to assimilate (NaN marks a missing value).",
    )
    cycles = y_seq.shape[0]
    indices = first_cycle + jnp.arange(cycles)
    # Start time of each cycle, computed once outside the loop so that every way of
    # running the loop (blocks, chunks) sees bit-identical times.
    start_times = t0 + (indices - first_cycle) * model.cycle_length

    def step(E, inputs):
        k, time, y = inputs  # k: global cycle index; time: the cycle's start
        forecast = model.ensemble(E, time)
        cycle_key = jax.random.fold_in(key, k)
        analysis = method.analysis(forecast, y, observation.at_cycle(k), cycle_key)
        out = (
            forecast.mean(axis=0),
            analysis.mean(axis=0),
            _spread(forecast),
            _spread(analysis),
        )
        if store_ensembles:
            out = out + (forecast, analysis)
        return analysis, out

    inputs = (indices, start_times, y_seq)
    if checkpoint is None:
        final, out = jax.lax.scan(step, init, inputs)
    else:
        # In the backward pass each block is recomputed from the ensemble saved at its
        # start (scan already stops CSE, hence prevent_cse=False).
        rematerialised = jax.checkpoint(functools.partial(jax.lax.scan, step), prevent_cse=False)
        final, out = scan_in_blocks(rematerialised, init, inputs, checkpoint)
    forecast_mean, analysis_mean, forecast_spread, analysis_spread, *ensembles = out
    return Trajectory(
        start_times + model.cycle_length,
        forecast_mean,
        analysis_mean,
        forecast_spread,
        analysis_spread,
        final,
        *ensembles,
    )


def assimilate_windows(
    model: EnsembleModel,
    observation: AbstractObservation,
    method: AbstractWindowMethod,
    y_seq: Float[Array, "K p"],
    init: Float[Array, "N n"],
    key: PRNGKeyArray,
    *,
    t0: float | Float[Array, ""] = 0.0,
    first_cycle: int | Int[Array, ""] = 0,
    weights: WindowWeights | None = None,
    checkpoint: int | None = None,
    store_ensembles: bool = False,
) -> Trajectory:
    """Cycle a window method (4D-Var, IEnKS) over `y_seq`, one `lax.scan` over windows.

    Windows hold ``L = method.window`` cycles and slide by ``S = method.stride``:
    window ``j`` covers cycles ``[jS, jS + L)`` and starts from `init` (``j = 0``) or the
    previous window's `final` analysis. Which observations each window assimilates is
    [`hybridda._method.window_weights`][] (single or multiple DA). ``K - L`` must be a
    multiple of ``S``. The returned [`Trajectory`][] has one entry per window, at its
    end: `forecast_mean` is the background propagated to the window end before this
    window's observations, `analysis_mean` the window-end analysis (which has used every
    observation up to that time, comparable to a filter's analysis); with
    `store_ensembles`, `forecast_ensemble` and `analysis_ensemble` hold those ensembles
    (shape ``(windows, N, n)``). Keys: window ``j`` uses ``fold_in(key, first_cycle + jS)``.
    """
    L, S = method.window, method.stride
    if init.ndim != 2 or init.shape[0] < method.min_ensemble_size:
        raise ValueError(
            f"`init` must have shape (N >= {method.min_ensemble_size}, n) for "
            f"{type(method).__name__}, got {init.shape}."
        )
    if y_seq.ndim != 2 or y_seq.shape[1] != observation.obs_size:
        raise ValueError(
            f"`y_seq` must have shape (cycles, {observation.obs_size}), got {y_seq.shape}."
        )
    cycles = y_seq.shape[0]
    if cycles < L or (cycles - L) % S:
        raise ValueError(
            f"The number of cycles ({cycles}) must be the window ({L}) plus a multiple of "
            f"the shift ({S})."
        )
    y_seq = check_observations(y_seq, "y_seq")
    windows = (cycles - L) // S + 1
    offsets = S * jnp.arange(windows)
    if weights is None:
        weights = window_weights(L, S, windows, method.multiple_da)
    elif weights.assimilate.shape != (windows, L):
        raise ValueError(
            f"`weights` must have shape ({windows}, {L}) (windows, cycles per window), got "
            f"{weights.assimilate.shape}."
        )
    messages = tuple(
        f"The cost or analysis of window {w} (cycles {w * S} to {w * S + L - 1} of this "
        "run) is non-finite; check the observations, covariances and the model's stability."
        for w in range(windows)
    )
    start_times = t0 + offsets * model.cycle_length
    y_windows = y_seq[offsets[:, None] + jnp.arange(L)[None, :]]  # (windows, L, p)

    def step(E, inputs):
        offset, time, y_window, weight = inputs
        start = first_cycle + offset
        result = method.analyse_window(
            model, observation, E, y_window, weight, time, start, jax.random.fold_in(key, start)
        )
        final = eqx.branched_error_if(
            result.final,
            ~(
                jnp.all(jnp.isfinite(result.final))
                & jnp.all(jnp.isfinite(result.analysis))
                & jnp.all(jnp.isfinite(result.costs))
            ),
            offset // S,
            messages,
        )
        out = (
            time + L * model.cycle_length,
            result.forecast.mean(axis=0),
            result.analysis.mean(axis=0),
            _spread(result.forecast),
            _spread(result.analysis),
            result.costs,
            result.converged,
        )
        if store_ensembles:
            out = out + (result.forecast, result.analysis)
        return final, out

    inputs = (offsets, start_times, y_windows, weights)
    if checkpoint is None:
        final, out = jax.lax.scan(step, init, inputs)
    else:
        rematerialised = jax.checkpoint(functools.partial(jax.lax.scan, step), prevent_cse=False)
        final, out = scan_in_blocks(rematerialised, init, inputs, checkpoint)
    times, forecast_mean, analysis_mean, forecast_spread, analysis_spread, costs, converged = out[
        :7
    ]
    forecast_ensemble, analysis_ensemble = out[7:] if store_ensembles else (None, None)
    return Trajectory(
        times,
        forecast_mean,
        analysis_mean,
        forecast_spread,
        analysis_spread,
        final,
        forecast_ensemble,
        analysis_ensemble,
        costs=costs,
        converged=converged,
    )
