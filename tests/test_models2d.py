"""The image models cnn2d and resnet2d: shapes, gradients by finite differences (float64),
both layouts, build() and its errors, PyTorch's network with the same weights."""

import numpy as np
import pytest
from helpers import numeric_grad
from test_conv_layout import randomise_bn

from bnbench import nn
from bnbench.kernels import cpu
from bnbench.nn import conv2d

F64 = np.float64


def tiny(name, channels_last=True, seed=0, **kw):
    """A small float64 network on 8 x 8 images, BN weights randomised."""
    kw = {"channels": (2, 3)} if name == "cnn2d" else {"channels": 3, "depth": 2, **kw}
    model = getattr(nn, name)((8, 8), 3, rng=np.random.default_rng(seed), dtype=F64,
                              channels_last=channels_last, **kw)  # fmt: skip
    randomise_bn(model, seed + 1)
    return model


@pytest.fixture(autouse=True)
def serial_twins(monkeypatch):
    """The serial twins (the same code as the parallel kernels, which tests/test_conv2d.py
    runs in float32 and :func:`test_cnn2d_trains_with_the_parallel_kernels` here): a
    parallel twin compiles 3-5x slower, and hundreds of tiny forward passes each wake the
    thread pool otherwise (20 ms a pass on a loaded 2-core machine)."""
    monkeypatch.setattr(cpu, "SERIAL_BELOW", 1 << 62)
    monkeypatch.setattr(cpu, "ELEMENTWISE_SERIAL_BELOW", 1 << 62)
    monkeypatch.setattr(conv2d, "PARALLEL_MACS", 1 << 62)


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
@pytest.mark.parametrize("name", ["cnn2d", "resnet2d"])
def test_every_parameter_gradient_by_finite_differences(name, channels_last, rng):
    model = tiny(name, channels_last)
    x = rng.normal(size=(4, 64))
    y = rng.integers(0, 3, 4)

    def loss():
        return nn.cross_entropy(model.forward(x, "train"), y)[0]

    _, g = nn.cross_entropy(model.forward(x, "train"), y)
    dx = model.backward(g)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-8)
    for layer, k in model.parameters():
        analytic = layer.grads[k].copy()
        assert np.any(analytic != 0), (type(layer).__name__, k)
        np.testing.assert_allclose(analytic, numeric_grad(loss, layer.params[k]), rtol=1e-5,
                                   atol=1e-8, err_msg=f"{type(layer).__name__}.{k}")  # fmt: skip


@pytest.mark.parametrize("name", ["cnn2d", "resnet2d"])
def test_layouts_give_the_same_network(name, rng):
    cl, cf = tiny(name, True), tiny(name, False)
    assert [b.axis for b in cl.bn_layers] == [-1] * len(cl.bn_layers)
    assert [b.axis for b in cf.bn_layers] == [1] * len(cf.bn_layers)
    for (ol, k), (of, _) in zip(cl.parameters(), cf.parameters(), strict=True):
        np.testing.assert_array_equal(ol.params[k], of.params[k], err_msg=k)
    x = rng.normal(size=(5, 64))
    for mode in ("train", "stats"):
        np.testing.assert_allclose(cl.forward(x, mode), cf.forward(x, mode), rtol=1e-10,
                                   atol=1e-12, err_msg=mode)  # fmt: skip
    g = rng.normal(size=(5, 3))
    np.testing.assert_allclose(cl.backward(g), cf.backward(g), rtol=1e-10, atol=1e-12)
    for (ol, k), (of, _) in zip(cl.parameters(), cf.parameters(), strict=True):
        np.testing.assert_allclose(ol.grads[k], of.grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_cnn2d_default_architecture(rng):
    model = nn.cnn2d(rng=rng)
    convs = [layer for layer in model.layers if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1)), (32, 32, (3, 3), (1, 1))]  # fmt: skip
    assert all(c.channels_last and "bias" not in c.params for c in convs)
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in model.layers) == 2
    assert model.layers[-1].params["weight"].shape == (10, 32 * 7 * 7)
    assert sum(layer.params[k].size for layer, k in model.parameters()) == 29818  # docstring
    x = rng.normal(size=(3, 784)).astype(np.float32)
    out = model.forward(x, "train")
    assert out.shape == (3, 10) and out.dtype == np.float32


