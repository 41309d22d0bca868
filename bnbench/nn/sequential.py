"""Containers the networks are built from: :class:`Sequential`, :class:`Residual`, the
BN-then-ReLU fusion of a layer list, a BN layer over either layout's channel axis and
the residual networks' depth check."""

import numpy as np

from .conv2d import Conv2d
from .layers import Conv1d, Linear, ReLU
from .norm import BatchNorm


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse. A layer may itself be a
    container (:class:`Residual`): BN layers and parameters are found inside it too."""

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x, mode="train"):
        for layer in self.layers:
            x = layer.forward(x, mode)
        return x

    #: set to ``False`` where the gradient with respect to the input is not wanted
    #: (training): ``backward`` then stops at the first layer with parameters, which
    #: skips its input gradient too, and returns ``None``
    input_grad = True

    def backward(self, dy):
        first = None if self.input_grad else self._first_trained()
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if i == first:
                layer.backward(dy, input_grad=False)
                return None
            dy = layer.backward(dy)
        return dy

    def _first_trained(self):
        """Index of the first layer with parameters if it is a Linear, Conv1d or Conv2d
        (whose input gradient can be skipped) with only parameter-free layers before it;
        else ``None`` (nothing to skip)."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, (Linear, Conv1d, Conv2d)):
                return i
            if getattr(layer, "params", None) or hasattr(layer, "parameters"):
                return None
        return None

    @property
    def bn_layers(self):
        """Every BN layer, in forward order (nested ones included)."""
        out = []
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                out.append(layer)
            elif hasattr(layer, "bn_layers"):
                out += layer.bn_layers
        return out

    def parameters(self):
        """``(layer, name)`` pairs of every parameter, in layer order (nested included)."""
        out = []
        for layer in self.layers:
            if hasattr(layer, "parameters"):
                out += layer.parameters()
            else:
                out += [(layer, name) for name in layer.params]
        return out


def fuse_relu(layers):
    """``layers`` (a list) with each BN layer that a :class:`ReLU` directly follows set to
    apply it (``relu=True``: fused where its mode allows, see :mod:`bnbench.nn.norm`) and
    that ReLU dropped: the same network, one pass fewer each way. Containers are left as
    they are (a residual block's last BN is followed by the skip's sum, not by a ReLU);
    the builders fuse inside their blocks themselves."""
    out = []
    for layer in layers:
        last = out[-1] if out else None
        if type(layer) is ReLU and isinstance(last, BatchNorm) and not last.relu:
            last.relu = True
            continue
        out.append(layer)
    return out


def sequence(layers, fuse):
    """``layers`` fused by :func:`fuse_relu` when ``fuse``, else as they are (a list)."""
    return fuse_relu(layers) if fuse else list(layers)


class Residual(Sequential):
    """``y = x + body(x)`` (an identity skip): ``body`` keeps the shape of ``x``."""

    def forward(self, x, mode="train"):
        return x + super().forward(x, mode)

    def backward(self, dy):
        return dy + super().backward(dy)


def norm_layer(norm, channels, dtype, channels_last):
    """A BN layer from the factory ``norm`` over the layout's channel axis."""
    return norm(channels, dtype=dtype, axis=-1) if channels_last else norm(channels, dtype=dtype)


#: depths (BN layers) the residual CNN supports: two per block
RESNET_DEPTHS = range(2, 65, 2)


def check_depth(depth):
    """``depth`` as a number of BN layers of :func:`resnet`, or a clear error."""
    if (
        isinstance(depth, bool)
        or not isinstance(depth, (int, np.integer))
        or depth not in RESNET_DEPTHS
    ):
        raise ValueError(
            "depth must be an even integer in 2-64 (two BN layers per residual block), "
            f"got {depth!r}"
        )
    return int(depth)
