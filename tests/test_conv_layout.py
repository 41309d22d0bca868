"""Channels-last layers (Conv1d, Flatten, GlobalAvgPool) and networks: the same
arithmetic as the channel-first ones, gradients by finite differences (float64)."""

import numpy as np
import pytest
from helpers import check_layer

from bnbench import nn
from bnbench.nn import blas

F64 = np.float64
# (kernel_size, stride, padding, length)
CONVS = [(5, 2, 1, 40), (3, 2, 1, 19), (2, 3, 2, 9), (3, 1, 0, 7), (3, 2, 1, 10), (1, 1, 0, 3),
         (4, 1, 3, 2)]  # fmt: skip


def t(a):
    """(N, C, L) <-> (N, L, C)."""
    return np.ascontiguousarray(a.transpose(0, 2, 1))


def conv_pair(c_in, c_out, k, stride, padding, seed=7, bias=True):
    """The same convolution in both layouts, each built from its own rng of one seed."""
    kw = {"stride": stride, "padding": padding, "dtype": F64, "bias": bias}
    cl = nn.Conv1d(c_in, c_out, k, np.random.default_rng(seed), channels_last=True, **kw)
    cf = nn.Conv1d(c_in, c_out, k, np.random.default_rng(seed), channels_last=False, **kw)
    return cl, cf


def direct_conv(x_cl, weight, bias, k, stride, padding):
    """Channels-last convolution as a sum over taps, weight in PyTorch order."""
    N, L, C_in = x_cl.shape
    C_out = weight.shape[0]
    W = weight.reshape(C_out, C_in, k)
    xp = np.pad(x_cl, ((0, 0), (padding, padding), (0, 0)))
    L_out = (L + 2 * padding - k) // stride + 1
    y = np.stack([np.einsum("njc,ocj->no", xp[:, t * stride : t * stride + k], W)
                  for t in range(L_out)], axis=1)  # fmt: skip
    return y if bias is None else y + bias


@pytest.mark.parametrize("parallel", [False, True], ids=["blas", "split"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("k", "stride", "padding", "length"), CONVS)
def test_conv1d_layouts_agree(k, stride, padding, length, bias, parallel, rng, monkeypatch):
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0 if parallel else 1 << 62)
    cl, cf = conv_pair(3, 4, k, stride, padding, bias=bias)
    assert cl.params.keys() == cf.params.keys()
    for name in cl.params:
        np.testing.assert_array_equal(cl.params[name], cf.params[name], err_msg=name)
    x_cf = rng.normal(size=(5, 3, length))
    x_cl = t(x_cf)
    y_cl = cl.forward(x_cl, "train")
    y_cf = cf.forward(x_cf, "train")
    L_out = (length + 2 * padding - k) // stride + 1
    assert y_cl.shape == (5, L_out, 4) and y_cf.shape == (5, 4, L_out)
    np.testing.assert_allclose(y_cl, t(y_cf), rtol=1e-12, atol=1e-14)
    direct = direct_conv(x_cl, cl.params["weight"], cl.params.get("bias"), k, stride, padding)
    np.testing.assert_allclose(y_cl, direct, rtol=1e-12, atol=1e-14)

    dy_cf = rng.normal(size=y_cf.shape)
    dx_cl = cl.backward(t(dy_cf))
    dx_cf = cf.backward(dy_cf)
    assert dx_cl.shape == x_cl.shape and dx_cf.shape == x_cf.shape
    np.testing.assert_allclose(dx_cl, t(dx_cf), rtol=1e-12, atol=1e-14)
    for name in cl.grads:
        np.testing.assert_allclose(cl.grads[name], cf.grads[name], rtol=1e-12, atol=1e-14,
                                   err_msg=name)  # fmt: skip


@pytest.mark.parametrize("parallel", [False, True], ids=["blas", "split"])
@pytest.mark.parametrize(("k", "stride", "padding", "length"), CONVS)
def test_channels_last_conv1d_gradients(k, stride, padding, length, parallel, rng, monkeypatch):
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0 if parallel else 1 << 62)
    conv = nn.Conv1d(2, 3, k, rng, stride=stride, padding=padding, dtype=F64,
                     channels_last=True)  # fmt: skip
    check_layer(conv, rng.normal(size=(2, length, 2)), rng)


def test_channels_last_conv1d_float32_matches_float64(rng):
    cl32 = nn.Conv1d(3, 5, 3, np.random.default_rng(3), stride=2, padding=1,
                     channels_last=True)  # fmt: skip
    cl64 = nn.Conv1d(3, 5, 3, np.random.default_rng(3), stride=2, padding=1, dtype=F64,
                     channels_last=True)  # fmt: skip
    x = rng.normal(size=(4, 11, 3))
    y32 = cl32.forward(x.astype(np.float32), "train")
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, cl64.forward(x, "train"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_too_short_input_is_an_error(channels_last):
    conv = nn.Conv1d(2, 3, 5, np.random.default_rng(0), padding=1, channels_last=channels_last)
    x = np.ones((2, 2, 2), np.float32)  # length 2 < 5 - 2 * 1
    with pytest.raises(ValueError, match=r"too short for kernel_size 5 with padding 1"):
        conv.forward(x, "train")
    conv.forward(np.ones((2, 3, 2) if channels_last else (2, 2, 3), np.float32), "train")


def test_wrong_input_channels_name_the_layout():
    cl = nn.Conv1d(2, 3, 3, np.random.default_rng(0), channels_last=True)
    cf = nn.Conv1d(2, 3, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, L, C_in\) with C_in = 2, got \(4, 2, 9\)"):
        cl.forward(np.ones((4, 2, 9), np.float32), "train")  # a channel-first array
    with pytest.raises(ValueError, match=r"\(N, C_in, L\) with C_in = 2, got \(4, 9, 2\)"):
        cf.forward(np.ones((4, 9, 2), np.float32), "train")  # a channels-last array
    with pytest.raises(ValueError, match=r"\(N, L, C_in\)"):
        cl.forward(np.ones((4, 9), np.float32), "train")
    with pytest.raises(ValueError, match=r"\(N, L, C_in\)"):
        cl.forward(np.ones((4, 9, 2, 1), np.float32), "train")


# -- Flatten, GlobalAvgPool


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 3, 4, 5)], ids=str)
def test_channels_last_flatten_orders_features_channel_first(shape, rng):
    x = rng.normal(size=shape)
    layer = nn.Flatten(channels_last=True)
    y = layer.forward(x, "train")
    np.testing.assert_array_equal(y, np.moveaxis(x, -1, 1).reshape(shape[0], -1))
    np.testing.assert_array_equal(y, nn.Flatten().forward(np.moveaxis(x, -1, 1), "train"))
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)
    assert dx.shape == shape
    np.testing.assert_array_equal(np.moveaxis(dx, -1, 1).reshape(shape[0], -1), dy)
    check_layer(nn.Flatten(channels_last=True), x, rng)


