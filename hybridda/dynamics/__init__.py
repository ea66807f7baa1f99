"""Physical models: each is an `AbstractDynamics` with a tendency ``f(t, x, args)``."""

from ._base import AbstractDynamics as AbstractDynamics
from .enso import RechargeOscillator as RechargeOscillator
from .enso import euler_maruyama as euler_maruyama
from .lorenz63 import Lorenz63 as Lorenz63
from .lorenz96 import Lorenz96 as Lorenz96
from .maooam import MAOOAM as MAOOAM
from .maooam import MAOOAMParameters as MAOOAMParameters
from .monomial import MonomialDynamics as MonomialDynamics
from .monomial import QuadraticDynamics as QuadraticDynamics
from .monomial import monomial_exponents as monomial_exponents
from .monomial import quadratic_exponents as quadratic_exponents
from .multilayer_lorenz import MultiLayerLorenz96 as MultiLayerLorenz96
from .multilayer_lorenz import linear_forcing_profile as linear_forcing_profile
from .qg import QG as QG
from .two_scale_lorenz import TwoScaleLorenz96 as TwoScaleLorenz96

__all__ = [
    "AbstractDynamics",
    "Lorenz63",
    "Lorenz96",
    "MAOOAM",
    "MAOOAMParameters",
    "MonomialDynamics",
    "MultiLayerLorenz96",
    "QG",
    "QuadraticDynamics",
    "RechargeOscillator",
    "TwoScaleLorenz96",
    "euler_maruyama",
    "linear_forcing_profile",
    "monomial_exponents",
    "quadratic_exponents",
]
