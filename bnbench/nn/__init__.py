"""Small networks on the bnbench kernels: layers, the MNIST-1D models, an optimizer."""

from .layers import BatchNorm, Conv1d, Flatten, Linear, ReLU, Reshape
from .losses import cross_entropy
from .models import MODELS, Sequential, build, cnn, mlp
from .optim import SGD, cosine_lr

__all__ = [
    "MODELS",
    "SGD",
    "BatchNorm",
    "Conv1d",
    "Flatten",
    "Linear",
    "ReLU",
    "Reshape",
    "Sequential",
    "build",
    "cnn",
    "cosine_lr",
    "cross_entropy",
    "mlp",
]
