"""Physical models: each is an `AbstractDynamics` with a tendency ``f(t, x, args)``."""

from ._base import AbstractDynamics as AbstractDynamics
from .lorenz63 import Lorenz63 as Lorenz63
from .lorenz96 import Lorenz96 as Lorenz96
from .qg import QG as QG
from .two_scale_lorenz import TwoScaleLorenz96 as TwoScaleLorenz96

__all__ = ["AbstractDynamics", "Lorenz63", "Lorenz96", "QG", "TwoScaleLorenz96"]
