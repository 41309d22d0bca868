"""bnbench.nn.pool: MaxPool2d and AvgPool2d against float64 NumPy references written here
(ties to the first maximum, as PyTorch), central finite differences, NaN propagation and
bad input; both layouts, the parallel kernels and their serial twins."""

import numpy as np
import pytest
from helpers import check_layer
from test_conv2d import TWINS, pair, serial_twins, to_cf, to_cl, use  # noqa: F401

from bnbench import nn

F64, F32 = np.float64, np.float32


def reference_pool(x, k, stride, kind):
    """Float64 channels-last pooling by loops over windows; for max the flat window index
    of the first maximum (``np.argmax``: row-major order, as PyTorch)."""
    (kh, kw), (sh, sw) = pair(k), pair(stride)
    N, H, W, C = x.shape
    H_out, W_out = (H - kh) // sh + 1, (W - kw) // sw + 1
    y, arg = np.zeros((N, H_out, W_out, C)), np.zeros((N, H_out, W_out, C), int)
    for ho in range(H_out):
        for wo in range(W_out):
            win = x[:, ho * sh : ho * sh + kh, wo * sw : wo * sw + kw].reshape(N, -1, C)
            y[:, ho, wo] = win.max(axis=1) if kind == "max" else win.mean(axis=1)
            a = win.argmax(axis=1)
            arg[:, ho, wo] = (ho * sh + a // kw) * W + wo * sw + a % kw
    return y, arg


def reference_pool_backward(dy, x_shape, k, stride, kind, arg):
    (kh, kw), (sh, sw) = pair(k), pair(stride)
    N, H, W, C = x_shape
    dx = np.zeros(x_shape)
    for n, ho, wo, c in np.ndindex(dy.shape):
        if kind == "max":
            dx[n, arg[n, ho, wo, c] // W, arg[n, ho, wo, c] % W, c] += dy[n, ho, wo, c]
        else:
            window = (n, slice(ho * sh, ho * sh + kh), slice(wo * sw, wo * sw + kw), c)
            dx[window] += dy[n, ho, wo, c] / (kh * kw)
    return dx


POOLS = [(2, None, (6, 7)), (3, 2, (7, 7)), ((2, 3), (1, 2), (5, 8)), (3, 1, (3, 4)),
         (1, None, (2, 3))]  # fmt: skip
LAYERS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


@pytest.mark.parametrize(("dtype", "kernels"), [t for t in TWINS if "blocks" not in t[1]], ids=str)
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("k", "stride", "size"), POOLS, ids=str)
def test_pooling_matches_reference(k, stride, size, kind, channels_last, dtype, kernels, rng,
                                   monkeypatch):  # fmt: skip
    use(monkeypatch, kernels)
    # few distinct values: many ties, which go to the first maximum of the window
    x = rng.integers(0, 4, size=(3, *size, 5)).astype(dtype)
    layer = LAYERS[kind](k, stride, channels_last=channels_last)
    y = layer.forward(x if channels_last else to_cf(x), "train")
    y = y if channels_last else to_cl(y)
    ref_y, arg = reference_pool(x.astype(F64), k, stride or k, kind)
    rtol = 1e-15 if dtype == F64 else 1e-6
    np.testing.assert_allclose(y, ref_y, rtol=rtol)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx = layer.backward(dy if channels_last else to_cf(dy))
    ref_dx = reference_pool_backward(dy, x.shape, k, stride or k, kind, arg)
    np.testing.assert_allclose(dx if channels_last else to_cl(dx), ref_dx, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
def test_pooling_gradients(kind, channels_last, rng):
    x = rng.normal(size=(2, 5, 6, 3) if channels_last else (2, 3, 5, 6))
    check_layer(LAYERS[kind]((2, 3), (2, 1), channels_last=channels_last), x, rng)


def test_max_pool_propagates_nan():
    x = np.zeros((1, 2, 2, 2), F32)
    x[0, 1, 0, 0] = np.nan
    x[0, 1, 1, 1] = 1.0
    y = nn.MaxPool2d(2, channels_last=True).forward(x, "train")
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 1.0


def test_pooling_bad_input_is_an_error():
    with pytest.raises(ValueError, match=r"x must have shape \(N, H, W, C\), got \(2, 4, 4\)"):
        nn.MaxPool2d(2, channels_last=True).forward(np.ones((2, 4, 4), F32), "train")
    with pytest.raises(ValueError, match=r"spatial size \(1, 4\) is smaller than kernel_size"):
        nn.AvgPool2d(2, channels_last=True).forward(np.ones((2, 1, 4, 3), F32), "train")
    with pytest.raises(ValueError, match=r"stride must be positive"):
        nn.MaxPool2d(2, stride=0)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("k", "stride", "size"), POOLS, ids=str)
def test_pooling_matches_torch(k, stride, size, kind, rng):
    torch = pytest.importorskip("torch")
    fn = {"max": torch.nn.functional.max_pool2d, "avg": torch.nn.functional.avg_pool2d}[kind]
    x = rng.integers(0, 4, size=(2, 3, *size)).astype(F32)  # ties
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt, k, stride)
    layer = LAYERS[kind](k, stride)  # channel-first by default, as Conv2d
    np.testing.assert_array_equal(layer.forward(x, "train"), yt.detach().numpy())
    dy = rng.normal(size=yt.shape).astype(F32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-6, atol=1e-7)
