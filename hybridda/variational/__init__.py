"""Variational DA: cost functionals as modules, minimisers separate."""

from .costs import ThreeDVarCost as ThreeDVarCost
from .var3d import Var3D as Var3D
from .var3d import climatological_covariance as climatological_covariance

__all__ = ["ThreeDVarCost", "Var3D", "climatological_covariance"]
