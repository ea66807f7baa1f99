"""Network architectures for learnt models and corrections (Equinox modules).

Each takes an explicit `key` at construction and a `dtype` for its parameters (inputs
are cast to it, so a float32 network can sit inside a float64 model).
"""

from .bilinear import BilinearCNN as BilinearCNN
from .cnn import PeriodicCNN as PeriodicCNN
from .cnn import periodic_conv1d as periodic_conv1d
from .cnn2d import ChannelCNN as ChannelCNN
from .cnn2d import ChannelConv2d as ChannelConv2d
from .mlp import MLP as MLP
from .unet import TimeMLP as TimeMLP
from .unet import UNet as UNet
from .unet import sinusoidal_embedding as sinusoidal_embedding

__all__ = [
    "BilinearCNN",
    "ChannelCNN",
    "ChannelConv2d",
    "MLP",
    "PeriodicCNN",
    "TimeMLP",
    "UNet",
    "periodic_conv1d",
    "sinusoidal_embedding",
]
