"""Malartic, Farchi and Bocquet (2022): global and local parameters learnt online by local EnKFs.

Reproduces the qualitative claims of *State, global, and local parameter estimation
using local ensemble Kalman filters: applications to online machine learning of chaotic
dynamics* (Q. J. R. Meteorol. Soc. 148, 2167-2193, 2022): a local EnKF on the augmented
state ``[x; θ_local; θ_global]`` learns *global* parameters (a surrogate dynamical core
shared by every site) and *local* parameters (a forcing attached to each grid point)
together with the state, with domain localisation (LETKF), covariance localisation
(EnKF) or both at once for non-local observations.

Case (a), Lorenz-96 (section 4 of the paper):

- truth: Lorenz-96, n = 40, spatially varying forcing ``F_i = 8 + A sin(2π i / n)``
  (``--forcing-amplitude``), one RK4 step of Δt = 0.05 per cycle; every variable
  observed each cycle with noise of std 1;
- surrogate: ``ẋ_i = Σ_m a_m r_m(x)_i + F_i``: the 17 non-constant local quadratic
  monomials of `hybridda.dynamics.MonomialDynamics` (radius 2; the constant monomial is
  replaced by the local forcing, which it would duplicate), with global coefficients
  ``a`` and one local forcing ``F_i`` per site; the true model lies in this span;
- filters, both through `hybridda.filters.ParameterAugmentation` with
  ``local_parameters`` (each ``F_i`` is analysed like a state variable at site ``i``):
  the LETKF (local domains, Gaspari-Cohn radius ``--radius``; the global coefficients
  by the mean of their local analyses) and the stochastic EnKF with covariance
  localisation (same radius; the coefficients' covariances with each observation
  tapered by the mean of the state variables' tapers, the counterpart of the LETKF's
  rule); N = 20, multiplicative inflation of the whole ``[x; θ]`` (1.03 / 1.05);
- prior: coefficients drawn around the truth with std ``--coefficient-prior-std``
  (0.2: a wrong model, RMS error 0.18 over the 17; the paper's experiments start
  further away), local forcings all 8 (no pattern) with std ``--forcing-prior-std``.

Case (b), multi-layer Lorenz-96 with radiances (section 5 of the paper):

- truth: `hybridda.dynamics.MultiLayerLorenz96` (8 layers × 20 columns,
  vertical diffusion Ω = 1), forcing decreasing linearly with height from 8 to 4;
  observed through `hybridda.observe.RadianceObservation` (``--channels`` channels,
  default 8, above every ``--column-step``-th column, default every other one, std
  0.5): vertical weighted averages, non-local observations;
- surrogate (``--local-forcing layer``, default): the same model with one learnt
  forcing ``F_z`` per layer (prior 6 everywhere, std 1) and the vertical coupling Ω
  learnt too (prior 0.5, std 0.2): ``F_z`` is a local parameter in the vertical and a
  global one in the horizontal (`hybridda.filters.LocalParameters` with
  ``global_axes=(0,)``), Ω a global parameter (the dynamics);
  ``--local-forcing variable``: one forcing ``F_{z,i}`` per variable (160), Ω known;
- filter: `hybridda.filters.DomainCovarianceEnKF`, domain localisation in the
  horizontal (radius ``--horizontal-radius`` columns) and covariance localisation in
  the vertical (radius ``--vertical-radius`` layers, radiances at their channel's mean
  height), as the paper (after Farchi and Bocquet 2019) does for radiances: the state
  and per-variable forcings by their domains, the per-layer forcings and Ω by the mean
  of their increments over the domains, the forcings' covariances tapered vertically
  at their layer; N = 16, multiplicative inflation 1.05 of the state only, and a random
  walk of std 0.01 per cycle of the forcings (0.002 of Ω): without it their spread
  collapsed within 200 cycles (0.8 to 0.007) and learning stopped; inflating them as
  well made them diverge.

Every filter is compared with the same filter run with the true model on the same
observations: the surrogate holding the true parameters with zero spread (its state
analysis is then exactly that of the state-only filter), run in the same compiled
program (a `vmap` over the two initial ensembles), and the learnt surrogate's valid time
(forecasts from second-half analyses, normalised RMSE 0.5, in Lyapunov times of the
truth) with that of the true model from the same analyses.

Deviations from the paper: fewer cycles (20000 for (a), 10000 for (b)); our own
settings (ensemble sizes, inflation, radii, priors), not the paper's tuned ones; the
surrogate's constant monomial replaced by the local forcing; a stochastic filter
(perturbed observations) for the combined localisation where the paper uses a
deterministic square-root filter with augmented ensembles; a multi-layer model of 8 × 20
variables, smaller than the paper's; the rule for the global coefficients in the
covariance-localised EnKF is ours.

Usage::

    python paper/malartic2022_local_parameters.py --quick     # case (a), 300 cycles
    python paper/malartic2022_local_parameters.py             # (a) 20000, (b) 10000 cycles
    python paper/malartic2022_local_parameters.py --quick --cases a,b   # (b) too, small
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jaxtyping import Array, Float  # noqa: E402

import hybridda  # noqa: E402
from hybridda import metrics  # noqa: E402
from hybridda.dynamics import (  # noqa: E402
    AbstractDynamics,
    Lorenz96,
    MonomialDynamics,
    MultiLayerLorenz96,
)
from hybridda.filters import (  # noqa: E402
    LETKF,
    AugmentedModel,
    DomainCovarianceEnKF,
    EnKF,
    Localisation,
    ParameterAugmentation,
    multiplicative,
)
from hybridda.observe import (  # noqa: E402
    GaussianError,
    RadianceObservation,
    full_observation,
    radiance_weights,
)

CASES = ("a", "b")


class LocallyForcedMonomials(AbstractDynamics):
    """``ẋ_i = Σ_m a_m r_m(x)_i + F_i``: global monomial coefficients, local forcings.

    The monomials are those of `MonomialDynamics` without the constant (the local
    forcing takes its place): 17 for radius 2.
    """

    coefficients: Float[Array, " monomials"]
    forcing: Float[Array, " n"]
    n: int = eqx.field(static=True, default=40)

    @property
    def state_size(self) -> int:
        return self.n

    def tendency(self, t, x, args=None):
        features = MonomialDynamics(self.n, jnp.zeros(18)).features(x)[:, 1:]
        return features @ self.coefficients + self.forcing

    @staticmethod
    def true_coefficients() -> Float[Array, " monomials"]:
        """Lorenz-96's 17 non-constant coefficients."""
        return MonomialDynamics.lorenz96(40, 0.0).coefficients[1:]


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (written to config.json)."""

    cases: tuple[str, ...] = CASES
    # (a) Lorenz-96
    n: int = 40
    forcing_amplitude: float = 1.5
    dt: float = 0.05
    obs_std: float = 1.0
    ensemble_size: int = 20
    radius: float = 4.0
    inflation_letkf: float = 1.03
    inflation_enkf: float = 1.05
    coefficient_prior_std: float = 0.2
    forcing_prior_mean: float = 8.0
    forcing_prior_std: float = 1.0
    cycles: int = 20000
    # (b) multi-layer Lorenz-96 with radiances
    layers: int = 8
    columns: int = 20
    channels: int = 8
    column_step: int = 2
    radiance_std: float = 0.5
    ensemble_size_b: int = 16
    horizontal_radius: float = 3.0
    vertical_radius: float = 2.0
    inflation_b: float = 1.05
    parameter_inflation_b: float = 1.0
    forcing_noise_std_b: float = 0.01
    local_forcing: str = "layer"
    coupling_prior_mean_b: float = 0.5
    coupling_prior_std_b: float = 0.2
    coupling_noise_std_b: float = 0.002
    forcing_prior_mean_b: float = 6.0
    forcing_prior_std_b: float = 1.0
    cycles_b: int = 10000
    chunk: int = 1000
    forecast_starts: int = 50
    forecast_leads: int = 100
    forecast_leads_b: int = 300  # slower error growth (λ ≈ 0.6 against 1.6)
    lyapunov_cycles: int = 2000
    spin_up_cycles: int = 500
    initial_spread: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.cases or not set(self.cases) <= set(CASES):
            raise ValueError(f"`--cases` must be among {CASES}, got {self.cases}.")
        if min(self.radius, self.horizontal_radius, self.vertical_radius) <= 0:
            raise ValueError("Localisation radii (`--radius`, `--*-radius`) must be > 0.")
        if min(self.ensemble_size, self.ensemble_size_b) < 2:
            raise ValueError("Ensemble sizes must be >= 2.")
        if min(self.coefficient_prior_std, self.forcing_prior_std, self.forcing_prior_std_b) <= 0:
            raise ValueError("Prior stds (`--*-prior-std`) must be > 0.")
        if self.local_forcing not in ("layer", "variable"):
            raise ValueError(
                f"`--local-forcing` must be 'layer' or 'variable', got {self.local_forcing!r}."
            )
        if self.column_step < 1:
            raise ValueError(f"`--column-step` must be >= 1, got {self.column_step}.")
        if (
            self.coupling_prior_std_b <= 0
            or min(self.forcing_noise_std_b, self.coupling_noise_std_b) < 0
        ):
            raise ValueError("The coupling's prior std must be > 0 and random walks >= 0.")
        for case, flag, cycles, leads in (
            ("a", "--cycles", self.cycles, self.forecast_leads),
            ("b", "--cycles-b", self.cycles_b, self.forecast_leads_b),
        ):
            if case in self.cases and cycles < 2 * leads:
                raise ValueError(
                    f"Need `{flag}` >= {2 * leads} (twice the forecast leads of case ({case}): "
                    f"forecasts start in the second half), got {cycles}."
                )
        if self.chunk < 1:
            raise ValueError(f"`--chunk` must be >= 1, got {self.chunk}.")
        if (
            min(
                self.forecast_starts,
                self.forecast_leads,
                self.forecast_leads_b,
                self.lyapunov_cycles,
            )
            < 1
        ):
            raise ValueError("Forecast starts, leads and Lyapunov cycles must be >= 1.")


# Case (a) only, 300 cycles: within the test budget (case (b) compiles two more
# programs; `--quick --cases a,b` runs it too, on the full grid for 1000 cycles).
QUICK = {
    "cases": ("a",),
    "cycles": 300,
    "cycles_b": 1000,
    "chunk": 1000,
    "spin_up_cycles": 200,
    "forecast_starts": 20,
    "lyapunov_cycles": 500,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="truth, noise and ensemble seed")
    parser.add_argument("--out", type=Path, default=Path("runs/malartic2022"))
    parser.add_argument(
        "--quick", action="store_true", help="300 cycles of (a), 1000 of (b) (seconds)"
    )
    parser.add_argument("--cases", help="comma-separated cases to run: a (L96), b (multi-layer)")
    parser.add_argument("--cycles", type=int, help="cycles of case (a) (default 20000)")
    parser.add_argument("--cycles-b", type=int, help="cycles of case (b) (default 10000)")
    parser.add_argument("--chunk", type=int, help="cycles per compiled chunk (progress)")
    parser.add_argument("--ensemble-size", type=int, help="members, case (a) (20)")
    parser.add_argument("--radius", type=float, help="localisation radius, case (a) (4)")
    parser.add_argument("--forcing-amplitude", type=float, help="A in F_i = 8 + A sin (1.5)")
    parser.add_argument("--coefficient-prior-std", type=float, help="case (a) (0.2)")
    parser.add_argument("--forcing-prior-std", type=float, help="case (a) (1)")
    parser.add_argument("--horizontal-radius", type=float, help="case (b), columns (3)")
    parser.add_argument("--vertical-radius", type=float, help="case (b), layers (2)")
    parser.add_argument("--channels", type=int, help="radiance channels, case (b) (8)")
    parser.add_argument("--column-step", type=int, help="observe every k-th column, (b) (2)")
    parser.add_argument("--ensemble-size-b", type=int, help="members, case (b) (16)")
    parser.add_argument(
        "--local-forcing",
        choices=("layer", "variable"),
        help="case (b): one forcing per layer with the coupling learnt too (default), or "
        "one per variable with the coupling known",
    )
    parser.add_argument(
        "--forcing-noise-std-b", type=float, help="random walk of the forcings, (b) (0.01)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    changes = dict(QUICK) if args.quick else {}
    for name in (
        "cycles",
        "cycles_b",
        "chunk",
        "ensemble_size",
        "radius",
        "forcing_amplitude",
        "coefficient_prior_std",
        "forcing_prior_std",
        "horizontal_radius",
        "vertical_radius",
        "channels",
        "column_step",
        "ensemble_size_b",
        "local_forcing",
        "forcing_noise_std_b",
    ):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.cases is not None:
        changes["cases"] = tuple(case.strip() for case in args.cases.split(","))
    try:
        config = Config(seed=args.seed, **changes)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    from tqdm.auto import tqdm

    key_a, key_b = jax.random.split(jax.random.key(config.seed))
    runs = [("a", name) for name in ("letkf", "enkf") if "a" in config.cases]
    runs += [("b", "domain-covariance")] if "b" in config.cases else []
    progress = tqdm(runs, desc="online local EnKFs", unit="run", disable=args.no_progress)
    results, series = {}, {}
    twins = {}
    for case, name in progress:
        progress.set_postfix(run=f"({case}) {name}")
        if case not in twins:
            twins[case] = (lorenz96_twin if case == "a" else multilayer_twin)(
                config, key_a if case == "a" else key_b
            )
        tic = time.perf_counter()
        result, history = run_filter(config, twins[case], name, case)
        result["seconds"] = time.perf_counter() - tic
        results[f"{case}_{name}"], series[f"{case}_{name}"] = result, history

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    np.savez(
        args.out / "series.npz",
        **{
            f"{run}/{key}": value for run, values in series.items() for key, value in values.items()
        },
    )
    _figure(args.out / "malartic2022_local_parameters.png", config, results, series)
    _print_table(results)
    return results


# ----------------------------------------------------------------------------- twins


def lorenz96_twin(config: Config, key):
    """Case (a): truth with F_i = 8 + A sin(2π i / n), full noisy observations, surrogate."""
    n = config.n
    true_forcing = 8.0 + config.forcing_amplitude * np.sin(2 * np.pi * np.arange(n) / n)
    truth_model = hybridda.Resolvent(Lorenz96(n, jnp.asarray(true_forcing)), config.dt)
    observation = full_observation(n, GaussianError(config.obs_std))
    # The prior: coefficients drawn around the truth, forcing without its pattern.
    true_coefficients = np.asarray(LocallyForcedMonomials.true_coefficients())
    draws = np.random.default_rng([config.seed, 2022]).standard_normal(17)
    surrogate = LocallyForcedMonomials(
        jnp.asarray(true_coefficients + config.coefficient_prior_std * draws),
        jnp.full(n, config.forcing_prior_mean),
        n=n,
    )
    model = AugmentedModel(
        hybridda.Resolvent(surrogate, config.dt),
        where=lambda m: (m.dynamics.coefficients, m.dynamics.forcing),
        local_where=lambda m: m.dynamics.forcing,
    )
    prior_std = np.r_[
        np.full(n, config.forcing_prior_std), np.full(17, config.coefficient_prior_std)
    ]
    true_theta = np.r_[true_forcing, true_coefficients]
    twin = _simulate_twin(
        config,
        truth_model,
        observation,
        model,
        config.cycles,
        key,
        config.ensemble_size,
        prior_std,
        true_theta,
    )
    return twin | {"true_theta": true_theta, "local_size": n}


def multilayer_twin(config: Config, key):
    """Case (b): multi-layer truth with F decreasing with height, radiances, surrogate."""
    P, n = config.layers, config.columns
    true_forcing = np.broadcast_to(np.linspace(8.0, 4.0, P)[:, None], (P, n))
    truth_dynamics = MultiLayerLorenz96(layers=P, n=n, forcing=jnp.asarray(true_forcing))
    truth_model = hybridda.Resolvent(truth_dynamics, config.dt)
    observation = RadianceObservation(
        radiance_weights(P, config.channels),
        n,
        GaussianError(config.radiance_std),
        jnp.arange(0, n, config.column_step),
    )
    if config.local_forcing == "variable":  # one forcing per variable, Ω known
        surrogate = MultiLayerLorenz96(
            layers=P, n=n, forcing=jnp.full((P, n), config.forcing_prior_mean_b)
        )
        model = AugmentedModel(
            hybridda.Resolvent(surrogate, config.dt),
            where=lambda m: m.dynamics.forcing,
            local_where=lambda m: m.dynamics.forcing,
        )
        true_theta = true_forcing.ravel()
        prior_std = np.full(P * n, config.forcing_prior_std_b)
        noise_std = np.full(P * n, config.forcing_noise_std_b)
        local = model.local_parameters()
    else:  # one forcing per layer (local vertically, global horizontally), Ω learnt
        surrogate = MultiLayerLorenz96(
            layers=P,
            n=n,
            forcing=jnp.full(P, config.forcing_prior_mean_b),
            coupling=config.coupling_prior_mean_b,
        )
        model = AugmentedModel(
            hybridda.Resolvent(surrogate, config.dt),
            where=lambda m: (m.dynamics.forcing, m.dynamics.coupling),
            local_where=lambda m: m.dynamics.forcing,
        )
        true_theta = np.append(true_forcing[:, 0], truth_dynamics.coupling)
        prior_std = np.append(np.full(P, config.forcing_prior_std_b), config.coupling_prior_std_b)
        noise_std = np.append(np.full(P, config.forcing_noise_std_b), config.coupling_noise_std_b)
        # Layer z at (0, z): its horizontal coordinate is ignored (global along axis 0).
        layer_position = np.stack([np.zeros(P), np.arange(P)], axis=1)
        local = model.local_parameters(layer_position, global_axes=(0,))
    twin = _simulate_twin(
        config,
        truth_model,
        observation,
        model,
        config.cycles_b,
        key,
        config.ensemble_size_b,
        prior_std,
        true_theta,
    )
    return twin | {
        "true_theta": true_theta,
        "local_size": local.size,
        "local_parameters": local,
        "parameter_noise_std": noise_std,
        "coordinates": truth_dynamics.coordinates(),
        "domain_length": truth_dynamics.domain_length(),
    }


def _simulate_twin(
    config, truth_model, observation, model, cycles, key, ensemble_size, prior_std, true_theta
):
    """Truth, observations and the two initial ensembles (the prior; the true parameters
    with zero spread), in one compiled function."""
    k_start, k_obs, k_state, k_parameters, k_da = jax.random.split(key, 5)

    @eqx.filter_jit
    def twin():
        x_start = truth_model.dynamics.default_initial_state()
        x_start = x_start + 0.1 * jax.random.normal(k_start, x_start.shape)
        # One integration (one compiled loop) for the spin-up and the truth.
        states = hybridda.simulate(truth_model, x_start, config.spin_up_cycles + cycles)
        x0, truth = states[config.spin_up_cycles], states[config.spin_up_cycles + 1 :]
        y = hybridda.synthesise_observations(observation, truth, k_obs)
        members = hybridda.initial_ensemble(k_state, x0, ensemble_size, config.initial_spread)
        initial = model.initial_ensemble(k_parameters, members, jnp.asarray(prior_std))
        reference = model.join(members, jnp.tile(jnp.asarray(true_theta), (ensemble_size, 1)))
        return truth, y, initial, reference

    truth, y, initial, reference = twin()
    return {
        "model": model,
        "truth_model": truth_model,
        "observation": observation,
        "truth": truth,
        "y": y,
        "initial": initial,
        "reference_initial": reference,
        "key": k_da,
    }


# --------------------------------------------------------------------------- filters


def build_method(config: Config, twin, name: str) -> ParameterAugmentation:
    """The filter `name` on the augmented state. In case (a) its inflation acts on the
    whole ``[x; θ]`` (as in Bocquet et al. 2021; with the state's inflation alone the
    parameter spread collapsed and the LETKF diverged); in case (b) on the state block
    only (inflating the forcings by 1.05 or 1.02 every cycle made them diverge), and a
    random walk keeps the forcings' spread alive."""
    model, observation = twin["model"], twin["observation"]
    # Case (a): one forcing per state variable, at its position; case (b): the twin's.
    local = twin.get("local_parameters", None) or model.local_parameters()
    if name == "letkf":
        localisation = Localisation(config.radius)
        filter_ = LETKF(localisation, domains=localisation.local_domains(observation))
        inflation = config.inflation_letkf
    elif name == "enkf":
        filter_ = EnKF(localisation=Localisation(config.radius))
        inflation = config.inflation_enkf
    else:

        def geometry(radius, axis):
            return Localisation(
                radius,
                coordinates=twin["coordinates"],
                domain_length=twin["domain_length"],
                axes=(axis,),
            )

        filter_ = DomainCovarianceEnKF(
            domain=geometry(config.horizontal_radius, 0),
            covariance=geometry(config.vertical_radius, 1),
        )
        inflation = config.inflation_b
    if name != "domain-covariance":
        filter_ = eqx.tree_at(lambda f: f.inflation, filter_, multiplicative(inflation))
        return ParameterAugmentation(filter_, local_parameters=local)
    return ParameterAugmentation(
        filter_,
        state_inflation=multiplicative(inflation),
        parameter_inflation=multiplicative(config.parameter_inflation_b),
        parameter_noise_std=twin["parameter_noise_std"],
        local_parameters=local,
    )