@pytest.mark.parametrize("channels_last", [True, False])
def test_global_avg_pool(channels_last, rng):
    x = rng.normal(size=(3, 5, 4))
    layer = nn.GlobalAvgPool(channels_last)
    y = layer.forward(x, "train")
    np.testing.assert_allclose(y, x.mean(axis=1 if channels_last else 2), rtol=1e-14)
    assert y.shape == ((3, 4) if channels_last else (3, 5))
    check_layer(nn.GlobalAvgPool(channels_last), x, rng)


# -- networks: the same network in both layouts


def randomise_bn(model, seed):
    """Non-trivial BN weights and biases (resnet starts each block as the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.bn_layers:
        layer.params["weight"][...] = rng.uniform(0.5, 2.0, layer.num_features)
        layer.params["bias"][...] = rng.normal(size=layer.num_features)


def model_pair(name, seed=0, **kw):
    build = {"cnn": nn.cnn, "resnet": nn.resnet}[name]
    cl = build(rng=np.random.default_rng(seed), dtype=F64, channels_last=True, **kw)
    cf = build(rng=np.random.default_rng(seed), dtype=F64, channels_last=False, **kw)
    for m in (cl, cf):
        randomise_bn(m, seed + 1)
    return cl, cf


def check_models_agree(cl, cf, rng, n=6):
    pl, pf = cl.parameters(), cf.parameters()
    assert [(type(o).__name__, k) for o, k in pl] == [(type(o).__name__, k) for o, k in pf]
    for (ol, k), (of, _) in zip(pl, pf, strict=True):
        np.testing.assert_array_equal(ol.params[k], of.params[k], err_msg=k)
    assert [b.axis for b in cl.bn_layers] == [-1] * len(cl.bn_layers)
    assert [b.axis for b in cf.bn_layers] == [1] * len(cf.bn_layers)
    x = rng.normal(size=(n, 40))
    for mode in ("train", "stats"):
        lcl, lcf = cl.forward(x, mode), cf.forward(x, mode)
        assert lcl.shape == (n, 10)
        np.testing.assert_allclose(lcl, lcf, rtol=1e-10, atol=1e-12, err_msg=mode)
    cl.forward(x, "train")
    cf.forward(x, "train")
    g = rng.normal(size=(n, 10))
    dx_cl, dx_cf = cl.backward(g), cf.backward(g)
    np.testing.assert_allclose(dx_cl, dx_cf, rtol=1e-10, atol=1e-12)
    for (ol, k), (of, _) in zip(pl, pf, strict=True):
        gl, gf = ol.grads[k], of.grads[k]
        assert np.any(gl != 0), (type(ol).__name__, k)
        scale = max(1.0, float(np.abs(gf).max()))
        np.testing.assert_allclose(gl, gf, rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=f"{type(ol).__name__}.{k}")  # fmt: skip
    # evaluation with given statistics: each BN layer's last batch statistics
    for model in (cl, cf):
        for layer in model.bn_layers:
            mean, var, _ = layer.last_batch
            layer.eval_stats = (mean, var)
    np.testing.assert_allclose(cl.forward(x, "eval"), cf.forward(x, "eval"), rtol=1e-10,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("parallel", [False, True], ids=["blas", "split"])
def test_cnn_layouts_agree(parallel, rng, monkeypatch):
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0 if parallel else 1 << 62)
    check_models_agree(*model_pair("cnn"), rng)


def test_cnn_default_is_channels_last(rng):
    model = nn.cnn(rng=np.random.default_rng(0), dtype=F64)
    convs = [layer for layer in model.layers if isinstance(layer, nn.Conv1d)]
    assert all(c.channels_last for c in convs)
    assert all(b.axis == -1 for b in model.bn_layers)
    cf = nn.cnn(rng=np.random.default_rng(0), dtype=F64, channels_last=False)
    x = rng.normal(size=(4, 40))
    np.testing.assert_allclose(model.forward(x, "train"), cf.forward(x, "train"), rtol=1e-10,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("parallel", [False, True], ids=["blas", "split"])
@pytest.mark.parametrize("depth", [2, 4])
def test_resnet_layouts_agree(depth, parallel, rng, monkeypatch):
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0 if parallel else 1 << 62)
    check_models_agree(*model_pair("resnet", depth=depth, channels=8), rng)


def test_resnet_default_width_layouts_agree(rng):
    check_models_agree(*model_pair("resnet", depth=4), rng, n=4)
