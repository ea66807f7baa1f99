"""Network architectures for learnt models and corrections (Equinox modules).

Each takes an explicit `key` at construction and a `dtype` for its parameters (inputs
are cast to it, so a float32 network can sit inside a float64 model).
"""

from .bilinear import BilinearCNN as BilinearCNN
from .cnn import PeriodicCNN as PeriodicCNN
from .cnn import periodic_conv1d as periodic_conv1d
from .mlp import MLP as MLP

__all__ = ["BilinearCNN", "MLP", "PeriodicCNN", "periodic_conv1d"]
