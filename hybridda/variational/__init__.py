"""Variational DA: cost functionals as modules, minimisers separate."""

from .costs import StrongFourDVar as StrongFourDVar
from .costs import ThreeDVarCost as ThreeDVarCost
from .costs import WeakFourDVar as WeakFourDVar
from .costs import WithModelParameters as WithModelParameters
from .covariances import channel_gaussian_covariance as channel_gaussian_covariance
from .covariances import climatological_covariance as climatological_covariance
from .fourdvar import FourDVar as FourDVar
from .solve import MinimiseResult as MinimiseResult
from .solve import gauss_newton as gauss_newton
from .solve import incremental as incremental
from .solve import quasi_newton as quasi_newton
from .var3d import Var3D as Var3D

__all__ = [
    "FourDVar",
    "MinimiseResult",
    "StrongFourDVar",
    "ThreeDVarCost",
    "Var3D",
    "WeakFourDVar",
    "WithModelParameters",
    "channel_gaussian_covariance",
    "climatological_covariance",
    "gauss_newton",
    "incremental",
    "quasi_newton",
]
