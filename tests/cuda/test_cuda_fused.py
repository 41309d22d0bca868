"""Batch norm followed by a ReLU, fused, on the CUDA backend: against the float64 oracle,
bit for bit against the CUDA backend's own batch norm then a ReLU (the same operations
and reduction trees; exact in the simulator), host and device arrays, hard inputs."""

import numpy as np
import pytest

import bnbench.functional as F
from bnbench import config

SHAPES = [(2, 1), (9, 3), (3, 2, 7), (4, 3, 2, 5)]
DTYPES = [np.float32, np.float64]


def relu(a):
    return np.where(a > 0, a, a * 0)


def same_bits(a, b):
    kind = np.uint32 if a.dtype == np.float32 else np.uint64
    return a.dtype == b.dtype and np.array_equal(a.view(kind), b.view(kind))


def inputs(shape, dtype, seed=0, loc=0.3, scale=2.0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy, rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)


def fused(x, dy, w, b, backend="cuda", axis=1):
    kw = {"backend": backend, "axis": axis}
    tr = F.batch_norm_relu_train(x, w, b, **kw)
    ev = F.batch_norm_relu_eval(x, w, b, mean=tr.mean, var=tr.var, **kw)
    bw = F.batch_norm_relu_backward(dy, x, w, y=tr.y, mean=tr.mean, invstd=tr.invstd, **kw)
    return [*tr, ev, *bw]


def test_blocks_are_small_under_the_simulator():
    if not config.CUDA_SIMULATOR:
        pytest.skip("block sizes are patched small only under the simulator")
    assert config.CUDA_THREADS_PER_BLOCK == 8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_and_the_unfused_pair(shape, dtype):
    x, dy, w, b = inputs(shape, dtype)
    got, ref = fused(x, dy, w, b), fused(x, dy, w, b, backend="reference")
    rtol, atol = (2e-5, 2e-5) if dtype == np.float32 else (1e-10, 1e-10)
    scale = max(1.0, float(np.abs(ref[-2]).max()), float(np.abs(ref[-1]).max()))
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert isinstance(g, np.ndarray) and g.dtype == dtype
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale, err_msg=str(i))
    tr = F.batch_norm_train(x, w, b, backend="cuda")
    ev = F.batch_norm_eval(x, w, b, mean=tr.mean, var=tr.var, backend="cuda")
    bw = F.batch_norm_backward(np.where(tr.y > 0, dy, dy * 0), x, w, mean=tr.mean,
                               invstd=tr.invstd, backend="cuda")  # fmt: skip
    expected = [relu(tr.y), *tr[1:], relu(ev), *bw]
    ulp = np.finfo(dtype).eps
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if config.CUDA_SIMULATOR:  # the same operations in Python: exact
            assert same_bits(g, e), i
        else:  # compiled: within one rounding (the module docstring's bound)
            assert np.abs(g - e).max() <= ulp * max(np.abs(e).max(), 1e-30), i


def test_channels_last():
    x, dy, w, b = inputs((4, 5, 5), np.float32)  # (N, L, C), C = 5
    got = fused(x, dy, w, b, axis=-1)
    ref = fused(x, dy, w, b, backend="reference", axis=-1)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-4)


def test_device_arrays_stay_on_the_device():
    from numba import cuda

    x, dy, w, b = inputs((6, 3, 5), np.float32)
    host = fused(x, dy, w, b)
    dev = fused(*(cuda.to_device(a) for a in (x, dy, w, b)))
    for h, d in zip(host, dev, strict=True):
        assert not isinstance(d, np.ndarray) and hasattr(d, "copy_to_host")
        np.testing.assert_array_equal(d.copy_to_host(), h)
    out = cuda.device_array(x.shape, np.float32)
    y = F.batch_norm_relu_train(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b),
                                backend="cuda", out=out).y  # fmt: skip
    assert y is out


def test_hard_inputs():
    """Mean 10^4 standard deviations; an all-negative and an all-positive channel; NaN
    confined to its channel."""
    x = (np.random.default_rng(1).standard_normal((64, 2, 32)) + 1e4).astype(np.float32)
    got = F.batch_norm_relu_train(x, backend="cuda")
    x64 = x.astype(np.float64).transpose(1, 0, 2).reshape(2, -1)
    np.testing.assert_allclose(got.var, x64.var(axis=1), rtol=1e-5)
    assert np.all(got.y >= 0)
    x, dy, w, b = inputs((6, 4, 3), np.float32)
    b[0], b[1] = -100, 100
    x[0, 3, 0] = np.nan
    tr = F.batch_norm_relu_train(x, w, b, backend="cuda")
    bw = F.batch_norm_relu_backward(dy, x, w, y=tr.y, mean=tr.mean, invstd=tr.invstd,
                                    backend="cuda")  # fmt: skip
    assert np.all(tr.y[:, 0] == 0) and np.all(bw.dx[:, 0] == 0) and bw.dbias[0] == 0
    plain = F.batch_norm_train(x, w, b, backend="cuda")
    np.testing.assert_array_equal(tr.y[:, 1], plain.y[:, 1])
    assert np.all(np.isnan(tr.y[:, 3])) and np.all(np.isnan(bw.dx[:, 3]))
    assert np.all(np.isfinite(tr.y[:, :3])) and np.all(np.isfinite(bw.dx[:, :3]))