@pytest.mark.parametrize("depth", [2, 6])
def test_resnet2d_has_depth_bn_layers_and_starts_as_identity_blocks(depth, rng):
    model = nn.build("resnet2d", 784, 10, rng, depth=depth)
    assert len(model.bn_layers) == depth
    assert all(np.all(bn.params["weight"] == 0) for bn in model.bn_layers[1::2])
    stem = model.layers[1]
    assert isinstance(stem, nn.Conv2d) and stem.stride == (2, 2)
    x = rng.normal(size=(2, 784)).astype(np.float32)
    assert model.forward(x, "train").shape == (2, 10)
    with pytest.raises(ValueError, match=r"depth must be an even integer in 2-64"):
        nn.resnet2d(depth=3)


def test_build_image_models_and_their_errors(rng):
    model = nn.build("cnn2d", 784, 10, rng)
    assert model.input_shape == (784,) and model.dtype == np.float32
    assert model.layers[0].shape == (28, 28, 1)
    assert nn.build("cnn2d", 16 * 16, 4, rng).forward(np.ones((2, 256), np.float32)).shape == (
        2, 4)  # fmt: skip
    assert len(nn.build("resnet2d", 784, 10, rng, depth=4).bn_layers) == 4
    for name in ("cnn2d", "resnet2d"):
        with pytest.raises(
            ValueError,
            match=rf"model '{name}' needs square images: "
            r"in_features must be a perfect square .* got 40",
        ):
            nn.build(name, 40, 10, rng)  # an MNIST-1D signal  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"depth applies to models 'resnet' and 'resnet2d' only, "
        r"got model 'cnn2d'",
    ):
        nn.build("cnn2d", 784, 10, rng, depth=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"depth must be an even integer"):
        nn.build("resnet2d", 784, 10, rng, depth=5)
    assert {"cnn2d", "resnet2d"} <= set(nn.MODELS)


