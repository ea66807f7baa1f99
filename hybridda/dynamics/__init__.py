"""Physical models: each is an `AbstractDynamics` with a tendency ``f(t, x, args)``.

Except [`FireSpread`][] (`wildfire.py`): a stochastic cellular automaton of wildfire
spread, stepped with explicit keys rather than integrated.
"""

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
from .wildfire import FireSpread as FireSpread
from .wildfire import burnt_area as burnt_area
from .wildfire import random_ignition as random_ignition
from .wildfire import random_landscape as random_landscape

__all__ = [
    "AbstractDynamics",
    "FireSpread",
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
    "burnt_area",
    "euler_maruyama",
    "linear_forcing_profile",
    "monomial_exponents",
    "quadratic_exponents",
    "random_ignition",
    "random_landscape",
]
