"""Conv2d and the 4-D Flatten / GlobalAvgPool: against float64 NumPy references written
here, central finite differences and PyTorch (MaxPool2d, AvgPool2d: tests/nn/test_pool.py)."""

import numpy as np
import pytest
from helpers import check_layer

from bnbench import nn
from bnbench.kernels import cpu
from bnbench.nn import conv2d

F64, F32 = np.float64, np.float32
# (kernel_size, stride, padding, (H, W)); the last ones pad more than half a kernel (whole
# column rows outside the image), run a 1x1 kernel (no im2col), or pad an image smaller
# than the kernel
CONVS = [(3, 1, 1, (7, 6)), ((3, 2), (2, 1), (1, 0), (9, 8)), (2, 2, 0, (5, 5)),
         ((1, 3), 1, (0, 2), (3, 4)), (5, 3, 4, (6, 7)), (1, 1, 0, (4, 3)), (4, 1, 3, (2, 2))]  # fmt: skip


def pair(v):
    return (v, v) if isinstance(v, int) else v


def to_cf(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def to_cl(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def patches(xp, i, j, sh, sw, H_out, W_out):
    """The input values tap (i, j) multiplies: ``xp[:, ho * sh + i, wo * sw + j, :]``."""
    return xp[:, i : i + sh * (H_out - 1) + 1 : sh, j : j + sw * (W_out - 1) + 1 : sw]


def reference_conv(x, weight, bias, dy, stride, padding):
    """Float64 channels-last convolution and its gradients as a sum over the kernel taps
    of a zero-padded input: ``(y, dx, dweight, dbias)``."""
    x, weight, dy = (np.asarray(a, F64) for a in (x, weight, dy))
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    N, H, W, _ = x.shape
    kh, kw = weight.shape[2:]
    H_out, W_out = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = np.zeros((N, H_out, W_out, weight.shape[0]))
    dxp, dw = np.zeros_like(xp), np.zeros_like(weight)
    for i in range(kh):
        for j in range(kw):
            tap, xs = weight[:, :, i, j], patches(xp, i, j, sh, sw, H_out, W_out)
            y += np.einsum("nhwc,oc->nhwo", xs, tap)
            patches(dxp, i, j, sh, sw, H_out, W_out)[...] += np.einsum("nhwo,oc->nhwc", dy, tap)
            dw[:, :, i, j] = np.einsum("nhwo,nhwc->oc", dy, xs)
    if bias is not None:
        y += bias
    return y, dxp[:, ph : ph + H, pw : pw + W], dw, dy.sum(axis=(0, 1, 2))


def use(monkeypatch, kernels):
    """Run the parallel kernels whatever the size (``"parallel"``, as conftest does), their
    serial twins (``"serial"``), or either with the columns gathered one sample at a time
    (``"blocks"``, ``"serial-blocks"``: several blocks per chunk, uneven chunks for N = 3)."""
    serial = kernels.startswith("serial")
    monkeypatch.setattr(cpu, "ELEMENTWISE_SERIAL_BELOW", 1 << 62 if serial else 0)
    monkeypatch.setattr(conv2d, "PARALLEL_MACS", 1 << 62 if serial else 0)
    if kernels.endswith("blocks"):
        monkeypatch.setattr(conv2d, "BLOCK_BYTES", 1)


@pytest.fixture(autouse=True)
def serial_twins(monkeypatch):
    """The serial twins unless a test asks for the parallel kernels: float32 runs both,
    float64 (the same code) only the serial ones, because a parallel twin compiles 3-5x
    slower (max pool 2.7 s against 0.8 s, each convolution kernel 6-8 s against 1.5-2 s)
    and this file compiled in 70 s with both twins in both dtypes."""
    use(monkeypatch, "serial")


#: (dtype, kernels) pairs
TWINS = [(F32, "parallel"), (F32, "blocks"), (F32, "serial"), (F64, "serial"),
         (F64, "serial-blocks")]  # fmt: skip


@pytest.mark.parametrize(("dtype", "kernels"), TWINS, ids=str)
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
@pytest.mark.parametrize(("k", "stride", "padding", "size"), CONVS, ids=str)
def test_conv2d_matches_reference(k, stride, padding, size, channels_last, dtype, kernels, rng,
                                  monkeypatch):  # fmt: skip
    use(monkeypatch, kernels)
    bias = size[0] != 2  # one case without bias
    conv = nn.Conv2d(3, 4, k, rng, stride=stride, padding=padding, bias=bias, dtype=dtype,
                     channels_last=channels_last)  # fmt: skip
    assert conv.params["weight"].shape == (4, 3, *pair(k)) and conv.params["weight"].dtype == dtype
    x = rng.normal(size=(3, *size, 3)).astype(dtype)
    y = conv.forward(x if channels_last else to_cf(x), "train")
    assert y.dtype == dtype
    y = y if channels_last else to_cl(y)
    dy = rng.normal(size=y.shape).astype(dtype)
    ref_y, ref_dx, ref_dw, ref_db = reference_conv(x, conv.params["weight"],
                                                   conv.params.get("bias"), dy, stride, padding)  # fmt: skip
    assert y.shape == ref_y.shape
    rtol, atol = (1e-12, 1e-12) if dtype == F64 else (1e-5, 1e-5)
    np.testing.assert_allclose(y, ref_y, rtol=rtol, atol=atol)
    dx = conv.backward(dy if channels_last else to_cf(dy))
    np.testing.assert_allclose(dx if channels_last else to_cl(dx), ref_dx, rtol=rtol, atol=atol)
    np.testing.assert_allclose(conv.grads["weight"], ref_dw, rtol=rtol, atol=atol)
    if bias:
        np.testing.assert_allclose(conv.grads["bias"], ref_db, rtol=rtol, atol=atol)
    # the first layer of a network skips its input gradient, with the same weight gradient
    dw = conv.grads["weight"].copy()
    conv.grads["weight"][...] = 0
    assert conv.backward(dy if channels_last else to_cf(dy), input_grad=False) is None
    np.testing.assert_array_equal(conv.grads["weight"], dw)


@pytest.mark.parametrize(("k", "stride", "padding", "size"), CONVS, ids=str)
def test_conv2d_with_one_input_channel(k, stride, padding, size, rng):
    """One input channel takes im2col's other path (a strided copy per kernel tap)."""
    conv = nn.Conv2d(1, 4, k, rng, stride=stride, padding=padding, dtype=F64,
                     channels_last=True)  # fmt: skip
    x = rng.normal(size=(3, *size, 1))
    y = conv.forward(x, "train")
    dy = rng.normal(size=y.shape)
    ref_y, ref_dx, ref_dw, ref_db = reference_conv(x, conv.params["weight"], conv.params["bias"],
                                                   dy, stride, padding)  # fmt: skip
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.backward(dy), ref_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["weight"], ref_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["bias"], ref_db, rtol=1e-12, atol=1e-12)


def test_conv2d_is_deterministic(rng, monkeypatch):
    use(monkeypatch, "parallel")
    conv = nn.Conv2d(4, 6, 3, rng, padding=1, channels_last=True)
    x = rng.normal(size=(9, 10, 10, 4)).astype(F32)
    dy = rng.normal(size=(9, 10, 10, 6)).astype(F32)
    runs = []
    for _ in range(2):
        y = conv.forward(x, "train")
        runs.append((y, conv.backward(dy), conv.grads["weight"].copy()))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
@pytest.mark.parametrize(("k", "stride", "padding", "size"), CONVS[:5], ids=str)
def test_conv2d_gradients(k, stride, padding, size, channels_last, rng):
    conv = nn.Conv2d(2, 3, k, rng, stride=stride, padding=padding, dtype=F64,
                     channels_last=channels_last)  # fmt: skip
    shape = (2, *size, 2) if channels_last else (2, 2, *size)
    check_layer(conv, rng.normal(size=shape), rng)


def test_conv2d_initialisation_is_pytorchs_uniform(rng):
    conv = nn.Conv2d(4, 6, (3, 2), np.random.default_rng(5))
    bound = 1 / np.sqrt(4 * 3 * 2)
    expected = np.random.default_rng(5).uniform(-bound, bound, (6, 4, 3, 2)).astype(F32)
    np.testing.assert_array_equal(conv.params["weight"], expected)
    assert np.abs(conv.params["bias"]).max() <= bound


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({}, (2, 5, 5), r"x must have shape \(N, H, W, C_in\) with C_in = 3, got \(2, 5, 5\)"),
        ({}, (2, 5, 5, 4), r"with C_in = 3, got \(2, 5, 5, 4\)"),
        ({"channels_last": False}, (2, 5, 5, 3), r"\(N, C_in, H, W\) with C_in = 3"),
        ({}, (2, 2, 5, 3), r"spatial size \(2, 5\) is smaller than kernel_size \(3, 3\) with "
                           r"padding \(0, 0\) \(output size \(0, 3\)\)"),
        ({"padding": (0, 1), "kernel_size": (1, 6)}, (2, 2, 3, 3), r"output size \(2, 0\)"),
    ],
)  # fmt: skip
def test_conv2d_bad_input_is_an_error(kwargs, shape, match):
    kwargs = {"kernel_size": 3, "channels_last": True, **kwargs}
    conv = nn.Conv2d(3, 2, rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=match):
        conv.forward(np.ones(shape, F32), "train")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stride": 0}, r"stride must be positive, got \(0, 0\)"),
        ({"stride": (1, -2)}, r"stride must be positive, got \(1, -2\)"),
        ({"padding": -1}, r"padding must be non-negative, got \(-1, -1\)"),
        ({"kernel_size": 0}, r"kernel_size must be positive"),
        ({"kernel_size": (3, 3, 3)}, r"kernel_size must be an int or a pair of ints"),
        ({"padding": 1.5}, r"padding must be an int or a pair of ints, got 1.5"),
        ({"in_channels": 0}, r"in_channels must be a positive int, got 0"),
    ],
)
def test_conv2d_bad_arguments_are_errors(kwargs, match):
    kwargs = {"in_channels": 2, "out_channels": 3, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(rng=np.random.default_rng(0), **kwargs)


# -- Flatten and GlobalAvgPool on images


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
def test_global_avg_pool_on_images(channels_last, rng):
    x = rng.normal(size=(3, 4, 5, 6))
    y = nn.GlobalAvgPool(channels_last).forward(x, "train")
    np.testing.assert_allclose(y, x.mean(axis=(1, 2) if channels_last else (2, 3)), rtol=1e-14)
    check_layer(nn.GlobalAvgPool(channels_last), x, rng)


# -- PyTorch


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize(("k", "stride", "padding", "size"), CONVS, ids=str)
def test_conv2d_matches_torch(k, stride, padding, size, dtype, rng):
    torch = pytest.importorskip("torch")
    conv = nn.Conv2d(3, 5, k, rng, stride=stride, padding=padding, dtype=dtype)  # channel-first
    x = rng.normal(size=(2, 3, *size)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = (torch.tensor(conv.params[n], requires_grad=True) for n in ("weight", "bias"))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    y = conv.forward(x, "train")
    rtol, atol = (1e-12, 1e-12) if dtype == F64 else (1e-5, 1e-5)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=atol)
    dy = rng.normal(size=y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(conv.backward(dy), xt.grad.numpy(), rtol=rtol, atol=atol)
    for name, t in (("weight", wt), ("bias", bt)):
        np.testing.assert_allclose(conv.grads[name], t.grad.numpy(), rtol=rtol, atol=atol)


def test_flatten_of_images_is_torchs_order(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 3, 4, 5))  # NCHW
    expected = torch.tensor(x).flatten(1).numpy()
    np.testing.assert_array_equal(nn.Flatten(channels_last=True).forward(to_cl(x), "train"),
                                  expected)  # fmt: skip
    np.testing.assert_array_equal(nn.Flatten().forward(x, "train"), expected)