def test_build_keeps_the_1d_models(rng):
    for name, kw in (("mlp", {}), ("cnn", {}), ("resnet", {"depth": 4})):
        built = nn.build(name, 40, 10, np.random.default_rng(2), **kw)
        direct = nn.MODELS[name](40, 10, rng=np.random.default_rng(2), **kw)
        for (a, k), (b, _) in zip(built.parameters(), direct.parameters(), strict=True):
            np.testing.assert_array_equal(a.params[k], b.params[k])
    # a 1-D model on flat images works mechanically, as a signal of 784 values
    model = nn.build("cnn", 784, 10, rng)
    assert model.input_shape == (784,)
    assert model.forward(np.ones((2, 784), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cnn2d", "resnet2d"])
def test_training_skips_the_first_convolutions_input_gradient(name, rng):
    x = rng.normal(size=(4, 64))
    y = rng.integers(0, 3, 4)
    grads = []
    for input_grad in (True, False):
        model = tiny(name)
        model.input_grad = input_grad
        _, g = nn.cross_entropy(model.forward(x, "train"), y)
        assert (model.backward(g) is None) == (not input_grad)
        grads.append([layer.grads[k].copy() for layer, k in model.parameters()])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cnn2d_learns_where_the_blob_is(rng):
    """A blob in one of four quadrants of an 8 x 8 image: the class is the quadrant."""
    n = 128
    labels = rng.integers(0, 4, n)
    images = rng.normal(scale=0.3, size=(n, 8, 8))
    for i, c in enumerate(labels):
        r, s = 4 * (c // 2), 4 * (c % 2)
        images[i, r + 1 : r + 3, s + 1 : s + 3] += 2.0
    x = images.reshape(n, 64).astype(np.float32)
    model = nn.build("cnn2d", 64, 4, np.random.default_rng(0))
    model.input_grad = False
    opt = nn.SGD(model, lr=0.05)
    for _ in range(3):
        for b in range(0, n, 16):
            _, g = nn.cross_entropy(model.forward(x[b : b + 16], "train"), labels[b : b + 16])
            model.backward(g)
            opt.step()
    assert np.mean(model.forward(x, "stats").argmax(axis=1) == labels) > 0.9


def test_cnn2d_trains_with_the_parallel_kernels(rng, monkeypatch):
    """A float32 step of the default cnn2d with the parallel kernels (two chunks of
    samples, blocks of the real size) against the serial twins."""
    x = rng.normal(size=(10, 784)).astype(np.float32)
    y = rng.integers(0, 10, 10)
    runs = []
    for parallel in (False, True):
        if parallel:
            for module, name in ((cpu, "SERIAL_BELOW"), (cpu, "ELEMENTWISE_SERIAL_BELOW"),
                                 (conv2d, "PARALLEL_MACS")):  # fmt: skip
                monkeypatch.setattr(module, name, 0)
        model = nn.build("cnn2d", 784, 10, np.random.default_rng(0))
        logits = model.forward(x, "train")
        model.backward(nn.cross_entropy(logits, y)[1])
        runs.append([logits] + [layer.grads[k].copy() for layer, k in model.parameters()])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5 * float(np.abs(a).max()))


def torch_cnn2d(model):
    """PyTorch's network with ``model``'s weights (a default-size cnn2d)."""
    import torch

    T = torch.nn
    layers = []
    for layer in model.layers[1:]:
        if isinstance(layer, nn.Conv2d):
            layers.append(T.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1,
                                   bias=False, dtype=torch.float64))  # fmt: skip
        elif isinstance(layer, nn.BatchNorm):
            layers.append(T.BatchNorm2d(layer.num_features, dtype=torch.float64))
        elif isinstance(layer, nn.Linear):
            layers.append(T.Linear(*layer.params["weight"].shape[::-1], dtype=torch.float64))
        else:
            layers.append({nn.ReLU: T.ReLU(), nn.MaxPool2d: T.MaxPool2d(2),
                           nn.Flatten: T.Flatten()}[type(layer)])  # fmt: skip
        for k, v in layer.params.items():
            getattr(layers[-1], k).data[...] = torch.tensor(v)
        if getattr(layer, "relu", False):  # a BN with its ReLU fused (nn.fuse_relu)
            layers.append(T.ReLU())
    return T.Sequential(*layers)


def test_cnn2d_is_pytorchs_network(rng):
    torch = pytest.importorskip("torch")
    model = nn.cnn2d(rng=np.random.default_rng(0), dtype=F64, channels=(4, 6, 5))
    randomise_bn(model, 1)
    net = torch_cnn2d(model)
    x = rng.normal(size=(6, 784))
    y = rng.integers(0, 10, 6)
    xt = torch.tensor(x.reshape(6, 1, 28, 28), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(net(xt), torch.tensor(y))
    loss.backward()
    ours, g = nn.cross_entropy(model.forward(x, "train"), y)
    np.testing.assert_allclose(ours, loss.item(), rtol=1e-12)
    np.testing.assert_allclose(model.backward(g), xt.grad.numpy().reshape(6, 784), rtol=1e-8,
                               atol=1e-12)  # fmt: skip
    torch_params = [getattr(m, k) for m in net for k in ("weight", "bias")
                    if getattr(m, k, None) is not None]  # fmt: skip
    for (layer, k), p in zip(model.parameters(), torch_params, strict=True):
        np.testing.assert_allclose(layer.grads[k], p.grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=f"{type(layer).__name__}.{k}")  # fmt: skip
