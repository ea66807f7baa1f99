"""hybridda: differentiable data assimilation and machine learning on JAX + Equinox.

Every piece is an Equinox module, so a whole DA cycle can be jitted, vmapped over
seeds or members, and differentiated end to end.
"""

from . import checkpoint as checkpoint
from . import configs as configs
from . import dynamics as dynamics
from . import filters as filters
from . import generative as generative
from . import hybrid as hybrid
from . import learn as learn
from . import mesh as mesh
from . import metrics as metrics
from . import nn as nn
from . import observe as observe
from . import sharding as sharding
from . import twin as twin
from . import variational as variational
from ._method import AbstractAnalysisMethod as AbstractAnalysisMethod
from ._method import AbstractWindowMethod as AbstractWindowMethod
from .checkpoint import Checkpointer as Checkpointer
from .cycle import Trajectory as Trajectory
from .cycle import assimilate as assimilate
from .cycle import assimilate_windows as assimilate_windows
from .cycle import initial_ensemble as initial_ensemble
from .cycle import simulate as simulate
from .cycle import spin_up as spin_up
from .cycle import synthesise_observations as synthesise_observations
from .hybrid import NeuralDynamics as NeuralDynamics
from .hybrid import ResolventCorrection as ResolventCorrection
from .hybrid import Surrogate as Surrogate
from .hybrid import TendencyCorrection as TendencyCorrection
from .integrate import RK4 as RK4
from .integrate import Resolvent as Resolvent
from .losses import cycled_loss as cycled_loss

__version__ = "0.1.0"

__all__ = [
    "AbstractAnalysisMethod",
    "AbstractWindowMethod",
    "Checkpointer",
    "NeuralDynamics",
    "RK4",
    "Resolvent",
    "ResolventCorrection",
    "Surrogate",
    "TendencyCorrection",
    "Trajectory",
    "assimilate",
    "assimilate_windows",
    "checkpoint",
    "cycled_loss",
    "dynamics",
    "filters",
    "generative",
    "hybrid",
    "initial_ensemble",
    "learn",
    "mesh",
    "metrics",
    "nn",
    "observe",
    "sharding",
    "simulate",
    "spin_up",
    "synthesise_observations",
    "variational",
]
