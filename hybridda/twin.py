"""Config-driven twin experiments: the layer under `hybridda twin`, benchmarks and configs.

A [`TwinConfig`][] names a model, an observation network and a method with plain
values; [`build`][] turns it into modules and [`run_twin`][] runs the whole experiment
(spin-up, truth, observations, cycled assimilation, metrics, timings).
"""

import dataclasses
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import metrics
from ._method import AbstractAnalysisMethod, AbstractWindowMethod, window_weights
from .cycle import (
    Trajectory,
    assimilate,
    assimilate_windows,
    initial_ensemble,
    simulate,
    spin_up,
    synthesise_observations,
)
from .dynamics import AbstractDynamics, Lorenz63, Lorenz96, TwoScaleLorenz96
from .filters import ETKF, LETKF, EnKF, EnKFN, IEnKS, Localisation, Rotated, multiplicative
from .integrate import Resolvent
from .observe import (
    AbstractObservation,
    GaussianError,
    RandomSubsetObservation,
    every_kth,
    full_observation,
)
from .variational import FourDVar, Var3D, climatological_covariance

MODELS = ("lorenz63", "lorenz96", "lorenz96-two-scale")
METHODS = (
    "enkf",
    "etkf",
    "enkf-n",
    "letkf",
    "ienks",
    "3dvar",
    "4dvar",
    "weak-4dvar",
    "incremental-4dvar",
)
# Methods needing a climatological B; the window methods (4D-Var, IEnKS).
_STATIC_B = ("3dvar", "4dvar", "weak-4dvar", "incremental-4dvar")
_WINDOWED = ("4dvar", "weak-4dvar", "incremental-4dvar", "ienks")
_ROTATABLE = ("enkf", "etkf", "enkf-n", "letkf")
OBSERVATIONS = ("all", "every-k", "random")