def run_filter(config: Config, twin, name: str, case: str):
    """The online run and the true-model reference (one vmapped program), chunked."""
    model, observation = twin["model"], twin["observation"]
    method = build_method(config, twin, name)
    truth, y = twin["truth"], twin["y"]
    K = truth.shape[0]
    chunk = min(config.chunk, K)

    # A random walk of the parameters acts in the online run only: the reference keeps
    # the true parameters (zero spread, zero walk).
    noise = method.parameter_noise_std
    noise_pair = None if noise is None else jnp.stack([noise, jnp.zeros_like(noise)])

    @eqx.filter_jit
    def run_chunk(Z_pair, y_chunk, first_cycle):
        def one(Z, noise_std):
            walk = (
                method
                if noise_std is None
                else eqx.tree_at(lambda m: m.parameter_noise_std, method, noise_std)
            )
            trajectory = hybridda.assimilate(
                model,
                observation,
                walk,
                y_chunk,
                Z,
                twin["key"],
                t0=first_cycle * config.dt,
                first_cycle=first_cycle,
            )
            return trajectory.final_ensemble, trajectory.analysis_mean

        return jax.vmap(one)(Z_pair, noise_pair)

    Z = jnp.stack([twin["initial"], twin["reference_initial"]])
    means = []
    for first in range(0, K, chunk):
        Z, analysis_mean = run_chunk(Z, y[first : first + chunk], jnp.asarray(first))
        means.append(analysis_mean)
    # The diagnostics in NumPy (eager JAX would compile every small operation).
    analysis_mean = np.concatenate([np.asarray(m) for m in means], axis=1)  # (2, K, n + q)
    n = observation.state_size
    states, theta = analysis_mean[..., :n], analysis_mean[..., n:]
    rmse = np.sqrt(np.mean((states - np.asarray(truth)[None]) ** 2, axis=-1))  # (2, K)
    q_local, true_theta = twin["local_size"], twin["true_theta"]
    local_error = _rms(theta[0, :, :q_local] - true_theta[None, :q_local])
    global_error = (
        _rms(theta[0, :, q_local:] - true_theta[None, q_local:])
        if theta.shape[-1] > q_local
        else None
    )
    last = K - max(K // 10, 1)
    learnt_forcing = theta[0, last:, :q_local].mean(axis=0)
    true_forcing = true_theta[:q_local]
    half = K // 2
    prior_mean = np.asarray(twin["initial"])[:, n:].mean(axis=0)  # of the drawn ensemble
    result = {
        "cycles": K,
        "local_forcing_error_initial": float(_rms(prior_mean[:q_local] - true_forcing)),
        "local_forcing_error_final": float(np.mean(local_error[last:])),
        "local_forcing_pattern_correlation": float(np.corrcoef(learnt_forcing, true_forcing)[0, 1]),
        "rmse_analysis_online": float(np.mean(rmse[0, half:])),
        "rmse_analysis_true_model": float(np.mean(rmse[1, half:])),
        "averaging_window": [half, K],
        "learnt_local_forcing": [float(v) for v in learnt_forcing],
        "true_local_forcing": [float(v) for v in true_forcing],
    }
    result["rmse_ratio_online_to_true_model"] = (
        result["rmse_analysis_online"] / result["rmse_analysis_true_model"]
    )
    # The mean level of the forcing is only weakly identifiable (a shift of it is
    # nearly compensated by the linear coefficients on the attractor, case (a)): the
    # error of the pattern, spatial means removed, and the offset of the mean.
    anomaly = (learnt_forcing - learnt_forcing.mean()) - (true_forcing - true_forcing.mean())
    result["local_forcing_pattern_error_final"] = float(np.sqrt(np.mean(anomaly**2)))
    result["local_forcing_pattern_error_initial"] = float(np.std(true_forcing))  # flat prior
    result["local_forcing_mean_offset"] = float(learnt_forcing.mean() - true_forcing.mean())
    if case == "b":  # the vertical profile: the mean over the columns of each layer
        shape = (config.layers, -1)  # (P, n) per variable, (P, 1) per layer
        learnt_profile = learnt_forcing.reshape(shape).mean(axis=1)
        true_profile = true_forcing.reshape(shape).mean(axis=1)
        result["forcing_profile_learnt"] = [float(v) for v in learnt_profile]
        result["forcing_profile_true"] = [float(v) for v in true_profile]
        result["forcing_profile_error_final"] = float(
            np.sqrt(np.mean((learnt_profile - true_profile) ** 2))
        )
        result["forcing_profile_error_initial"] = float(
            np.sqrt(np.mean((config.forcing_prior_mean_b - true_profile) ** 2))
        )
        result["forcing_profile_correlation"] = float(
            np.corrcoef(learnt_profile, true_profile)[0, 1]
        )
    skill = _surrogate_skill(
        config,
        twin,
        jnp.asarray(theta[0, last:].mean(axis=0)),
        jnp.asarray(states[0]),
        config.forecast_leads if case == "a" else config.forecast_leads_b,
    )
    result["valid_time"] = skill
    history = {
        "local_forcing_error": np.asarray(local_error),
        "rmse_analysis": np.asarray(rmse[0]),
        "rmse_analysis_true_model": np.asarray(rmse[1]),
    }
    if global_error is not None:
        result["coefficient_error_initial"] = float(
            _rms(prior_mean[q_local:] - true_theta[q_local:])
        )
        result["coefficient_error_final"] = float(np.mean(global_error[last:]))
        result["learnt_coefficients"] = [float(v) for v in theta[0, last:, q_local:].mean(0)]
        history["coefficient_error"] = np.asarray(global_error)
    return result, history


def _surrogate_skill(config: Config, twin, theta, analyses, leads: int) -> dict:
    """Valid time of the learnt surrogate (the parameters' mean over the last tenth of
    the cycles): forecasts from the online analyses at `forecast_starts` cycles of the
    second half and from the true states there, against the true model from the same
    analyses; normalised RMSE threshold 0.5, in model time and Lyapunov times of the
    truth (leading exponent from `lyapunov_cycles` cycles)."""
    truth = twin["truth"]
    K = truth.shape[0]
    starts = jnp.asarray(np.linspace(K // 2, K - 1 - leads, config.forecast_starts).astype(int))
    curves, exponent = _skill_curves(
        twin["model"], twin["truth_model"], theta, truth, analyses, starts, leads, config
    )
    valid = {}
    cycle = twin["truth_model"].cycle_length
    for name, curve in zip(
        ("learnt_surrogate", "true_model", "learnt_from_truth"), curves, strict=True
    ):
        times = metrics.valid_time(curve, cycle, exponent)
        valid[name] = float(times.lyapunov_time)
        valid[f"{name}_exceeded"] = bool(times.exceeded)
    valid["lyapunov_exponent"] = float(exponent)
    return valid


@eqx.filter_jit
def _skill_curves(model, truth_model, theta, truth, analyses, starts, leads, config):
    """Normalised RMSE vs lead of the learnt surrogate and of the true model from the
    analyses, and of the surrogate from the truth; the truth's leading exponent."""
    surrogate = model.with_parameters(theta)
    climatology = metrics.climatological_std(truth)
    initial = analyses[starts]
    curves = [
        metrics.forecast_skill(m, truth, starts, leads, x, climatology).normalised_rmse
        for m, x in ((surrogate, initial), (truth_model, initial), (surrogate, truth[starts]))
    ]
    exponent = metrics.lyapunov_spectrum(
        truth_model, truth[0], config.lyapunov_cycles, count=1, key=jax.random.key(config.seed)
    )[0]
    return curves, exponent


def _rms(values, axis=-1):
    return np.sqrt(np.mean(np.asarray(values) ** 2, axis=axis))


# --------------------------------------------------------------------------- outputs


def _figure(path, config, results, series):
    import matplotlib.pyplot as plt

    runs = list(results)
    fig, axes = plt.subplots(len(runs), 3, figsize=(14, 3.6 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs, strict=True):
        history, result = series[run], results[run]
        cycles = np.arange(1, result["cycles"] + 1)
        ax = row[0]
        ax.semilogy(cycles, history["local_forcing_error"], label="local forcing RMSE")
        if "coefficient_error" in history:
            label = "global coefficient RMSE" if run.startswith("a") else "coupling Ω error"
            ax.semilogy(cycles, history["coefficient_error"], label=label)
        ax.set_xlabel("cycle")
        ax.set_title(f"({run[0]}) {run[2:]}: parameter errors")
        ax.legend(fontsize=8)
        ax = row[1]
        window = max(result["cycles"] // 100, 1)
        kernel = np.ones(window) / window
        for key, label in (
            ("rmse_analysis", "online (learnt)"),
            ("rmse_analysis_true_model", "true model"),
        ):
            smooth = np.convolve(history[key], kernel, mode="valid")
            ax.semilogy(cycles[window - 1 :], smooth, label=label)
        ax.set_xlabel("cycle")
        ax.set_title(f"analysis RMSE ({window}-cycle mean)")
        ax.legend(fontsize=8)
        ax = row[2]
        learnt, true = (
            np.asarray(result["learnt_local_forcing"]),
            np.asarray(result["true_local_forcing"]),
        )
        if run.startswith("a"):
            ax.plot(true, "k--", label="truth")
            ax.plot(learnt, label="learnt (last 10 %)")
            ax.set_xlabel("site i")
            ax.set_ylabel("F_i")
        else:  # layer means against height
            shape = (
                (config.layers, config.columns)
                if config.layers * config.columns == len(learnt)
                else (len(learnt), 1)
            )
            layers = np.arange(shape[0])
            ax.plot(true.reshape(shape).mean(axis=1), layers, "k--", label="truth")
            label = "learnt, column mean" if shape[1] > 1 else "learnt (per layer)"
            ax.plot(learnt.reshape(shape).mean(axis=1), layers, label=label)
            spread = learnt.reshape(shape).std(axis=1)
            ax.fill_betweenx(
                layers,
                learnt.reshape(shape).mean(axis=1) - spread,
                learnt.reshape(shape).mean(axis=1) + spread,
                alpha=0.3,
            )
            ax.set_xlabel("F_z")
            ax.set_ylabel("layer z")
        ax.set_title(
            f"local forcing, correlation {result['local_forcing_pattern_correlation']:.2f}"
        )
        ax.legend(fontsize=8)
    fig.suptitle(f"Online learning of global and local parameters (seed {config.seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print_table(results):
    header = ("run", "coef RMSE", "forcing RMSE", "pattern RMSE", "corr", "rmse_a vs true")
    print(
        f"\n{header[0]:<20} {header[1]:>15} {header[2]:>14} {header[3]:>14} "
        f"{header[4]:>5} {header[5]:>16}"
    )
    for run, result in results.items():
        coefficients = (
            f"{result['coefficient_error_initial']:.3g} → {result['coefficient_error_final']:.3g}"
            if "coefficient_error_final" in result
            else "—"
        )
        forcing = (
            f"{result['local_forcing_error_initial']:.3g} → "
            f"{result['local_forcing_error_final']:.3g}"
        )
        pattern = (
            f"{result['local_forcing_pattern_error_initial']:.3g} → "
            f"{result['local_forcing_pattern_error_final']:.3g}"
        )
        print(
            f"{run:<20} {coefficients:>15} {forcing:>14} {pattern:>14} "
            f"{result['local_forcing_pattern_correlation']:5.2f} "
            f"{result['rmse_analysis_online']:.3f} vs {result['rmse_analysis_true_model']:.3f}"
            f"  ({result['seconds']:.0f} s)"
        )
        if run.startswith("b") and "learnt_coefficients" in result:
            print(f"{'':<20} coupling Ω learnt {result['learnt_coefficients'][0]:.3f} (truth 1)")
        valid = result["valid_time"]
        print(
            f"{'':<20} valid time (Lyapunov times): learnt "
            f"{valid['learnt_surrogate']:.2f}, true model {valid['true_model']:.2f} "
            f"(from the analyses), learnt from the truth {valid['learnt_from_truth']:.2f}"
        )
        if "forcing_profile_correlation" in result:
            print(
                f"{'':<20} vertical profile (column means): RMSE "
                f"{result['forcing_profile_error_initial']:.3g} → "
                f"{result['forcing_profile_error_final']:.3g}, correlation "
                f"{result['forcing_profile_correlation']:.2f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
