"""The MNIST-1D networks: the two baselines (Greydanus 2020) with BN after each hidden
layer, and a residual CNN whose depth (number of BN layers) is a parameter."""

import functools

import numpy as np

from .conv import output_length
from .conv2d import Conv2d
from .layers import Conv1d, Flatten, GlobalAvgPool, Linear, ReLU, Reshape
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


def _sequence(layers, fuse):
    return fuse_relu(layers) if fuse else list(layers)


class Residual(Sequential):
    """``y = x + body(x)`` (an identity skip): ``body`` keeps the shape of ``x``."""

    def forward(self, x, mode="train"):
        return x + super().forward(x, mode)

    def backward(self, dy):
        return dy + super().backward(dy)


def mlp(in_features=40, classes=10, hidden=100, rng=None, dtype=np.float32, norm=BatchNorm,
        fuse=True):  # fmt: skip
    """MNIST-1D's MLP baseline (40 -> 100 -> 100 -> 10, ReLU) with BN after each hidden
    linear layer (whose bias BN makes redundant, so it has none). ``fuse``: every BN
    followed by a ReLU applies it itself, fused (:func:`fuse_relu`; the same values as
    ``fuse=False``, which keeps the ReLU layers)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return Sequential(
        _sequence([
            Linear(in_features, hidden, rng, bias=False, dtype=dtype),
            norm(hidden, dtype=dtype),
            ReLU(),
            Linear(hidden, hidden, rng, bias=False, dtype=dtype),
            norm(hidden, dtype=dtype),
            ReLU(),
            Linear(hidden, classes, rng, dtype=dtype),
        ], fuse)
    )  # fmt: skip


def cnn(length=40, classes=10, channels=25, rng=None, dtype=np.float32, norm=BatchNorm,
        channels_last=True, fuse=True):  # fmt: skip
    """MNIST-1D's CNN baseline: three Conv1d of ``channels`` (kernel 5, 3, 3; stride 2;
    padding 1), each followed by BN and ReLU, then a linear layer on the flattened
    ``channels x 5`` features (for ``length`` 40), flattened in PyTorch's channel-first
    order. ``channels_last``: the layout the hidden layers compute in (the faster one;
    the same network and the same initial weights either way); ``fuse`` as in
    :func:`mlp`."""
    rng = rng if rng is not None else np.random.default_rng(0)
    layers = [Reshape((length, 1) if channels_last else (1, length))]
    c_in, L = 1, length
    for k in (5, 3, 3):
        layers += [
            Conv1d(c_in, channels, k, rng, stride=2, padding=1, bias=False, dtype=dtype,
                   channels_last=channels_last),
            _norm(norm, channels, dtype, channels_last),
            ReLU(),
        ]  # fmt: skip
        c_in, L = channels, output_length(L, k, stride=2, padding=1)
    layers += [Flatten(channels_last), Linear(channels * L, classes, rng, dtype=dtype)]
    return Sequential(_sequence(layers, fuse))


def _norm(norm, channels, dtype, channels_last):
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


def resnet(
    length=40, classes=10, channels=32, depth=8, rng=None, dtype=np.float32, norm=BatchNorm,
    channels_last=True, fuse=True,
):  # fmt: skip
    """A residual MNIST-1D CNN with ``depth`` BN layers: a stem Conv1d (kernel 5, stride 2,
    ``channels``, ReLU; no BN), then ``depth / 2`` blocks ``x + BN(Conv(ReLU(BN(Conv(x)))))``
    (kernel 3, padding 1, identity skips; He et al. 2016's basic block), each followed by
    ReLU, global average pooling and a linear layer. The last BN of each block starts
    with weight 0 (Goyal et al. 2017), so every block starts as the identity and depth 64
    trains as easily as depth 2. ``channels_last`` as in :func:`cnn`; ``fuse`` as in
    :func:`mlp` (the first BN of each block: the last one meets the skip first)."""
    depth = check_depth(depth)
    rng = rng if rng is not None else np.random.default_rng(0)
    conv = functools.partial(Conv1d, dtype=dtype, channels_last=channels_last)
    bn = functools.partial(_norm, norm, channels, dtype, channels_last)
    layers = [Reshape((length, 1) if channels_last else (1, length)),
              conv(1, channels, 5, rng, stride=2, padding=2), ReLU()]  # fmt: skip
    for _ in range(depth // 2):
        last = bn()
        last.params["weight"][:] = 0
        body = [conv(channels, channels, 3, rng, padding=1, bias=False), bn(), ReLU(),
                conv(channels, channels, 3, rng, padding=1, bias=False), last]  # fmt: skip
        layers += [Residual(_sequence(body, fuse)), ReLU()]
    layers += [GlobalAvgPool(channels_last), Linear(channels, classes, rng, dtype=dtype)]
    return Sequential(layers)


# the image models build on Sequential and Residual above (models2d imports them)
from .models2d import cnn2d, resnet2d, square_image  # noqa: E402

MODELS = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "cnn2d": cnn2d, "resnet2d": resnet2d}
#: models that take a ``depth`` (number of BN layers)
DEPTH_MODELS = ("resnet", "resnet2d")
#: models that take flat rows of square images: their first argument is ``(side, side)``
IMAGE_MODELS = ("cnn2d", "resnet2d")


def build(name, in_features, classes, rng, dtype=np.float32, depth=None, norm=BatchNorm,
          fuse=True):  # fmt: skip
    """A model by name (a key of :data:`MODELS`) for inputs of ``in_features`` values
    (for ``"cnn2d"`` and ``"resnet2d"`` flat rows of square images: ``in_features`` must
    be a perfect square); ``depth`` (BN layers) for ``"resnet"`` and ``"resnet2d"`` only;
    ``norm(channels, dtype=..., axis=...)`` makes each BN layer (e.g. a ghost BatchNorm
    or BatchRenorm; the CNNs and resnets pass ``axis=-1``: they compute channels-last);
    ``fuse``: BN followed by ReLU as one layer, fused (:func:`fuse_relu`; the default)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if depth is not None and name not in DEPTH_MODELS:
        raise ValueError(
            f"depth applies to models 'resnet' and 'resnet2d' only, got model {name!r}"
        )
    extra = {} if depth is None else {"depth": depth}
    shape = square_image(name, in_features) if name in IMAGE_MODELS else in_features
    model = MODELS[name](shape, classes, rng=rng, dtype=dtype, norm=norm, fuse=fuse, **extra)
    model.input_shape, model.dtype = (in_features,), np.dtype(dtype)  # checked by evaluate
    return model
