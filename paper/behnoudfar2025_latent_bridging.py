"""Behnoudfar et al. (2025): bridging a model hierarchy with latent data assimilation.

A toy version of *Bridging the model hierarchy through latent data assimilation*
(Behnoudfar, Moser, Bocquet et al., 2025): an idealized model that is statistically
accurate for ENSO but sparse in variables corrects, through DA in a VAE's latent space,
a high-resolution "operational" model with a biased ENSO. Everything below the method
is our own construction (the paper corrects CMIP6 fields with a conceptual model):

- **idealized model** (the reference): `hybridda.dynamics.RechargeOscillator`, the
  recharge oscillator (Jin 1997) with state-dependent noise (B = 1.5 K⁻¹): positive
  skewness of the Niño-3-like SST anomaly ``T_E`` and strong El Niños. Euler–Maruyama,
  ``dt = 0.1`` month. Its only output used here is ``T_E``, monthly.
- **operational model** (ours): SST and thermocline-depth anomalies at ``n_lon = 24``
  points on the equator from 130°E to 80°W (state size 48). Its ENSO is the same
  oscillator with four systematic biases we chose: (i) additive noise (B = 0):
  symmetric El Niño/La Niña, no skewness, no extremes; (iv) over-damped (R = -0.05
  instead of -0.02 per month): too weak a variance; (ii) its El
  Niño SST pattern peaks at 205°E instead of 245°E (too far west, as in many CMIP
  models), so the Niño-3 index sees only part of it; (iii) a cold-tongue bias of
  -0.6 K at 250°E. Each month: project the fields on the model's patterns to get its
  ``(T, h)``, step them with the biased oscillator, rebuild the fields and add an AR(1)
  residual (e-folding 2 months, spatially smooth noise). The reference field for the
  pattern error is ``T_E(t) P_true(lon)``, ``P_true`` peaking at 245°E with Niño-3 mean 1.
- **latent DA** (the method): a VAE (`hybridda.generative.mlp_vae`, latent size 4) is
  trained on a free run of the operational model. The operational model is then cycled
  monthly with `hybridda.generative.LatentFilter` (the library's ETKF in latent space,
  N = 24, inflation 1.05) assimilating the idealized model's ``T_E`` (error std 0.1 K)
  through the Niño-3 index (mean SST over 210°E-270°E) of the decoded field.
- **metrics**: Niño-3 index statistics (mean, std, skewness, quantiles, extremes) of
  the reference, the free operational run (uncorrected) and the analyses (corrected);
  the ENSO regression pattern and the mean-state error against the reference field;
  and the explanation: the latent increments ``δz`` (encoded analysis minus encoded
  forecast), their leading direction, their correlation with the innovation and the
  reference index, and the SST/thermocline patterns they decode to.

Target (issue 7): the biases of the corrected index mean, std and skewness at most
half those of the uncorrected model.

Usage::

    python paper/behnoudfar2025_latent_bridging.py --quick   # ~ 20 s
    python paper/behnoudfar2025_latent_bridging.py           # 100 years of cycles
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jaxtyping import Array, Float, PRNGKeyArray  # noqa: E402

import hybridda  # noqa: E402
from hybridda.dynamics import RechargeOscillator, euler_maruyama  # noqa: E402
from hybridda.filters import ETKF, Multiplicative  # noqa: E402
from hybridda.generative import LatentFilter, fit_vae, mlp_vae  # noqa: E402
from hybridda.observe import GaussianError, LinearObservation  # noqa: E402

NINO3 = (210.0, 270.0)  # Niño-3 longitudes (5°S-5°N, 150°W-90°W), degrees east


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (written to config.json)."""

    n_lon: int = 24
    lon_west: float = 130.0
    lon_east: float = 280.0
    em_dt: float = 0.1  # Euler-Maruyama step, months
    reference_b: float = 1.5  # state-dependent noise of the idealized model (K^-1)
    operational_b: float = 0.0  # bias (i): additive noise
    operational_growth: float = -0.05  # bias (iv): over-damped ENSO (R, month^-1)
    true_centre: float = 245.0  # El Niño SST pattern peak of the reference (°E)
    operational_centre: float = 205.0  # bias (ii): too far west
    pattern_width: float = 35.0  # e-folding half-width of the SST patterns (degrees)
    cold_bias: float = -0.6  # bias (iii): cold tongue, K
    cold_bias_centre: float = 250.0
    cold_bias_width: float = 30.0
    residual_months: float = 2.0  # e-folding time of the AR(1) residual
    residual_sst_std: float = 0.25  # K
    residual_h_std: float = 3.0  # m
    residual_length: float = 20.0  # spatial correlation length of the residual (degrees)
    obs_std: float = 0.1  # K, error of the assimilated T_E
    ensemble_size: int = 24
    inflation: float = 1.05
    spin_up: int = 120  # months
    cycles: int = 1200  # months of DA (100 years)
    training_months: int = 3000  # free operational run for the VAE
    latent_size: int = 4
    vae_width: int = 64
    vae_depth: int = 2
    vae_steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0


