"""The CUDA backend against the float64 oracle, with host and device arrays."""

import numpy as np
import pytest

import bnbench as bn
from bnbench import config

SHAPES = [(2, 1), (9, 3), (5, 11), (3, 2, 7), (4, 3, 2, 5), (2, 11, 13)]
DTYPES = [np.float32, np.float64]


def inputs(shape, dtype, seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy, rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)


def tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


def test_small_inputs_span_several_blocks_under_the_simulator():
    if not config.CUDA_SIMULATOR:
        pytest.skip("block sizes are patched small only under the simulator")
    from bnbench.kernels import cuda as kc

    assert config.CUDA_THREADS_PER_BLOCK == 8
    blocks, per_block = kc.blocks_per_channel(3 * 7, 2)  # (3, 2, 7): 21 values a channel
    assert blocks > 1 and per_block < 21


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_operation_matches_reference(shape, dtype):
    x, dy, w, b = inputs(shape, dtype)
    ref = bn.batch_norm_train(x, w, b, backend="reference")
    got = bn.batch_norm_train(x, w, b, backend="cuda")
    for name in ("y", "mean", "var", "invstd"):
        g = getattr(got, name)
        assert isinstance(g, np.ndarray) and g.dtype == dtype
        np.testing.assert_allclose(g, getattr(ref, name), **tol(dtype), err_msg=name)
    y = bn.batch_norm_eval(x, w, b, mean=ref.mean, var=ref.var, backend="cuda")
    np.testing.assert_allclose(
        y,
        bn.batch_norm_eval(x, w, b, mean=ref.mean, var=ref.var, backend="reference"),
        **tol(dtype),
    )
    gr = bn.batch_norm_backward(dy, x, w, mean=ref.mean, invstd=ref.invstd, backend="reference")
    gc = bn.batch_norm_backward(dy, x, w, mean=ref.mean, invstd=ref.invstd, backend="cuda")
    for r, g in zip(gr, gc, strict=True):
        np.testing.assert_allclose(g, r, **tol(dtype))


def test_device_arrays_stay_on_the_device():
    from numba import cuda

    x, dy, w, b = inputs((6, 3, 5), np.float32)
    dx, ddy, dw, db = (cuda.to_device(a) for a in (x, dy, w, b))
    res = bn.batch_norm_train(dx, dw, db, backend="cuda")
    host = bn.batch_norm_train(x, w, b, backend="cuda")
    for name in ("y", "mean", "var", "invstd"):
        dev = getattr(res, name)
        assert not isinstance(dev, np.ndarray) and hasattr(dev, "copy_to_host"), name
        np.testing.assert_array_equal(dev.copy_to_host(), getattr(host, name))
    out = cuda.device_array(x.shape, np.float32)
    y = bn.batch_norm_eval(dx, dw, db, mean=res.mean, var=res.var, backend="cuda", out=out)
    assert y is out
    np.testing.assert_allclose(out.copy_to_host(), host.y, rtol=1e-5, atol=1e-5)
    g = bn.batch_norm_backward(ddy, dx, dw, mean=res.mean, invstd=res.invstd, backend="cuda")
    gh = bn.batch_norm_backward(dy, x, w, mean=host.mean, invstd=host.invstd, backend="cuda")
    np.testing.assert_array_equal(g.dx.copy_to_host(), gh.dx)
    np.testing.assert_array_equal(g.dweight.copy_to_host(), gh.dweight)


@pytest.mark.parametrize("device", [False, True], ids=["host", "device"])
def test_out_is_written_and_returned(device):
    """Every operation with ``out=`` (host arrays, or device arrays throughout): the array
    is returned, filled with what the call without ``out=`` gives."""
    from numba import cuda

    x, dy, w, b = inputs((5, 3, 7), np.float32)
    ref = bn.batch_norm_train(x, w, b, backend="reference")
    args = [x, dy, w, b, ref.mean, ref.var, ref.invstd]
    if device:
        args = [cuda.to_device(a) for a in args]
    x, dy, w, b, mean, var, invstd = args

    def new_out():
        nan = np.full(x.shape, np.nan, np.float32)
        return cuda.to_device(nan) if device else nan

    def host(a):
        return a.copy_to_host() if device else a

    out = new_out()
    assert bn.batch_norm_train(x, w, b, backend="cuda", out=out).y is out
    np.testing.assert_array_equal(host(out), host(bn.batch_norm_train(x, w, b, backend="cuda").y))
    out = new_out()
    stats = {"mean": mean, "var": var, "backend": "cuda"}
    assert bn.batch_norm_eval(x, w, b, **stats, out=out) is out
    np.testing.assert_array_equal(host(out), host(bn.batch_norm_eval(x, w, b, **stats)))
    out = new_out()
    stats = {"mean": mean, "invstd": invstd, "backend": "cuda"}
    got = bn.batch_norm_backward(dy, x, w, **stats, out=out)
    assert got.dx is out
    for g, e in zip(got, bn.batch_norm_backward(dy, x, w, **stats), strict=True):
        np.testing.assert_array_equal(host(g), host(e))


