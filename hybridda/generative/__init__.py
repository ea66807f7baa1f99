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

```python
vae = fit_vae(mlp_vae(n, 1, key=k1, data=climatology), climatology, key=k2, steps=4000).vae
method = LatentFilter(ETKF(), vae)
trajectory = hybridda.assimilate(model, observation, method, y_seq, E0, key)
```
"""

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
from .latent import DecodedObservation as DecodedObservation
from .latent import FineTune as FineTune
from .latent import InnovationObservation as InnovationObservation
from .latent import LatentFilter as LatentFilter
from .latent import StandardisedEncoder as StandardisedEncoder
from .latent import VAEPairFilter as VAEPairFilter
from .latent import assimilate_online as assimilate_online
from .latent import refit_vae as refit_vae
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
    "AbstractLikelihood",
    "AbstractPrediction",
    "AbstractSampler",
    "AbstractSchedule",
    "CensoredGaussian",
    "CosineSchedule",
    "DDIM",
    "DDPM",
    "DecodedObservation",
    "Diffusion",
    "DiffusionFit",
    "EpsilonPrediction",
    "FineTune",
    "FitResult",
    "Gaussian",
    "HeteroscedasticGaussian",
    "InnovationObservation",
    "LatentFilter",
    "LinearSchedule",
    "MLPDecoder",
    "MLPEncoder",
    "StandardisedEncoder",
    "TabulatedSchedule",
    "VAE",
    "VAEPairFilter",
    "VPrediction",
    "X0Prediction",
    "add_noise",
    "assimilate_online",
    "denoising_loss",
    "ema_update",
    "fine_tune",
    "fit_diffusion",
    "fit_vae",
    "mlp_vae",
    "negative_elbo",
    "refit_vae",
    "sample",
]
