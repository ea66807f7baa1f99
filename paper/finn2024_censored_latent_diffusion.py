"""Finn et al. (2024): latent diffusion with a censored Gaussian for bounded sea-ice fields.

Reproduces the comparisons of *Towards diffusion models for large-scale sea-ice
modelling* (Finn, Durand, Farchi, Bocquet, Rampal and Carrassi, ICML 2024 workshop;
arXiv 2406.18417) on synthetic data generated here (nothing is downloaded):

- data: `hybridda.generative.SeaIceFields`, two channels on a zonal channel grid
  (periodic in x): concentration in [0, 1] with large areas exactly at 0 (open ocean) and
  1 (pack ice) and a marginal ice zone in between, and thickness >= 0, exactly 0 where
  there is no ice. Training fields, held-out test fields, and an independent reference
  set of true fields (the scores of a perfect generator);
- models, all unconditional and sampled with DDIM from a v-prediction diffusion model
  (`hybridda.generative.Diffusion`, cosine schedule, U-Nets, EMA weights):
  ``data`` (diffusion on the standardised fields, samples clipped to the bounds
  afterwards), ``latent-censored`` (latent diffusion, `hybridda.generative.LatentDiffusion`,
  in the latent field of a convolutional VAE, `hybridda.generative.conv_vae`, whose
  decoder likelihood is a censored Gaussian with per-channel bounds: the decoded point
  ``clip(mean, lower, upper)`` is inside the bounds by construction) and
  ``latent-gaussian`` (the same with a plain Gaussian likelihood, built as the censored
  Gaussian without bounds, the same log-density, so that both VAEs share one compiled
  training step; decoded fields clipped afterwards). Both VAEs also reconstruct the
  test fields (``ae-*``: the smoothing caused by the latent mapping alone);
- metrics against held-out fields: CRPS per channel (pixelwise, averaged) and energy
  score per channel (the whole field), the power spectra along x (the ratio at the
  smallest scales measures smoothing), the fractions of concentration exactly at 0,
  exactly at 1 and strictly between (the marginal ice zone), of thickness exactly at 0,
  whether ice-free pixels agree between the channels, the Wasserstein distance of the
  values, and the fraction of raw (unclipped) values outside the physical bounds.

Both VAEs and the three diffusion models are trained with `fit_vae` / `fit_diffusion`;
their Orbax checkpoints are written under ``OUT/checkpoints/`` and ``--resume``
continues an interrupted training with identical results. Outputs: ``metrics.json``,
``config.json``, figures (samples side by side, spectra, distribution at the bounds)
and a table of our numbers against the paper's claims.

Usage::

    python paper/finn2024_censored_latent_diffusion.py --quick   # tiny networks (< 1 min)
    python paper/finn2024_censored_latent_diffusion.py           # 16 x 16 (about 15 min on 2 CPUs)
    python paper/finn2024_censored_latent_diffusion.py --resume  # continue the trainings
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from hybridda import metrics  # noqa: E402
from hybridda.checkpoint import has_checkpoint  # noqa: E402
from hybridda.generative import (  # noqa: E402
    DDIM,
    CensoredGaussian,
    Diffusion,
    SeaIceFields,
    bound_fractions,
    channel_values,
    conv_vae,
    fit_diffusion,
    fit_latent_diffusion,
    fit_vae,
    sample,
)
from hybridda.nn import TimeMLP, UNet  # noqa: E402

MODELS = ("data", "latent-censored", "latent-gaussian")
RECONSTRUCTIONS = ("ae-censored", "ae-gaussian")
CHANNELS = ("concentration", "thickness")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the experiment (written to config.json)."""

    grid: int = 16
    train_size: int = 2048
    test_size: int = 256
    samples: int = 256  # generated fields per model (and true reference fields)
    crps_fields: int = 128  # held-out fields the CRPS is averaged over
    ae_widths: tuple[int, ...] = (8, 16, 16)  # two poolings: a 4 x 4 latent grid
    latent_channels: int = 4  # 64 latent variables for 512 data values
    ae_steps: int = 2000
    ae_beta: float = 1e-3  # weight of the KL term (a nearly deterministic autoencoder)
    ae_std: float = 0.05  # initial likelihood std, times each channel's std (learnt)
    data_widths: tuple[int, ...] = (8, 16)
    latent_network: str = "mlp"  # "mlp": a TimeMLP on the flattened latent; or "unet"
    latent_widths: tuple[int, ...] = (128,)  # the U-Net's; the MLP's width is the last
    diffusion_steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    ema_decay: float = 0.999
    sampler_steps: int = 50
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        factor = 2 ** (len(self.ae_widths) - 1)
        if self.grid % factor or self.grid % 2 ** (len(self.data_widths) - 1):
            raise ValueError(
                f"`--grid` {self.grid} must be divisible by {factor} (the autoencoder's "
                "poolings) and by the data U-Net's."
            )
        if self.latent_network not in ("unet", "mlp"):
            raise ValueError(
                f"`latent_network` must be 'unet' or 'mlp', got {self.latent_network!r}."
            )
        if (self.grid // factor) % 2 ** (len(self.latent_widths) - 1):
            raise ValueError("The latent grid must be divisible by the latent U-Net's poolings.")
        if self.samples < 2 or self.crps_fields < 1 or self.crps_fields > self.test_size:
            raise ValueError("Need `samples` >= 2 and 1 <= `crps_fields` <= `test_size`.")


QUICK = {
    "train_size": 256,
    "test_size": 64,
    "samples": 64,
    "crps_fields": 32,
    "ae_widths": (8, 8),
    "latent_channels": 2,
    "ae_steps": 300,
    "data_widths": (8,),
    "latent_widths": (64,),
    "diffusion_steps": 250,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "ema_decay": 0.9,
    "sampler_steps": 10,
    "checkpoint_every": 300,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="data, networks and noise seed")
    parser.add_argument("--out", type=Path, default=Path("runs/finn2024"))
    parser.add_argument("--quick", action="store_true", help="tiny networks, few steps (< 1 min)")
    parser.add_argument("--resume", action="store_true", help="continue the trainings")
    parser.add_argument("--grid", type=int, help="grid points per side (16)")
    parser.add_argument("--ae-steps", type=int, help="training steps of each autoencoder")
    parser.add_argument("--diffusion-steps", type=int, help="training steps of each diffusion")
    parser.add_argument("--samples", type=int, help="generated fields per model")
    parser.add_argument(
        "--ae-widths", type=lambda text: tuple(int(w) for w in text.split(",")),
        help="autoencoder stages, e.g. 8,16 (one pooling); default 8,16,16",
    )  # fmt: skip
    parser.add_argument("--latent-channels", type=int, help="channels of the latent field (4)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------- training


@functools.lru_cache
def _schedule(learning_rate: float, steps: int):
    # One object per setting: both VAEs then share one compiled training step.
    return optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)


def _checkpointing(name: str, steps: int, config: Config, args) -> dict:
    directory = args.out / "checkpoints" / name
    return {
        "checkpoint_dir": directory,
        "checkpoint_every": min(config.checkpoint_every, steps),
        "resume": args.resume and has_checkpoint(directory),
        "progress": not args.no_progress,
    }


def _summary(losses: np.ndarray, seconds: float) -> dict:
    tail = max(1, len(losses) // 20)
    return {
        "steps": len(losses),
        "loss_first": float(losses[:tail].mean()),
        "loss_last": float(losses[-tail:].mean()),
        "seconds": seconds,
    }


def train_autoencoder(name, likelihood, flat, key, config: Config, args):
    """A convolutional VAE (float32) on the flattened training fields."""
    init_key, fit_key = jax.random.split(key)
    shape = (SeaIceFields.channels, config.grid, config.grid)
    vae = conv_vae(
        shape,
        config.latent_channels,
        key=init_key,
        likelihood=likelihood,
        widths=config.ae_widths,
        data=flat,
        dtype=jnp.float32,
    )
    tic = time.perf_counter()
    result = fit_vae(
        vae,
        flat,
        key=fit_key,
        steps=config.ae_steps,
        batch_size=config.batch_size,
        learning_rate=_schedule(config.learning_rate, config.ae_steps),
        beta=config.ae_beta,
        config={"name": name},
        **_checkpointing(name, config.ae_steps, config, args),
    )
    return result.vae, _summary(result.losses, time.perf_counter() - tic)


def _fit_options(name: str, config: Config, args) -> dict:
    return {
        "steps": config.diffusion_steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "ema_decay": config.ema_decay,
        "config": {"name": name},
        **_checkpointing(name, config.diffusion_steps, config, args),
    }


def _unet(channels: int, widths, key) -> UNet:
    return UNet(2, channels, channels, widths=widths, key=key, dtype=jnp.float32)


@eqx.filter_jit
def _generate(generator, sampler, keys):
    """One field per key: a `LatentDiffusion`, or ``(diffusion, mean, scale)`` of the
    standardised data-space model. Module-level, so models of one structure share it."""
    if isinstance(generator, tuple):
        diffusion, mean, scale = generator  # mean and scale: fields of the data's shape

        def one(key):
            return sample(diffusion, sampler, key, shape=mean.shape) * scale + mean

        return jax.vmap(one)(keys)
    return jax.vmap(lambda key: generator.sample(sampler, key))(keys)


@eqx.filter_jit
def _reconstruct(vae, fields):
    flat = fields.reshape(fields.shape[0], -1)
    return jax.vmap(lambda x: vae.decode_point(vae.encode_mean(x)))(flat).reshape(fields.shape)


# ----------------------------------------------------------------------- metrics


def _spectra(fields: np.ndarray) -> np.ndarray:
    """Power spectral density along x (periodic), per channel: ``(channels, nx//2+1)``."""
    return np.stack(
        [
            np.asarray(metrics.power_spectral_density(fields[:, c], axis=-1).density)
            for c in range(fields.shape[1])
        ]
    )


@eqx.filter_jit
def _crps_per_channel(ensemble, truths):
    """Pixelwise CRPS of `ensemble` (N, C, ny, nx) against each of `truths` (K, C, ny, nx),
    averaged over pixels and truths, per channel."""
    channels = ensemble.shape[1]
    members = jnp.moveaxis(ensemble, 1, 0).reshape(channels, ensemble.shape[0], -1)

    def one(truth):
        return jax.vmap(metrics.crps)(members, truth.reshape(channels, -1))

    return jnp.mean(jax.lax.map(one, truths), axis=0)


@eqx.filter_jit
def _energy_per_channel(ensemble, truths):
    channels = ensemble.shape[1]
    members = jnp.moveaxis(ensemble, 1, 0).reshape(channels, ensemble.shape[0], -1)
    targets = jnp.moveaxis(truths, 1, 0).reshape(channels, truths.shape[0], -1)
    scores = jax.vmap(
        lambda m, t: jax.vmap(lambda y: metrics.energy_score(m, y))(t)
    )(members, targets)  # fmt: skip
    return jnp.mean(scores, axis=-1)


def evaluate(raw: np.ndarray, test: np.ndarray, config: Config) -> tuple[dict, np.ndarray]:
    """Scores of generated (or reconstructed) `raw` fields ``(N, 2, ny, nx)``; the fields
    clipped to the physical bounds are scored (a no-op for bounded models)."""
    lower, upper = np.asarray(SeaIceFields.lower), np.asarray(SeaIceFields.upper)
    raw_fractions = bound_fractions(raw, lower, upper)
    fields = np.clip(raw, lower[:, None, None], upper[:, None, None])
    fractions = bound_fractions(fields, lower, upper)
    truths = jnp.asarray(test[: config.crps_fields])
    crps = np.asarray(_crps_per_channel(jnp.asarray(fields), truths))
    energy = np.asarray(_energy_per_channel(jnp.asarray(fields), truths))
    ice_free = fields[:, 0] == 0
    no_thickness = fields[:, 1] == 0
    entry = {
        "out_of_bounds_raw": float(np.mean(raw_fractions.below + raw_fractions.above)),
        "out_of_bounds_raw_per_channel": np.asarray(
            raw_fractions.below + raw_fractions.above
        ).tolist(),
        "min": np.asarray(fields.min(axis=(0, 2, 3))).tolist(),
        "max": np.asarray(fields.max(axis=(0, 2, 3))).tolist(),
        "concentration_at_0": float(fractions.at_lower[0]),
        "concentration_at_1": float(fractions.at_upper[0]),
        "marginal_zone": float(fractions.between[0]),
        "thickness_at_0": float(fractions.at_lower[1]),
        "concentration_at_0_raw": float(raw_fractions.at_lower[0]),
        "concentration_at_1_raw": float(raw_fractions.at_upper[0]),
        "ice_free_mismatch": float(np.mean(ice_free != no_thickness)),
        "crps": dict(zip(CHANNELS, crps.tolist(), strict=True)),
        "energy_score": dict(zip(CHANNELS, energy.tolist(), strict=True)),
        "wasserstein": {
            name: float(metrics.wasserstein_1(fields[:, c].ravel(), test[:, c].ravel()))
            for c, name in enumerate(CHANNELS)
        },
        "mean": np.asarray(fields.mean(axis=(0, 2, 3))).tolist(),
        "std": np.asarray(fields.std(axis=(0, 2, 3))).tolist(),
    }
    return entry, fields


def spectral_scores(spectrum: np.ndarray, truth: np.ndarray) -> dict:
    """Ratios of power to the truth's: over the smallest scales (upper half of the
    wavenumbers, where smoothing shows) and the mean |log10 ratio| over all k >= 1."""
    ratio = spectrum[:, 1:] / truth[:, 1:]
    half = ratio.shape[1] // 2
    small_scales = np.exp(np.mean(np.log(ratio[:, half:]), axis=1))
    log_error = np.mean(np.abs(np.log10(ratio)), axis=1)
    return {
        "small_scale_power_ratio": dict(zip(CHANNELS, small_scales.tolist(), strict=True)),
        "spectral_log_error": dict(zip(CHANNELS, log_error.tolist(), strict=True)),
    }


# ----------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    changes = dict(QUICK) if args.quick else {}
    for name in ("grid", "ae_steps", "diffusion_steps", "samples", "ae_widths", "latent_channels"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    try:
        config = Config(seed=args.seed, **changes)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    started = time.perf_counter()
    timings = {}
    root = jax.random.key(config.seed)
    k_data, k_ae, k_diff, k_sample = jax.random.split(root, 4)

    # The data: training, held-out test, and a reference set of true fields.
    generator = SeaIceFields(grid=(config.grid, config.grid))
    sizes = (config.train_size, config.test_size, config.samples)
    draws = jax.jit(jax.vmap(generator))(jax.random.split(k_data, sum(sizes)))
    train, test, reference = np.split(np.asarray(draws), np.cumsum(sizes)[:-1])
    shape = train.shape[1:]
    flat = train.reshape(train.shape[0], -1)
    lower, upper = SeaIceFields.lower, SeaIceFields.upper
    grid = (config.grid, config.grid)
    channel_std = flat.reshape(-1, shape[0], grid[0] * grid[1]).std(axis=(0, 2))
    std = channel_values(config.ae_std * channel_std, grid)

    # The two autoencoders: censored and plain Gaussian decoder likelihoods.
    likelihoods = {
        "censored": CensoredGaussian(
            channel_values(lower, grid), channel_values(upper, grid), std, learn_std=True
        ),
        # A plain Gaussian: the same likelihood without bounds (identical log-density).
        "gaussian": CensoredGaussian(
            channel_values([-np.inf] * 2, grid),
            channel_values([np.inf] * 2, grid),
            std,
            learn_std=True,
        ),  # fmt: skip
    }
    vaes, ae_training = {}, {}
    for index, (kind, likelihood) in enumerate(likelihoods.items()):
        try:
            vaes[kind], ae_training[kind] = train_autoencoder(
                f"ae_{kind}", likelihood, flat, jax.random.fold_in(k_ae, index), config, args
            )
        except FileExistsError as error:  # checkpoints of an earlier run in --out
            raise SystemExit(str(error)) from error

    # The three diffusion models.
    k_data_net, k_latent_net, k_fit = jax.random.split(k_diff, 3)
    mean = train.mean(axis=(0, 2, 3))[:, None, None]
    scale = train.std(axis=(0, 2, 3))[:, None, None]
    diffusion_training = {}
    sampler = DDIM(steps=config.sampler_steps)
    tic = time.perf_counter()
    data_fit = fit_diffusion(
        Diffusion(_unet(shape[0], config.data_widths, k_data_net)),
        (train - mean) / scale,
        key=jax.random.fold_in(k_fit, 0),
        **_fit_options("diffusion_data", config, args),
    )
    diffusion_training["data"] = _summary(data_fit.losses, time.perf_counter() - tic)
    generators = {
        "data": (
            data_fit.ema,
            jnp.broadcast_to(jnp.asarray(mean), shape),
            jnp.broadcast_to(jnp.asarray(scale), shape),
        )
    }
    latent_shape = vaes["censored"].encoder.latent_shape
    if config.latent_network == "mlp":
        latent_shape = (vaes["censored"].latent_size,)
    for index, kind in enumerate(likelihoods, start=1):
        tic = time.perf_counter()
        if config.latent_network == "mlp":
            network = TimeMLP(
                latent_shape[0], width=config.latent_widths[-1], key=k_latent_net,
                dtype=jnp.float32,
            )  # fmt: skip
        else:
            network = _unet(latent_shape[0], config.latent_widths, k_latent_net)
        model, fit = fit_latent_diffusion(
            vaes[kind],
            Diffusion(network),
            train,
            latent_shape=latent_shape,
            key=jax.random.fold_in(k_fit, index),
            **_fit_options(f"diffusion_latent_{kind}", config, args),
        )
        diffusion_training[f"latent-{kind}"] = _summary(fit.losses, time.perf_counter() - tic)
        generators[f"latent-{kind}"] = model

    # Generate, reconstruct, score.
    from tqdm.auto import tqdm

    raw = {}
    bar = tqdm(total=len(MODELS), desc="sampling", disable=args.no_progress)
    for index, name in enumerate(MODELS):
        tic = time.perf_counter()
        keys = jax.random.split(jax.random.fold_in(k_sample, index), config.samples)
        raw[name] = np.asarray(_generate(generators[name], sampler, keys))
        timings[f"sampling/{name}"] = time.perf_counter() - tic
        bar.update(1)
    bar.close()
    for kind in likelihoods:
        raw[f"ae-{kind}"] = np.asarray(_reconstruct(vaes[kind], test))
    runs, fields = {}, {}
    truth_entry, _ = evaluate(reference, test, config)
    runs["truth"] = truth_entry
    fields["truth"] = reference
    truth_spectrum = _spectra(test)
    spectra = {"truth": _spectra(reference)}
    runs["truth"].update(spectral_scores(spectra["truth"], truth_spectrum))
    for name in MODELS + RECONSTRUCTIONS:
        runs[name], fields[name] = evaluate(raw[name], test, config)
        spectra[name] = _spectra(fields[name])
        runs[name].update(spectral_scores(spectra[name], truth_spectrum))
    results = {
        "runs": runs,
        "test_bound_fractions": {
            key: np.asarray(value).tolist()
            for key, value in bound_fractions(test, lower, upper)._asdict().items()
        },
        "autoencoder_training": ae_training,
        "diffusion_training": diffusion_training,
        "timings": timings,
        "spectra": {name: value.tolist() for name, value in spectra.items()},
        "spectra_test": truth_spectrum.tolist(),
        "seconds_total": time.perf_counter() - started,
    }
    results["claims"] = claims(results)
    results["claims_table"] = claims_table(results)
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    if not args.no_figures:
        plot(fields, spectra, truth_spectrum, runs, args.out)
    print_table(results)
    return results


# ----------------------------------------------------------------------- results


def claims(results: dict) -> dict:
    runs = results["runs"]
    out = {}
    for name in MODELS:
        for channel in CHANNELS:
            out[f"crps_ratio_{name}_{channel}"] = (
                runs[name]["crps"][channel] / runs["truth"]["crps"][channel]
            )
    for name in MODELS + RECONSTRUCTIONS:
        out[f"small_scale_power_{name}"] = runs[name]["small_scale_power_ratio"]["concentration"]

    def bound_error(name):
        truth = runs["truth"]
        return sum(
            abs(runs[name][key] - truth[key])
            for key in ("concentration_at_0", "concentration_at_1", "marginal_zone")
        )

    for name in MODELS + RECONSTRUCTIONS:
        out[f"bound_error_{name}"] = bound_error(name)
        out[f"marginal_zone_{name}"] = runs[name]["marginal_zone"]
        out[f"out_of_bounds_raw_{name}"] = runs[name]["out_of_bounds_raw"]
    out["marginal_zone_truth"] = runs["truth"]["marginal_zone"]
    return out


PUBLISHED = (
    (
        "latent diffusion scores similar to data space",
        "latent diffusion reaches similar scores as data-space diffusion",
        lambda c: (
            "CRPS / perfect-generator CRPS (concentration): "
            + ", ".join(f"{m} {c[f'crps_ratio_{m}_concentration']:.2f}" for m in MODELS)
        ),
        lambda c: all(
            c[f"crps_ratio_{m}_concentration"] <= 1.25 * c["crps_ratio_data_concentration"]
            for m in MODELS
        ),
    ),
    (
        "latent mapping smooths the fields",
        "latent diffusion smooths the generated fields (power spectra)",
        lambda c: (
            "small-scale power / truth (concentration): "
            + ", ".join(f"{m} {c[f'small_scale_power_{m}']:.2f}" for m in MODELS + RECONSTRUCTIONS)
        ),
        lambda c: (
            max(c["small_scale_power_latent-censored"], c["small_scale_power_latent-gaussian"])
            < c["small_scale_power_data"]
        ),
    ),
    (
        "censoring cannot reduce the smoothing",
        "enforcing the bounds does not reduce the smoothing",
        lambda c: (
            f"censored {c['small_scale_power_latent-censored']:.2f} vs Gaussian "
            f"{c['small_scale_power_latent-gaussian']:.2f}"
        ),
        lambda c: (
            c["small_scale_power_latent-censored"] < 1.5 * c["small_scale_power_latent-gaussian"]
        ),
    ),
    (
        "censoring improves the marginal ice zone",
        "better representation of the marginal ice zone with the censored Gaussian",
        lambda c: (
            f"marginal zone truth {c['marginal_zone_truth']:.3f}, censored "
            f"{c['marginal_zone_latent-censored']:.3f}, Gaussian (clipped) "
            f"{c['marginal_zone_latent-gaussian']:.3f}; bound error censored "
            f"{c['bound_error_latent-censored']:.3f} vs Gaussian "
            f"{c['bound_error_latent-gaussian']:.3f}"
        ),
        lambda c: c["bound_error_latent-censored"] < c["bound_error_latent-gaussian"],
    ),
    (
        "generated fields respect the bounds (issue target)",
        "censored decoder: never outside the physical bounds",
        lambda c: (
            "raw out-of-bounds fraction: "
            + ", ".join(f"{m} {c[f'out_of_bounds_raw_{m}']:.3f}" for m in MODELS)
        ),
        lambda c: c["out_of_bounds_raw_latent-censored"] == 0,
    ),
)


def claims_table(results: dict) -> list[dict]:
    """Each claim of the paper (and target of the issue) with our number and verdict."""
    measured = results["claims"]
    return [
        {
            "claim": claim,
            "published": published,
            "ours": ours(measured),
            "holds": bool(holds(measured)),
        }
        for claim, published, ours, holds in PUBLISHED
    ]


def print_table(results: dict) -> None:
    runs = results["runs"]
    header = (
        f"\n{'model':16s} {'CRPS c':>7s} {'CRPS h':>7s} {'ES c':>6s} {'ES h':>6s} "
        f"{'c=0':>6s} {'c=1':>6s} {'0<c<1':>6s} {'h=0':>6s} {'raw OOB':>8s} {'k-ratio':>7s}"
    )
    print(header)
    for name, entry in runs.items():
        print(
            f"{name:16s} {entry['crps']['concentration']:7.4f} "
            f"{entry['crps']['thickness']:7.4f} {entry['energy_score']['concentration']:6.3f} "
            f"{entry['energy_score']['thickness']:6.3f} {entry['concentration_at_0']:6.3f} "
            f"{entry['concentration_at_1']:6.3f} {entry['marginal_zone']:6.3f} "
            f"{entry['thickness_at_0']:6.3f} {entry['out_of_bounds_raw']:8.4f} "
            f"{entry['small_scale_power_ratio']['concentration']:7.3f}"
        )
    print("\n(k-ratio: power at the smallest scales / truth's, concentration; truth row: an")
    print(" independent set of true fields, the scores of a perfect generator)\n")
    for row in results["claims_table"]:
        verdict = "holds" if row["holds"] else "NOT reproduced"
        print(f"- {row['claim']}: {row['ours']} -> {verdict}")
    print(f"\ntotal {results['seconds_total']:.1f} s")


def plot(fields: dict, spectra: dict, truth_spectrum, runs: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    names = ("truth",) + MODELS + RECONSTRUCTIONS
    columns = 4
    figure, axes = plt.subplots(
        len(names), 2 * columns, figsize=(2 * columns * 1.3, len(names) * 1.4)
    )
    for row, name in enumerate(names):
        for column in range(columns):
            for channel, (cmap, vmax) in enumerate((("Blues_r", 1.0), ("viridis", 3.0))):
                axis = axes[row, 2 * column + channel]
                axis.imshow(
                    fields[name][column, channel], cmap=cmap, vmin=0, vmax=vmax, origin="lower"
                )
                axis.set_xticks([])
                axis.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=7)
    axes[0, 0].set_title("concentration", fontsize=7)
    axes[0, 1].set_title("thickness", fontsize=7)
    figure.suptitle("Finn et al. (2024) on synthetic sea ice: samples (reconstructions: ae-*)")
    figure.tight_layout()
    figure.savefig(out / "finn2024_samples.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for channel, axis in enumerate(axes):
        wavenumbers = np.arange(1, truth_spectrum.shape[1])
        axis.loglog(wavenumbers, truth_spectrum[channel, 1:], "k-", lw=2, label="test fields")
        for name in MODELS + RECONSTRUCTIONS:
            style = "--" if name.startswith("ae") else "-"
            axis.loglog(wavenumbers, spectra[name][channel, 1:], style, label=name)
        axis.set_xlabel("zonal wavenumber")
        axis.set_title(f"power spectrum along x: {CHANNELS[channel]}")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "finn2024_spectra.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 21)
    for name in ("truth",) + MODELS:
        values = fields[name][:, 0].ravel()
        inside = values[(values > 0) & (values < 1)]
        weights = np.full(inside.shape, 1.0 / values.size)
        axes[0].hist(inside, bins=bins, weights=weights, histtype="step", label=name)
    axes[0].set_xlabel("concentration strictly inside (0, 1)")
    axes[0].set_ylabel("fraction of all pixels")
    axes[0].set_title("the marginal ice zone")
    axes[0].legend(fontsize=7)
    keys = ("concentration_at_0", "marginal_zone", "concentration_at_1", "thickness_at_0")
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        axes[1].bar(
            np.arange(len(keys)) + index * width,
            [runs[name][key] for key in keys],
            width,
            label=name,
        )
    axes[1].set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    axes[1].set_xticklabels(["c = 0", "0 < c < 1", "c = 1", "h = 0"])
    axes[1].set_title("fractions at the bounds (after clipping)")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "finn2024_bounds.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
