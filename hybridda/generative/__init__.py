"""Generative models for data assimilation: VAEs, latent ensemble filters, diffusion.

- [`VAE`][] (`vae.py`): Gaussian-latent variational autoencoder as Equinox modules,
  with Gaussian (fixed / learnt std), heteroscedastic and censored likelihoods; ELBO
  training with Optax ([`fit_vae`][], resumable Orbax checkpoints) and a pure
  [`fine_tune`][] for online updates.
- Latent filters (`latent.py`, Pasmans et al. 2025): [`LatentFilter`][] runs any
  filter (the ETKF, unchanged) in a VAE's latent space through a
  [`DecodedObservation`][]; [`VAEPairFilter`][] adds a second VAE for the
  innovations, against non-Gaussian and biased observation errors; [`FineTune`][]
  and [`assimilate_online`][] update the VAE online when the manifold moves.
- Diffusion (`diffusion.py`): [`Diffusion`][] models with cosine / linear /
  tabulated noise schedules, ε-, v- or x0-prediction, the [`denoising_loss`][],
  [`DDPM`][] and [`DDIM`][] samplers ([`sample`][]), classifier-free guidance and EMA
  weights; [`fit_diffusion`][] trains with Optax and resumable Orbax checkpoints.
- Bounded fields and latent diffusion (Finn et al. 2024): [`SeaIceFields`][]
  (`censored.py`), a synthetic sea-ice-like generator with mass exactly at the bounds,
  [`channel_values`][] and [`bound_fractions`][]; [`conv_vae`][] (`conv_vae.py`), a
  convolutional VAE whose decoder may use the [`CensoredGaussian`][] likelihood;
  [`LatentDiffusion`][] and [`fit_latent_diffusion`][] (`latent_diffusion.py`):
  diffusion in the VAE's latent space, decoded to data space.
- Generative forecasting (`forecaster.py`, Finn et al. 2025, GenSIM):
  [`DiffusionForecaster`][] samples the next state's increment from a conditional
  diffusion given the state and the forcing; [`DeterministicForecaster`][] is the same
  network trained with the MSE; [`forecast_pairs`][], [`fit_forecaster`][] and
  [`forecast_rollout`][] (ensembles of long autoregressive rollouts, one `lax.scan`).

```python
vae = fit_vae(mlp_vae(n, 1, key=k1, data=climatology), climatology, key=k2, steps=4000).vae
method = LatentFilter(ETKF(), vae)
trajectory = hybridda.assimilate(model, observation, method, y_seq, E0, key)
```
"""

from .censored import BoundFractions as BoundFractions
from .censored import SeaIceFields as SeaIceFields
from .censored import bound_fractions as bound_fractions
from .censored import channel_values as channel_values
from .conv_vae import ConvDecoder as ConvDecoder
from .conv_vae import ConvEncoder as ConvEncoder
from .conv_vae import conv_vae as conv_vae
from .diffusion import DDIM as DDIM
from .diffusion import DDPM as DDPM
from .diffusion import AbstractPrediction as AbstractPrediction
from .diffusion import AbstractSampler as AbstractSampler
from .diffusion import AbstractSchedule as AbstractSchedule
from .diffusion import CosineSchedule as CosineSchedule
from .diffusion import Diffusion as Diffusion
from .diffusion import DiffusionFit as DiffusionFit
from .diffusion import EpsilonPrediction as EpsilonPrediction
from .diffusion import LinearSchedule as LinearSchedule
from .diffusion import TabulatedSchedule as TabulatedSchedule
from .diffusion import VPrediction as VPrediction
from .diffusion import X0Prediction as X0Prediction
from .diffusion import add_noise as add_noise
from .diffusion import denoising_loss as denoising_loss
from .diffusion import ema_update as ema_update
from .diffusion import fit_diffusion as fit_diffusion
from .diffusion import sample as sample
from .forecaster import AbstractForecaster as AbstractForecaster
from .forecaster import DeterministicForecaster as DeterministicForecaster
from .forecaster import DiffusionForecaster as DiffusionForecaster
from .forecaster import ForecastNormalisation as ForecastNormalisation
from .forecaster import ForecastPairs as ForecastPairs
from .forecaster import fit_forecaster as fit_forecaster
from .forecaster import forecast_pairs as forecast_pairs
from .forecaster import forecast_rollout as forecast_rollout
from .forecaster import forecast_unet as forecast_unet
from .latent import DecodedObservation as DecodedObservation
from .latent import FineTune as FineTune
from .latent import InnovationObservation as InnovationObservation
from .latent import LatentFilter as LatentFilter
from .latent import StandardisedEncoder as StandardisedEncoder
from .latent import VAEPairFilter as VAEPairFilter
from .latent import assimilate_online as assimilate_online
from .latent import refit_vae as refit_vae
from .latent_diffusion import LatentDiffusion as LatentDiffusion
from .latent_diffusion import fit_latent_diffusion as fit_latent_diffusion
from .vae import VAE as VAE
from .vae import AbstractLikelihood as AbstractLikelihood
from .vae import CensoredGaussian as CensoredGaussian
from .vae import FitResult as FitResult
from .vae import Gaussian as Gaussian
from .vae import HeteroscedasticGaussian as HeteroscedasticGaussian
from .vae import MLPDecoder as MLPDecoder
from .vae import MLPEncoder as MLPEncoder
from .vae import fine_tune as fine_tune
from .vae import fit_vae as fit_vae
from .vae import mlp_vae as mlp_vae
from .vae import negative_elbo as negative_elbo

__all__ = [
    "AbstractForecaster",
    "AbstractLikelihood",
    "AbstractPrediction",
    "AbstractSampler",
    "AbstractSchedule",
    "BoundFractions",
    "CensoredGaussian",
    "ConvDecoder",
    "ConvEncoder",
    "CosineSchedule",
    "DDIM",
    "DDPM",
    "DecodedObservation",
    "DeterministicForecaster",
    "Diffusion",
    "DiffusionFit",
    "DiffusionForecaster",
    "EpsilonPrediction",
    "FineTune",
    "FitResult",
    "ForecastNormalisation",
    "ForecastPairs",
    "Gaussian",
    "HeteroscedasticGaussian",
    "InnovationObservation",
    "LatentDiffusion",
    "LatentFilter",
    "LinearSchedule",
    "MLPDecoder",
    "MLPEncoder",
    "SeaIceFields",
    "StandardisedEncoder",
    "TabulatedSchedule",
    "VAE",
    "VAEPairFilter",
    "VPrediction",
    "X0Prediction",
    "add_noise",
    "assimilate_online",
    "bound_fractions",
    "channel_values",
    "conv_vae",
    "denoising_loss",
    "ema_update",
    "fine_tune",
    "fit_diffusion",
    "fit_forecaster",
    "fit_latent_diffusion",
    "fit_vae",
    "forecast_pairs",
    "forecast_rollout",
    "forecast_unet",
    "mlp_vae",
    "negative_elbo",
    "refit_vae",
    "sample",
]
