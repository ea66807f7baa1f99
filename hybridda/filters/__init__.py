"""Ensemble data assimilation: one file per filter; inflation and localisation are modules."""

from ._base import AbstractEnsembleFilter as AbstractEnsembleFilter
from ._base import EnsembleInnovations as EnsembleInnovations
from ._base import ensemble_innovations as ensemble_innovations
from .augmented import AugmentedModel as AugmentedModel
from .augmented import AugmentedObservation as AugmentedObservation
from .augmented import LocalParameters as LocalParameters
from .augmented import ParameterAugmentation as ParameterAugmentation
from .domain_covariance import DomainCovarianceEnKF as DomainCovarianceEnKF
from .enkf import EnKF as EnKF
from .enkf_n import EnKFN as EnKFN
from .enks import SmootherOutput as SmootherOutput
from .enks import ensemble_smoother as ensemble_smoother
from .etkf import ETKF as ETKF
from .ienks import IEnKS as IEnKS
from .inflation import RTPP as RTPP
from .inflation import RTPS as RTPS
from .inflation import AbstractInflation as AbstractInflation
from .inflation import Multiplicative as Multiplicative
from .inflation import NoInflation as NoInflation
from .inflation import multiplicative as multiplicative
from .letkf import LETKF as LETKF
from .localisation import AbstractTaper as AbstractTaper
from .localisation import GaspariCohn as GaspariCohn
from .localisation import Gaussian as Gaussian
from .localisation import LocalDomains as LocalDomains
from .localisation import Localisation as Localisation
from .localisation import Step as Step
from .localisation import periodic_distance as periodic_distance
from .rotation import Rotated as Rotated
from .rotation import mean_preserving_rotation as mean_preserving_rotation

__all__ = [
    "AbstractEnsembleFilter",
    "AbstractInflation",
    "AbstractTaper",
    "AugmentedModel",
    "AugmentedObservation",
    "DomainCovarianceEnKF",
    "EnKF",
    "EnKFN",
    "ETKF",
    "EnsembleInnovations",
    "IEnKS",
    "GaspariCohn",
    "Gaussian",
    "LETKF",
    "LocalParameters",
    "LocalDomains",
    "Localisation",
    "Multiplicative",
    "NoInflation",
    "ParameterAugmentation",
    "RTPP",
    "RTPS",
    "Rotated",
    "SmootherOutput",
    "Step",
    "ensemble_innovations",
    "ensemble_smoother",
    "mean_preserving_rotation",
    "multiplicative",
    "periodic_distance",
]