QUICK = {"cycles": 300, "training_months": 600, "vae_steps": 400}


# ------------------------------------------------------------------ the two models


def _gaussian(lon, centre, width):
    return np.exp(-(((lon - centre) / width) ** 2))


def nino3_weights(lon: np.ndarray) -> np.ndarray:
    inside = (lon >= NINO3[0]) & (lon <= NINO3[1])
    return inside / inside.sum()


class OperationalModel(eqx.Module):
    """Our biased "operational" model: SST and thermocline fields on the equator.

    State ``x = [sst (n_lon), thermocline (n_lon)]``. One call is one month: the
    model's ``(T, h)`` are the least-squares amplitudes of its own patterns, stepped
    by `oscillator` (Euler–Maruyama); the residual decays as AR(1) with smooth noise.
    The noise of month ``t`` for member ``i`` comes from ``fold_in(fold_in(key, t), i)``
    (the cycling code gives the model no key).
    """

    sst_pattern: Float[Array, " n"]
    thermocline_pattern: Float[Array, " n"]
    sst_bias: Float[Array, " n"]
    residual_decay: float
    residual_noise: Float[Array, "n2 n2"]
    oscillator: RechargeOscillator
    key: PRNGKeyArray
    em_dt: float = eqx.field(static=True)
    cycle_length: float = eqx.field(static=True, default=1.0)

    def amplitudes(self, x):
        n = self.sst_pattern.shape[0]
        sst, thermocline = x[:n] - self.sst_bias, x[n:]
        T = sst @ self.sst_pattern / (self.sst_pattern @ self.sst_pattern)
        h = (
            thermocline
            @ self.thermocline_pattern
            / (self.thermocline_pattern @ self.thermocline_pattern)
        )
        return T, h

    def _fields(self, T, h):
        return jnp.concatenate([T * self.sst_pattern, h * self.thermocline_pattern])

    def step(self, x, t0, member):
        key = jax.random.fold_in(
            jax.random.fold_in(self.key, jnp.round(t0 / self.cycle_length).astype(int)), member
        )
        oscillator_key, residual_key = jax.random.split(key)
        bias = jnp.concatenate([self.sst_bias, jnp.zeros_like(self.sst_bias)])
        T, h = self.amplitudes(x)
        residual = x - bias - self._fields(T, h)
        steps = round(self.cycle_length / self.em_dt)
        T, h = euler_maruyama(
            self.oscillator,
            jnp.stack([T, h]),
            oscillator_key,
            dt=self.em_dt,
            steps=steps,
            save_every=steps,
        )[-1]
        noise = self.residual_noise @ jax.random.normal(residual_key, x.shape, x.dtype)
        return bias + self._fields(T, h) + self.residual_decay * residual + noise

    def __call__(self, x, t0):
        return self.step(x, t0, 0)

    def ensemble(self, E, t0):
        return jax.vmap(lambda x, i: self.step(x, t0, i))(E, jnp.arange(E.shape[0]))


def build(config: Config, key):
    lon = np.linspace(config.lon_west, config.lon_east, config.n_lon)
    weights = nino3_weights(lon)
    true_pattern = _gaussian(lon, config.true_centre, config.pattern_width)
    true_pattern = true_pattern / (weights @ true_pattern)  # Niño-3 mean of P_true = 1
    scale = true_pattern.max()
    operational_pattern = scale * _gaussian(lon, config.operational_centre, config.pattern_width)
    # Thermocline: the recharge (h_W) pattern, deep in the west, shoaling to the east.
    thermocline_pattern = np.cos(np.pi * (lon - config.lon_west) / (lon[-1] - lon[0]))
    sst_bias = config.cold_bias * _gaussian(lon, config.cold_bias_centre, config.cold_bias_width)
    decay = float(np.exp(-1.0 / config.residual_months))
    distance = lon[:, None] - lon[None, :]
    smooth = np.exp(-0.5 * (distance / config.residual_length) ** 2)
    smooth = smooth / np.sqrt((smooth**2).sum(axis=1, keepdims=True))  # unit-variance rows
    innovation_std = np.sqrt(1 - decay**2)
    zeros = np.zeros_like(smooth)
    residual_noise = innovation_std * np.block(
        [[config.residual_sst_std * smooth, zeros], [zeros, config.residual_h_std * smooth]]
    )
    operational = OperationalModel(
        jnp.asarray(operational_pattern),
        jnp.asarray(thermocline_pattern),
        jnp.asarray(sst_bias),
        decay,
        jnp.asarray(residual_noise),
        RechargeOscillator(growth=config.operational_growth, multiplicative=config.operational_b),
        key,
        config.em_dt,
    )
    reference = RechargeOscillator(multiplicative=config.reference_b)
    return lon, weights, true_pattern, operational, reference