@dataclasses.dataclass(frozen=True)
class TwinConfig:
    """Every setting of a twin experiment, as plain values (JSON-serialisable).

    Defaults are the Lorenz-96 "sakov2008" benchmark: n=40, F=8, Δt=0.05 with one RK4
    step per cycle, every variable observed with R=I, ETKF with N=24 and inflation 1.02.
    `n` is the number of slow variables for the two-scale model; `forcing`, `dt` left
    as ``None`` take the model's customary value.
    """

    model: str = "lorenz96"
    n: int = 40
    forcing: float | None = None
    dt: float | None = None
    steps_per_cycle: int = 1
    obs: str = "all"
    obs_count: int | None = None
    obs_every: int = 2
    obs_std: float = 1.0
    method: str = "etkf"
    ensemble_size: int = 24
    inflation: float = 1.0
    hyperprior_boost: float = 1.0
    localisation_radius: float | None = None
    background_scale: float = 0.02
    window: int = 1
    shift: int | None = None
    multiple_da: bool = False
    hybrid_weight: float = 0.0
    rotate: bool = False
    outer_loops: int = 10
    inner_loops: int = 20
    model_error_std: float = 0.1
    cycles: int = 4000
    burn_in: int = 1000
    spin_up_cycles: int = 1000
    initial_spread: float = 1.0
    climatology_cycles: int = 20000

    def __post_init__(self):
        _choice("model", self.model, MODELS)
        _choice("method", self.method, METHODS)
        _choice("obs", self.obs, OBSERVATIONS)
        if self.window < 1:
            raise ValueError(f"`--window` (cycles per window) must be >= 1, got {self.window}.")
        if self.shift is not None and not 1 <= self.shift <= self.window:
            raise ValueError(
                f"`--shift` must be in [1, window={self.window}] (cycles between windows), "
                f"got {self.shift}."
            )
        if self.method in _WINDOWED:
            stride = self.stride
            if self.cycles < self.window or (self.cycles - self.window) % stride:
                raise ValueError(
                    f"`--cycles` ({self.cycles}) must be `--window` ({self.window}) plus a "
                    f"multiple of the shift ({stride})."
                )
        if self.multiple_da and self.method != "ienks":
            raise ValueError("`--mda` (multiple data assimilation) is for `--method ienks`.")
        if self.rotate and self.method not in _ROTATABLE:
            raise ValueError(
                f"`--rotate` (random rotations of the analysis anomalies) is for the ensemble "
                f"filters {', '.join(_ROTATABLE)}, not {self.method!r}."
            )
        if not 0 <= self.hybrid_weight <= 1:
            raise ValueError(f"`--hybrid-weight` must be in [0, 1], got {self.hybrid_weight}.")
        if self.hybrid_weight > 0 and self.method not in ("4dvar", "incremental-4dvar"):
            raise ValueError("`--hybrid-weight` (ensemble B) is for 4dvar / incremental-4dvar.")
        if self.outer_loops < 1 or self.inner_loops < 1:
            raise ValueError("`--outer-loops` and `--inner-loops` must be >= 1.")
        if not self.model_error_std > 0:
            raise ValueError(f"`--model-error-std` must be > 0, got {self.model_error_std}.")
        if (self.method not in _STATIC_B or self.hybrid_weight > 0) and self.ensemble_size < 2:
            raise ValueError(f"`--ensemble-size` must be >= 2, got {self.ensemble_size}.")
        if not self.inflation > 0:
            raise ValueError(f"`--inflation` must be > 0 (1.0: none), got {self.inflation}.")
        if not self.hyperprior_boost > 0:
            raise ValueError(f"`--hyperprior-boost` must be > 0, got {self.hyperprior_boost}.")
        if self.localisation_radius is not None and not self.localisation_radius > 0:
            raise ValueError(
                f"`--localisation-radius` must be > 0 (grid units), got {self.localisation_radius}."
            )
        if not self.obs_std > 0:
            raise ValueError(f"`--obs-std` must be > 0, got {self.obs_std}.")
        if not self.background_scale > 0:
            raise ValueError(f"`--background-scale` must be > 0, got {self.background_scale}.")
        if self.cycles < 1 or not 0 <= self.burn_in < self.cycles:
            raise ValueError(
                f"Need `--cycles` >= 1 and 0 <= `--burn-in` < cycles, got cycles={self.cycles}, "
                f"burn_in={self.burn_in}."
            )
        if self.steps_per_cycle < 1:
            raise ValueError(f"`--steps-per-cycle` must be >= 1, got {self.steps_per_cycle}.")

    @property
    def stride(self) -> int:
        """Cycles between window starts: `shift`, else 1 for the IEnKS, the window for 4D-Var."""
        if self.shift is not None:
            return self.shift
        return 1 if self.method == "ienks" else self.window

    @property
    def members(self) -> int:
        """Ensemble size actually cycled (1 for 3D-Var / 4D-Var without hybrid B)."""
        if self.method in _STATIC_B and self.hybrid_weight == 0:
            return 1
        return self.ensemble_size

    def replace(self, **changes) -> "TwinConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")


def build_dynamics(config: TwinConfig) -> AbstractDynamics:
    """The physical model named by `config.model`."""
    if config.model == "lorenz63":
        return Lorenz63()
    if config.model == "lorenz96":
        return Lorenz96(n=config.n, forcing=8.0 if config.forcing is None else config.forcing)
    return TwoScaleLorenz96(
        n_slow=config.n, forcing=10.0 if config.forcing is None else config.forcing
    )


def default_dt(config: TwinConfig) -> float:
    """Customary integration steps: 0.05 (Lorenz-96), 0.01 (Lorenz-63), 0.005 (two-scale)."""
    if config.dt is not None:
        return config.dt
    return {"lorenz63": 0.01, "lorenz96": 0.05, "lorenz96-two-scale": 0.005}[config.model]


