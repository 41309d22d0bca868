"""bnbench.nn.sequential: Sequential and Residual containers (gradients by finite
differences, the input-gradient skip), the BN-then-ReLU fusion of a layer list, the BN
layer over either layout's channel axis and the residual depth check."""

import numpy as np
import pytest
from helpers import check_layer

from bnbench import nn
from bnbench.nn import sequential

F64 = np.float64


def test_residual_block_and_pooling_gradients(rng):
    body = [nn.Conv1d(3, 3, 3, rng, padding=1, dtype=F64), nn.BatchNorm(3, dtype=F64), nn.ReLU(),
            nn.Conv1d(3, 3, 3, rng, padding=1, bias=False, dtype=F64)]  # fmt: skip
    block = nn.Residual(body)
    check_layer(block, rng.normal(size=(4, 3, 7)), rng)
    check_layer(nn.GlobalAvgPool(), rng.normal(size=(3, 2, 5)), rng)
    assert block.bn_layers == [body[1]] and len(block.parameters()) == 5


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_skipping_the_input_gradient_keeps_every_parameter_gradient(name, rng):
    x = rng.normal(size=(6, 40))
    y = rng.integers(0, 10, 6)
    grads = []
    for input_grad in (True, False):
        model = nn.build(name, 40, 10, np.random.default_rng(3), dtype=F64, depth=None)
        model.input_grad = input_grad
        _, g = nn.cross_entropy(model.forward(x, "train"), y)
        dx = model.backward(g)
        assert (dx is None) == (not input_grad)
        grads.append([layer.grads[k].copy() for layer, k in model.parameters()])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(a, b)
    # a model whose first layer is not a Linear or Conv1d skips nothing
    odd = nn.Sequential([nn.BatchNorm(40, dtype=F64), nn.Linear(40, 10, rng, dtype=F64)])
    odd.input_grad = False
    odd.forward(x, "train")
    assert odd.backward(np.ones((6, 10))).shape == (6, 40)


def test_fuse_relu_takes_each_relu_after_a_bn():
    mlp = nn.mlp()
    assert [type(layer).__name__ for layer in mlp.layers] == [
        "Linear", "BatchNorm", "Linear", "BatchNorm", "Linear"]  # fmt: skip
    resnet = nn.resnet(depth=4)
    blocks = [layer for layer in resnet.layers if isinstance(layer, nn.Residual)]
    for block in blocks:  # the first BN of a block takes its ReLU; the last meets the skip
        bns = [isinstance(layer, nn.BatchNorm) and layer.relu for layer in block.layers]
        assert bns == [False, True, False, False] and isinstance(block.layers[3], nn.BatchNorm)
    layers = nn.fuse_relu([nn.ReLU(), nn.BatchNorm(3), nn.ReLU(), nn.ReLU()])
    assert [type(layer).__name__ for layer in layers] == ["ReLU", "BatchNorm", "ReLU"]


def test_sequence_fuses_only_when_asked():
    layers = [nn.BatchNorm(3), nn.ReLU()]
    assert [type(x) for x in sequential.sequence(layers, fuse=False)] == [nn.BatchNorm, nn.ReLU]
    assert not layers[0].relu
    fused = sequential.sequence(layers, fuse=True)
    assert [type(x) for x in fused] == [nn.BatchNorm] and fused[0].relu


@pytest.mark.parametrize("channels_last", [True, False])
def test_norm_layer_normalises_the_layouts_channel_axis(channels_last, rng):
    layer = sequential.norm_layer(nn.BatchNorm, 3, F64, channels_last)
    x = rng.normal(2.0, 3.0, (5, 4, 3) if channels_last else (5, 3, 4))
    y = layer.forward(x, "train")
    axes = (0, 1) if channels_last else (0, 2)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-4)


@pytest.mark.parametrize("depth", [0, 3, 66, 8.0, True, "8"])
def test_check_depth_refuses_what_the_blocks_cannot_build(depth):
    with pytest.raises(ValueError, match=r"depth must be an even integer in 2-64"):
        sequential.check_depth(depth)


def test_check_depth_accepts_numpy_integers():
    assert sequential.check_depth(np.int64(8)) == 8
