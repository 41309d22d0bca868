"""The image networks (MNIST digits): a plain CNN and a residual CNN of 2-D convolutions
with BN, the 2-D counterparts of :func:`~bnbench.nn.models.cnn` and
:func:`~bnbench.nn.models.resnet`. They take a dataset's flat rows ``(N, H * W)``
(row-major images) and reshape them to ``(N, H, W, 1)`` (``(N, 1, H, W)`` channel-first)
with a :class:`~bnbench.nn.Reshape` first layer."""

import functools
import math

import numpy as np

from .conv2d import Conv2d, output_size
from .layers import Flatten, GlobalAvgPool, Linear, ReLU, Reshape
from .norm import BatchNorm
from .pool import MaxPool2d
from .sequential import Residual, Sequential, check_depth, norm_layer, sequence


def _reshape(image_shape, channels_last):
    H, W = image_shape
    return Reshape((H, W, 1) if channels_last else (1, H, W))


def cnn2d(image_shape=(28, 28), classes=10, channels=(16, 32, 32), rng=None, dtype=np.float32,
          norm=BatchNorm, channels_last=True, fuse=True):  # fmt: skip
    """A small digit CNN: one block ``Conv2d 3x3 (padding 1, no bias) - BN - ReLU`` per
    entry of ``channels``, a 2x2 max pool after every block but the last, then the last
    block's ``channels[-1] x 7 x 7`` features (for 28 x 28 images) flattened in PyTorch's
    channel-first order and a linear classifier.

    The defaults (16, 32, 32) cost 1.47 M multiply-adds per 28 x 28 image forward (0.11 M,
    0.90 M and 0.45 M for the three convolutions: the one at full resolution has a single
    input channel, the wider ones work on pooled maps) and have 29,818 parameters, 15,690
    of them in the classifier. On MNIST (``bnbench.mnist``: 4000 training digits, 15
    epochs, batch 64, population statistics) ``bnbench.train.run`` reached 97.9, 97.5 and
    97.7% test accuracy for seeds 0-2, about 17 s a run on 2 cores. The flattened head is
    what gets it there: global average pooling in its place (330 classifier parameters)
    reached 96.4 and 96.5% on two seeds where this head reached 97.7 and 97.0%, a
    third 2x2 max pool before flattening (2,890) 97.6 and 97.3%.

    ``channels_last``: the layout the hidden layers compute in (the faster one; the same
    network and the same initial weights either way); ``fuse``: each BN applies the ReLU
    after it, fused (:func:`~bnbench.nn.fuse_relu`)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    size = tuple(image_shape)
    layers, c_in = [_reshape(size, channels_last)], 1
    for b, c_out in enumerate(channels):
        layers += [
            Conv2d(c_in, c_out, 3, rng, padding=1, bias=False, dtype=dtype,
                   channels_last=channels_last),
            norm_layer(norm, c_out, dtype, channels_last),
            ReLU(),
        ]  # fmt: skip
        if b < len(channels) - 1:
            layers.append(MaxPool2d(2, channels_last=channels_last))
            size = output_size(size, (2, 2), (2, 2), (0, 0))
        c_in = c_out
    layers += [Flatten(channels_last),
               Linear(c_in * math.prod(size), classes, rng, dtype=dtype)]  # fmt: skip
    return Sequential(sequence(layers, fuse))


def resnet2d(image_shape=(28, 28), classes=10, channels=16, depth=8, rng=None,
             dtype=np.float32, norm=BatchNorm, channels_last=True, fuse=True):  # fmt: skip
    """A residual digit CNN with ``depth`` BN layers: a stem Conv2d (3x3, stride 2,
    padding 1, ``channels``, ReLU; no BN: 28 x 28 -> 14 x 14), then ``depth / 2`` blocks
    ``x + BN(Conv(ReLU(BN(Conv(x)))))`` (3x3, padding 1, no bias, identity skips; He et
    al. 2016's basic block), each followed by ReLU, global average pooling and a linear
    layer. The last BN of each block starts with weight 0 (Goyal et al. 2017), so every
    block starts as the identity, as in :func:`~bnbench.nn.models.resnet`. A block costs
    0.9 M multiply-adds per 28 x 28 image at the default width 16; depth 8 reached 97.2%
    on MNIST (as :func:`cnn2d`, seed 0) in about 35 s on 2 cores. ``fuse`` as in
    :func:`cnn2d` (the first BN of each block)."""
    depth = check_depth(depth)
    rng = rng if rng is not None else np.random.default_rng(0)
    conv = functools.partial(Conv2d, dtype=dtype, channels_last=channels_last)
    bn = functools.partial(norm_layer, norm, channels, dtype, channels_last)
    layers = [_reshape(image_shape, channels_last),
              conv(1, channels, 3, rng, stride=2, padding=1), ReLU()]  # fmt: skip
    for _ in range(depth // 2):
        last = bn()
        last.params["weight"][:] = 0
        body = [conv(channels, channels, 3, rng, padding=1, bias=False), bn(), ReLU(),
                conv(channels, channels, 3, rng, padding=1, bias=False), last]  # fmt: skip
        layers += [Residual(sequence(body, fuse)), ReLU()]
    layers += [GlobalAvgPool(channels_last), Linear(channels, classes, rng, dtype=dtype)]
    return Sequential(layers)


def square_image(name, in_features):
    """``(side, side)`` for flat rows of ``in_features`` values, or a clear error."""
    side = math.isqrt(in_features) if in_features > 0 else 0
    if side * side != in_features or side == 0:
        raise ValueError(
            f"model {name!r} needs square images: in_features must be a perfect square "
            f"(784 = 28 x 28 for MNIST), got {in_features}"
        )
    return side, side
