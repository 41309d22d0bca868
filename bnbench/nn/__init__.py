"""Small networks on the bnbench kernels: layers, the MNIST-1D and image models, an
optimizer."""

from .conv2d import Conv2d
from .fold import ChannelAffine, fold_batch_norm
from .layers import Conv1d, Flatten, GlobalAvgPool, Linear, ReLU, Reshape
from .losses import cross_entropy
from .models import cnn, mlp, resnet
from .models2d import cnn2d, resnet2d
from .norm import BatchNorm, BatchRenorm, renorm_clip
from .optim import SGD, cosine_lr
from .pool import AvgPool2d, MaxPool2d
from .sequential import RESNET_DEPTHS, Residual, Sequential, check_depth, fuse_relu
from .zoo import MODELS, build

__all__ = [
    "MODELS",
    "RESNET_DEPTHS",
    "SGD",
    "AvgPool2d",
    "BatchNorm",
    "BatchRenorm",
    "ChannelAffine",
    "Conv1d",
    "Conv2d",
    "Flatten",
    "GlobalAvgPool",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Reshape",
    "Residual",
    "Sequential",
    "build",
    "check_depth",
    "cnn",
    "cnn2d",
    "cosine_lr",
    "cross_entropy",
    "fold_batch_norm",
    "fuse_relu",
    "mlp",
    "renorm_clip",
    "resnet",
    "resnet2d",
]