def test_mixing_host_out_with_device_input_is_an_error():
    from numba import cuda

    x, _, _, _ = inputs((4, 3), np.float32)
    with pytest.raises(TypeError, match="out must live where x lives"):
        bn.batch_norm_train(cuda.to_device(x), backend="cuda", out=np.empty_like(x))


@pytest.mark.parametrize("device", [False, True])
def test_running_update_matches_reference(device):
    from numba import cuda

    momenta = np.array([0.01, 0.1, 1.0])
    rm, rv = np.zeros((3, 5)), np.ones((3, 5))
    ref_m, ref_v = rm.copy(), rv.copy()
    mean, var = np.arange(5.0), np.linspace(1, 2, 5)
    stats = {"mean": mean, "var": var, "count": 10, "momenta": momenta}
    bn.update_running_stats(ref_m, ref_v, **stats, backend="reference")
    if device:
        dm, dv = cuda.to_device(rm), cuda.to_device(rv)
        bn.update_running_stats(dm, dv, **stats, backend="cuda")
        rm, rv = dm.copy_to_host(), dv.copy_to_host()
    else:
        bn.update_running_stats(rm, rv, **stats, backend="cuda")
    np.testing.assert_allclose(rm, ref_m, rtol=1e-14)
    np.testing.assert_allclose(rv, ref_v, rtol=1e-14)


def test_float32_stable_with_mean_1e4_std():
    x = (np.random.default_rng(1).standard_normal((64, 2, 32)) + 1e4).astype(np.float32)
    got = bn.batch_norm_train(x, backend="cuda")
    x64 = x.astype(np.float64).transpose(1, 0, 2).reshape(2, -1)
    np.testing.assert_allclose(got.var, x64.var(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got.mean, x64.mean(axis=1), rtol=1e-7)


def test_constant_channel_and_nan_propagation():
    x, _, w, b = inputs((6, 3, 4), np.float32)
    x[:, 1] = 2.5
    x[0, 2, 0] = np.nan
    res = bn.batch_norm_train(x, w, b, backend="cuda")
    assert res.var[1] == 0 and np.allclose(res.y[:, 1], b[1])
    assert np.isnan(res.mean[2]) and np.all(np.isnan(res.y[:, 2]))
    assert np.all(np.isfinite(res.y[:, :2]))


def test_deterministic():
    x, dy, w, b = inputs((7, 3, 9), np.float32)
    a, c = (
        bn.batch_norm_train(x, w, b, backend="cuda"),
        bn.batch_norm_train(x, w, b, backend="cuda"),
    )
    for u, v in zip(a, c, strict=True):
        np.testing.assert_array_equal(u, v)


def test_throughput_study_times_cuda_on_device_and_host_arrays(monkeypatch):
    from bnbench_studies import kernel_throughput

    from bnbench.perf import kernels

    # one timed repeat per contender: the simulator runs each launch's threads in Python
    monkeypatch.setattr(kernels, "repeats_within", lambda budget_s, contenders: 1)
    df = kernels.measure([(16, 4)], budget_s=0.001)
    cuda_rows = df[df.backend.str.startswith("cuda")]
    assert set(cuda_rows.backend) == {"cuda", "cuda (host arrays)"}
    assert (cuda_rows.device_copy_gbps > 0).all() and cuda_rows.pct_of_device_copy.notna().all()
    assert df[~df.backend.str.startswith("cuda")].device_copy_gbps.isna().all()
    assert "## CUDA" in kernel_throughput.report_body(df)


def test_device_array_given_to_a_host_backend_is_an_error():
    from numba import cuda

    x, _, _, _ = inputs((4, 3), np.float32)
    with pytest.raises(TypeError, match="x is a CUDA device array: this backend runs on the host"):
        bn.batch_norm_train(cuda.to_device(x), backend="cpu")
