"""Small networks on the bnbench kernels: layers, the MNIST-1D models, an optimizer."""

from .layers import Conv1d, Flatten, GlobalAvgPool, Linear, ReLU, Reshape
from .losses import cross_entropy
from .models import (
    MODELS,
    RESNET_DEPTHS,
    Residual,
    Sequential,
    build,
    check_depth,
    cnn,
    mlp,
    resnet,
)
from .norm import BatchNorm, BatchRenorm, renorm_clip
from .optim import SGD, cosine_lr

__all__ = [
    "MODELS",
    "RESNET_DEPTHS",
    "SGD",
    "BatchNorm",
    "BatchRenorm",
    "Conv1d",
    "Flatten",
    "GlobalAvgPool",
    "Linear",
    "ReLU",
    "Reshape",
    "Residual",
    "Sequential",
    "build",
    "check_depth",
    "cnn",
    "cosine_lr",
    "cross_entropy",
    "mlp",
    "renorm_clip",
    "resnet",
]