def build_observation(config: TwinConfig, state_size: int, key) -> AbstractObservation:
    """The observation network named by `config.obs`, with ``R = obs_std² I``."""
    error = GaussianError(config.obs_std)
    if config.obs == "all":
        return full_observation(state_size, error)
    if config.obs == "every-k":
        return every_kth(state_size, config.obs_every, error)
    count = config.obs_count if config.obs_count is not None else max(1, state_size // 2)
    return RandomSubsetObservation(count, state_size, error, key)


def build_method(
    config: TwinConfig, dynamics: AbstractDynamics, climatology=None
) -> AbstractAnalysisMethod | AbstractWindowMethod:
    """The DA method named by `config.method` (variational ones need the climatology)."""
    method = _build_method(config, dynamics, climatology)
    return Rotated(method) if config.rotate else method


def _build_method(config: TwinConfig, dynamics: AbstractDynamics, climatology):
    inflation = multiplicative(config.inflation)
    if config.method == "etkf":
        return ETKF(inflation=inflation)
    if config.method == "enkf-n":
        return EnKFN(hyperprior_boost=config.hyperprior_boost, inflation=inflation)
    localisation = None
    if config.localisation_radius is not None:
        localisation = Localisation(
            config.localisation_radius,
            coordinates=dynamics.coordinates(),
            domain_length=dynamics.domain_length(),
        )
    if config.method == "enkf":
        return EnKF(inflation=inflation, localisation=localisation)
    if config.method == "letkf":
        if localisation is None:
            raise ValueError("LETKF needs `--localisation-radius` (grid units, e.g. 4).")
        return LETKF(localisation=localisation, inflation=inflation)
    if config.method == "ienks":
        return IEnKS(
            window=config.window,
            shift=config.stride,
            iterations=config.outer_loops,
            multiple_da=config.multiple_da,
            inflation=inflation,
        )
    if climatology is None:
        raise ValueError(f"{config.method} needs the climatological covariance (see `run_twin`).")
    B = config.background_scale * climatology
    if config.method == "3dvar":
        return Var3D(B)
    return FourDVar(
        B,
        window=config.window,
        shift=config.stride,
        ensemble_filter=ETKF(inflation=inflation) if config.hybrid_weight > 0 else None,
        hybrid_weight=config.hybrid_weight,
        minimiser="incremental" if config.method == "incremental-4dvar" else "gauss-newton",
        outer_loops=config.outer_loops,
        inner_loops=config.inner_loops,
        model_error_covariance=(
            config.model_error_std**2 * jnp.eye(B.shape[0])
            if config.method == "weak-4dvar"
            else None
        ),
    )


@dataclasses.dataclass
class TwinResult:
    """What [`run_twin`][] returns."""

    config: TwinConfig
    initial_state: jax.Array  # (n,), the truth at time 0 (on the attractor)
    truth: jax.Array  # (K, n), the true state at each analysis time, truth[k] after k+1 cycles
    observations: jax.Array  # (K, p)
    trajectory: Trajectory
    method: AbstractAnalysisMethod | AbstractWindowMethod  # as built (e.g. 3D-Var's B)
    metrics: dict[str, float]


def run_twin(
    config: TwinConfig, seed: int = 0, progress: bool | None = None, chunks: int = 10
) -> TwinResult:
    """Run a whole twin experiment (in the precision JAX is configured for).

    Keys: ``seed`` → (truth start, observation noise, random network, initial ensemble,
    assimilation). The truth starts from the model's default state spun up for
    `spin_up_cycles` plus a random perturbation, so it lies on the attractor. The
    assimilation is one compiled `lax.scan` run in `chunks` pieces (a progress bar on a
    terminal); chunking does not change the numbers. Timings: `compile_seconds`, and
    `seconds_per_cycle` measured on the compiled code (steady state).
    """
    key = jax.random.key(seed)
    k_start, k_obs, k_network, k_init, k_da, k_clim = jax.random.split(key, 6)
    dynamics = build_dynamics(config)
    model = Resolvent(dynamics, dt=default_dt(config), steps_per_cycle=config.steps_per_cycle)
    n = dynamics.state_size

    x_start = dynamics.default_initial_state() + 0.1 * jax.random.normal(k_start, (n,))
    x0 = eqx.filter_jit(spin_up)(model, x_start, config.spin_up_cycles)
    truth = eqx.filter_jit(simulate)(model, x0, config.cycles)[1:]
    observation = build_observation(config, n, k_network)
    y = eqx.filter_jit(synthesise_observations)(observation, truth, k_obs)

    climatology = None
    if config.method in _STATIC_B:
        # B from an independent long run (not the experiment's own truth).
        x_clim = eqx.filter_jit(spin_up)(model, x_start + jax.random.normal(k_clim, (n,)), 500)
        climatology = climatological_covariance(
            eqx.filter_jit(simulate)(model, x_clim, config.climatology_cycles)
        )
    method = build_method(config, dynamics, climatology)
    members = config.members
    spread = 0.0 if members == 1 else config.initial_spread
    E0 = initial_ensemble(k_init, x0, members, spread)

    # Equal chunks (a divisor of the number of windows) share one compiled function.
    windowed = config.method in _WINDOWED
    window, stride = (config.window, config.stride) if windowed else (1, 1)
    windows = (config.cycles - window) // stride + 1
    chunks = max(c for c in range(1, max(1, min(chunks, windows)) + 1) if windows % c == 0)
    per_chunk = windows // chunks  # windows (or cycles) per chunk
    size = (per_chunk - 1) * stride + window  # cycles of observations per chunk
    weights = None
    if windowed:
        weights = window_weights(window, stride, windows, method.multiple_da)

    def chunk(E, y_chunk, first, t0, weights):
        if not windowed:
            return assimilate(
                model, observation, method, y_chunk, E, k_da, t0=t0, first_cycle=first
            )
        return assimilate_windows(
            model, observation, method, y_chunk, E, k_da, t0=t0, first_cycle=first, weights=weights
        )

    def chunk_weights(c):
        part = slice(c * per_chunk, (c + 1) * per_chunk)
        return None if weights is None else jax.tree.map(lambda w: w[part], weights)

    start = time.perf_counter()
    compiled = (
        jax.jit(chunk)
        .lower(E0, y[:size], jnp.asarray(0), jnp.asarray(0.0), chunk_weights(0))
        .compile()
    )
    compile_seconds = time.perf_counter() - start

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    parts, E, run_seconds = [], E0, 0.0
    with tqdm(total=config.cycles, desc=f"{config.method} cycles", disable=not progress) as bar:
        for c in range(chunks):
            first = c * per_chunk * stride
            t0 = first * model.cycle_length
            start = time.perf_counter()
            part = compiled(
                E, y[first : first + size], jnp.asarray(first), jnp.asarray(t0), chunk_weights(c)
            )
            jax.block_until_ready(part)
            run_seconds += time.perf_counter() - start
            parts.append(part)
            E = part.final_ensemble
            bar.update(per_chunk * stride if c else size)
    trajectory = Trajectory.concatenate(parts)

    # Window methods report one analysis per window, at its end (cycle jS + L - 1).
    ends = window - 1 + stride * np.arange(windows)
    results = metrics.summary(truth[ends], trajectory, int(np.sum(ends < config.burn_in)))
    if trajectory.converged is not None:
        results["unconverged_windows"] = int(np.sum(~np.asarray(trajectory.converged)))
    results.update(
        seconds_per_cycle=run_seconds / config.cycles,
        compile_seconds=compile_seconds,
        cycles=config.cycles,
        burn_in=config.burn_in,
        finite=bool(np.all(np.isfinite(np.asarray(trajectory.analysis_mean)))),
    )
    return TwinResult(config, x0, truth, y, trajectory, method, results)
