"""The MNIST-1D networks: the two baselines (Greydanus 2020) with BN after each hidden
layer, and a residual CNN whose depth (number of BN layers) is a parameter."""

import functools

import numpy as np

from .conv import output_length
from .layers import Conv1d, Flatten, GlobalAvgPool, Linear, ReLU, Reshape
from .norm import BatchNorm
from .sequential import Residual, Sequential, check_depth, norm_layer, sequence


def mlp(in_features=40, classes=10, hidden=100, rng=None, dtype=np.float32, norm=BatchNorm,
        fuse=True):  # fmt: skip
    """MNIST-1D's MLP baseline (40 -> 100 -> 100 -> 10, ReLU) with BN after each hidden
    linear layer (whose bias BN makes redundant, so it has none). ``fuse``: every BN
    followed by a ReLU applies it itself, fused (:func:`fuse_relu`; the same values as
    ``fuse=False``, which keeps the ReLU layers)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return Sequential(
        sequence([
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
            norm_layer(norm, channels, dtype, channels_last),
            ReLU(),
        ]  # fmt: skip
        c_in, L = channels, output_length(L, k, stride=2, padding=1)
    layers += [Flatten(channels_last), Linear(channels * L, classes, rng, dtype=dtype)]
    return Sequential(sequence(layers, fuse))


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
    bn = functools.partial(norm_layer, norm, channels, dtype, channels_last)
    layers = [Reshape((length, 1) if channels_last else (1, length)),
              conv(1, channels, 5, rng, stride=2, padding=2), ReLU()]  # fmt: skip
    for _ in range(depth // 2):
        last = bn()
        last.params["weight"][:] = 0
        body = [conv(channels, channels, 3, rng, padding=1, bias=False), bn(), ReLU(),
                conv(channels, channels, 3, rng, padding=1, bias=False), last]  # fmt: skip
        layers += [Residual(sequence(body, fuse)), ReLU()]
    layers += [GlobalAvgPool(channels_last), Linear(channels, classes, rng, dtype=dtype)]
    return Sequential(layers)