# ------------------------------------------------------------------ statistics


def skewness(x) -> float:
    x = np.asarray(x)
    anomaly = x - x.mean()
    return float(np.mean(anomaly**3) / np.mean(anomaly**2) ** 1.5)


def index_statistics(index) -> dict:
    index = np.asarray(index)
    q = np.quantile(index, [0.01, 0.05, 0.5, 0.95, 0.99])
    return {
        "mean": float(index.mean()),
        "std": float(index.std()),
        "skewness": skewness(index),
        "q01": float(q[0]),
        "q05": float(q[1]),
        "median": float(q[2]),
        "q95": float(q[3]),
        "q99": float(q[4]),
        "max": float(index.max()),
        "min": float(index.min()),
        "strong_el_nino_fraction": float(np.mean(index > 2.0)),  # months above +2 K
    }


def regression_pattern(sst, index):
    anomaly = np.asarray(index) - np.mean(index)
    return (np.asarray(sst) - np.mean(sst, axis=0)).T @ anomaly / (anomaly @ anomaly)


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


# ------------------------------------------------------------------ the experiment


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="models, networks and noise seed")
    parser.add_argument("--out", type=Path, default=Path("runs/behnoudfar2025"))
    parser.add_argument("--quick", action="store_true", help="25 years of cycles (~20 s)")
    parser.add_argument("--cycles", type=int, help="monthly DA cycles (1200; quick 300)")
    parser.add_argument("--vae-steps", type=int, help="VAE training steps (3000; quick 400)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    settings = dict(QUICK) if args.quick else {}
    settings["seed"] = args.seed
    if args.cycles is not None:
        settings["cycles"] = args.cycles
    if args.vae_steps is not None:
        settings["vae_steps"] = args.vae_steps
    config = Config(**settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    started = time.perf_counter()
    keys = jax.random.split(jax.random.key(config.seed), 8)
    lon, weights, true_pattern, operational, reference = build(config, keys[0])
    n = config.n_lon
    steps = round(1.0 / config.em_dt)

    # Reference: the idealized model, monthly T_E after a spin-up.
    months = config.spin_up + config.cycles
    reference_run = euler_maruyama(
        reference,
        reference.default_initial_state(),
        keys[1],
        dt=config.em_dt,
        steps=steps * months,
        save_every=steps,
    )
    T_ref = np.asarray(reference_run[config.spin_up :, 0])
    sst_ref = T_ref[:, None] * true_pattern[None, :]

    # Operational free runs: one to train the VAE, an independent one = "uncorrected".
    x0 = jnp.concatenate([jnp.asarray(operational.sst_bias), jnp.zeros(n)])
    simulate = eqx.filter_jit(hybridda.simulate)  # states at months 0..K
    free_key_model = eqx.tree_at(lambda m: m.key, operational, keys[2])
    training = simulate(free_key_model, x0, config.spin_up + config.training_months)
    training = training[config.spin_up + 1 :]
    uncorrected = simulate(operational, x0, months)[config.spin_up + 1 :]

    # The VAE of the operational fields.
    vae = mlp_vae(
        2 * n,
        config.latent_size,
        key=keys[3],
        width=config.vae_width,
        depth=config.vae_depth,
        activation=jax.nn.silu,
        data=training,
    )
    fit = fit_vae(
        vae,
        training,
        key=keys[4],
        steps=config.vae_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        progress=not args.no_progress,
    )
    vae = fit.vae
    decoded = jax.vmap(lambda x: vae.decode_point(vae.encode_mean(x)))(training)
    reconstruction_rmse = rms(np.asarray(decoded - training)[:, :n])

    # Latent DA: assimilate T_E (with error) through the Niño-3 index of the decoded field.
    matrix = np.concatenate([weights, np.zeros(n)])[None, :]
    observation = LinearObservation(jnp.asarray(matrix), GaussianError(config.obs_std))
    y_seq = jnp.asarray(T_ref[:, None]) + config.obs_std * jax.random.normal(
        keys[5], (config.cycles, 1)
    )
    members = jax.random.choice(keys[6], training.shape[0], (config.ensemble_size,), False)
    init = training[members]
    method = LatentFilter(ETKF(inflation=Multiplicative(config.inflation)), vae)
    da_model = eqx.tree_at(lambda m: m.key, operational, jax.random.fold_in(keys[2], 1))
    trajectory = eqx.filter_jit(hybridda.assimilate)(
        da_model,
        observation,
        method,
        y_seq,
        init,
        keys[7],
        t0=float(config.spin_up),
        store_ensembles=True,
    )
    analysis = np.asarray(trajectory.analysis_mean)
    forecast = np.asarray(trajectory.forecast_mean)
    if not np.all(np.isfinite(analysis)):
        raise RuntimeError("The latent DA diverged: the analyses hold NaN or inf.")
    uncorrected = np.asarray(uncorrected)

    index = {
        "reference": T_ref,
        "uncorrected": uncorrected[:, :n] @ weights,
        "corrected": analysis[:, :n] @ weights,
        "corrected_forecast": forecast[:, :n] @ weights,
    }
    statistics = {name: index_statistics(series) for name, series in index.items()}
    bias = {
        name: {
            stat: abs(statistics[name][stat] - statistics["reference"][stat])
            for stat in ("mean", "std", "skewness")
        }
        for name in ("uncorrected", "corrected", "corrected_forecast")
    }
    ratios = {
        stat: bias["corrected"][stat] / max(bias["uncorrected"][stat], 1e-12)
        for stat in ("mean", "std", "skewness")
    }
    fields = {"uncorrected": uncorrected[:, :n], "corrected": analysis[:, :n]}
    patterns = {
        name: {
            "enso_pattern_rmse": rms(regression_pattern(sst, index[name]) - true_pattern),
            "mean_state_rmse": rms(sst.mean(axis=0) - sst_ref.mean(axis=0)),
            "field_rmse": rms(sst - sst_ref),
            "enso_pattern_peak_lon": float(lon[np.argmax(regression_pattern(sst, index[name]))]),
        }
        for name, sst in fields.items()
    }
    patterns["reference"] = {"enso_pattern_peak_lon": float(lon[np.argmax(true_pattern)])}

    # Explanation: latent increments and what they decode to.
    encode = jax.jit(jax.vmap(jax.vmap(vae.encode_mean)))
    z_forecast = np.asarray(encode(trajectory.forecast_ensemble)).mean(axis=1)
    z_analysis = np.asarray(encode(trajectory.analysis_ensemble)).mean(axis=1)
    increments = z_analysis - z_forecast  # (K, d)
    innovation = np.asarray(y_seq[:, 0]) - index["corrected_forecast"]
    z_centre = z_forecast.mean(axis=0)
    mean_increment = increments.mean(axis=0)
    decode = jax.jit(lambda z: vae.decode_point(z))
    mean_correction = np.asarray(decode(z_centre + mean_increment) - decode(z_centre))
    per_kelvin = increments.T @ innovation / (innovation @ innovation)  # δz per K innovation
    jacobian = np.asarray(jax.jacfwd(vae.decode_point)(jnp.asarray(z_centre)))
    innovation_correction = jacobian @ per_kelvin
    _, singular, directions = np.linalg.svd(
        increments, full_matrices=False
    )  # uncentred: mean included
    share = singular**2 / np.sum(singular**2)
    leading = directions[0] * np.sign(directions[0] @ per_kelvin)
    warm = T_ref > 1.0
    cold = T_ref < -1.0
    composite = {
        "el_nino": np.asarray(decode(z_centre + increments[warm].mean(0)) - decode(z_centre))
        if warm.any()
        else np.zeros(2 * n),
        "la_nina": np.asarray(decode(z_centre + increments[cold].mean(0)) - decode(z_centre))
        if cold.any()
        else np.zeros(2 * n),
    }

    def correlation(a, b):
        return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else 0.0

    explanation = {
        "mean_latent_increment": mean_increment.tolist(),
        "latent_increment_per_kelvin_innovation": per_kelvin.tolist(),
        "leading_direction": leading.tolist(),
        "leading_direction_variance_share": float(share[0]),
        "increment_innovation_correlation": [
            correlation(increments[:, j], innovation) for j in range(config.latent_size)
        ],
        "increment_reference_index_correlation": [
            correlation(increments[:, j], T_ref) for j in range(config.latent_size)
        ],
        # The decoded mean correction against what the operational model lacks.
        "mean_correction_nino3": float(mean_correction[:n] @ weights),
        "mean_correction_vs_cold_bias_correlation": correlation(
            mean_correction[:n], -np.asarray(operational.sst_bias)
        ),
        "innovation_pattern_peak_lon": float(lon[np.argmax(innovation_correction[:n])]),
        "innovation_pattern_vs_true_minus_operational": correlation(
            innovation_correction[:n], true_pattern - np.asarray(operational.sst_pattern)
        ),
        "el_nino_correction_nino3": float(composite["el_nino"][:n] @ weights),
        "la_nina_correction_nino3": float(composite["la_nina"][:n] @ weights),
    }
    target = {
        "bias_ratios": ratios,
        "holds": bool(all(r <= 0.5 for r in ratios.values())),
    }
    seconds = time.perf_counter() - started
    results = {
        "index_statistics": statistics,
        "index_bias": bias,
        "target": target,
        "patterns": patterns,
        "explanation": explanation,
        "vae": {
            "final_loss": float(np.mean(fit.losses[-50:])),
            "reconstruction_sst_rmse": reconstruction_rmse,
        },
        "analysis_index_rmse": rms(index["corrected"] - T_ref),
        "mean_analysis_spread": float(np.mean(trajectory.analysis_spread)),
        "seconds": seconds,
    }
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    _figures(
        args.out,
        lon,
        index,
        statistics,
        true_pattern,
        operational,
        mean_correction,
        innovation_correction,
        composite,
        n,
    )
    print(f"{'Niño-3 index':<22}{'mean':>8}{'std':>8}{'skew':>8}{'q99':>8}{'max':>8}")
    for name in ("reference", "uncorrected", "corrected"):
        s = statistics[name]
        print(
            f"{name:<22}{s['mean']:8.2f}{s['std']:8.2f}{s['skewness']:8.2f}{s['q99']:8.2f}"
            f"{s['max']:8.2f}"
        )
    print(
        "bias ratio corrected/uncorrected: "
        + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
        + f" -> target (<= 0.5 each) {'holds' if target['holds'] else 'FAILS'}"
    )
    print(
        f"ENSO pattern RMSE: uncorrected {patterns['uncorrected']['enso_pattern_rmse']:.3f}, "
        f"corrected {patterns['corrected']['enso_pattern_rmse']:.3f} K/K; "
        f"leading latent direction carries {share[0]:.0%} of the increments; {seconds:.0f} s"
    )
    return results


def _figures(
    out,
    lon,
    index,
    statistics,
    true_pattern,
    operational,
    mean_correction,
    innovation_correction,
    composite,
    n,
):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(-3.5, 6.0, 48)
    for name, colour in (("reference", "k"), ("uncorrected", "tab:red"), ("corrected", "tab:blue")):
        s = statistics[name]
        axes[0].hist(
            index[name],
            bins=bins,
            density=True,
            histtype="step",
            color=colour,
            lw=1.6,
            label=f"{name}: std {s['std']:.2f}, skew {s['skewness']:.2f}",
        )
    axes[0].set(xlabel="Niño-3 index (K)", ylabel="density", title="index distributions")
    axes[0].legend(fontsize=8)
    months = np.arange(min(240, index["reference"].shape[0]))
    for name, colour in (("reference", "k"), ("uncorrected", "tab:red"), ("corrected", "tab:blue")):
        axes[1].plot(months / 12, index[name][months], color=colour, lw=1, label=name)
    axes[1].set(xlabel="years", ylabel="Niño-3 index (K)", title="first 20 years")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "behnoudfar2025_index.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(lon, mean_correction[:n], "tab:blue", label="decoded mean latent increment")
    axes[0].plot(lon, -np.asarray(operational.sst_bias), "k--", label="minus the cold bias")
    axes[0].plot(
        lon, innovation_correction[:n], "tab:green", label="decoded increment per K of innovation"
    )
    axes[0].plot(
        lon,
        true_pattern - np.asarray(operational.sst_pattern),
        "k:",
        label="true minus operational El Niño pattern",
    )
    axes[0].axvspan(*NINO3, color="0.9", zorder=0)
    axes[0].set(
        xlabel="longitude (°E)",
        ylabel="SST correction (K)",
        title="what the latent correction changes (SST)",
    )
    axes[0].legend(fontsize=7)
    axes[1].plot(lon, composite["el_nino"][:n], "tab:red", label="El Niño months (T_E > 1 K)")
    axes[1].plot(lon, composite["la_nina"][:n], "tab:blue", label="La Niña months (T_E < -1 K)")
    axes[1].axvspan(*NINO3, color="0.9", zorder=0)
    axes[1].set(
        xlabel="longitude (°E)", ylabel="SST correction (K)", title="composite decoded corrections"
    )
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "behnoudfar2025_latent_correction.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
