"""Channels-last input (``axis=-1``) on the CUDA backend against the float64 oracle on
the channel-first transpose, with host and device arrays (under the simulator: tiny
blocks; the CUDA kernels get the ``(N * prod(spatial), C, 1)`` view)."""

import numpy as np
import pytest

import bnbench as bn

# channels-last shapes (N, *spatial, C)
SHAPES = [(6, 3), (4, 5, 3), (2, 3, 2, 4), (3, 1, 2)]
GHOST = [((6, 3), 2), ((4, 5, 3), 2), ((6, 2, 2, 3), 3)]
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


def inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2.0 + 3.0).astype(dtype)
    x += np.arange(shape[0]).reshape(-1, *([1] * (x.ndim - 1))).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy, rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)


def to_cf(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def to_cl(a):
    return np.moveaxis(a, 1, -1)


def close(got, ref, dtype, name):
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == ref.shape, name
    np.testing.assert_allclose(got, ref, **tol(dtype), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_train_eval_backward_match_channel_first(shape, dtype):
    x, dy, w, b = inputs(shape, dtype)
    ref = bn.batch_norm_train(to_cf(x), w, b, backend="reference")
    got = bn.batch_norm_train(x, w, b, axis=-1, backend="cuda")
    close(got.y, to_cl(ref.y), dtype, "y")
    for name in ("mean", "var", "invstd"):
        close(getattr(got, name), getattr(ref, name), dtype, name)
    y = bn.batch_norm_eval(x, w, b, mean=ref.mean, var=ref.var, axis=-1, backend="cuda")
    y_ref = bn.batch_norm_eval(to_cf(x), w, b, mean=ref.mean, var=ref.var, backend="reference")
    close(y, to_cl(y_ref), dtype, "eval")
    stats = {"mean": ref.mean, "invstd": ref.invstd}
    gr = bn.batch_norm_backward(to_cf(dy), to_cf(x), w, **stats, backend="reference")
    gc = bn.batch_norm_backward(dy, x, w, **stats, axis=-1, backend="cuda")
    close(gc.dx, to_cl(gr.dx), dtype, "dx")
    close(gc.dweight, gr.dweight, dtype, "dweight")
    close(gc.dbias, gr.dbias, dtype, "dbias")
    same = bn.batch_norm_train(x, w, b, axis=x.ndim - 1, backend="cuda")
    for name in got._fields:
        np.testing.assert_array_equal(getattr(same, name), getattr(got, name), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "G"), GHOST, ids=str)
def test_ghost_matches_channel_first_ghost(shape, G, dtype):
    x, dy, w, b = inputs(shape, dtype)
    ref = bn.batch_norm_train(to_cf(x), w, b, ghost_batch_size=G, backend="reference")
    got = bn.batch_norm_train(x, w, b, ghost_batch_size=G, axis=-1, backend="cuda")
    assert got.mean.shape == (shape[0] // G, shape[-1])
    close(got.y, to_cl(ref.y), dtype, "y")
    for name in ("mean", "var", "invstd"):
        close(getattr(got, name), getattr(ref, name), dtype, name)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "ghost_batch_size": G}
    gr = bn.batch_norm_backward(to_cf(dy), to_cf(x), w, **stats, backend="reference")
    gc = bn.batch_norm_backward(dy, x, w, **stats, axis=-1, backend="cuda")
    close(gc.dx, to_cl(gr.dx), dtype, "dx")
    close(gc.dweight, gr.dweight, dtype, "dweight")
    close(gc.dbias, gr.dbias, dtype, "dbias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_renorm_matches_channel_first(dtype):
    x, dy, w, b = inputs((4, 5, 3), dtype)
    rm = np.array([4.0, 3.0, 6.0], dtype)
    rv = np.array([0.5, 9.0, 4.0], dtype)
    clip = {"running_mean": rm, "running_var": rv, "rmax": 1.5, "dmax": 0.3}
    ref = bn.batch_renorm_train(to_cf(x), w, b, **clip, backend="reference")
    got = bn.batch_renorm_train(x, w, b, **clip, axis=-1, backend="cuda")
    close(got.y, to_cl(ref.y), dtype, "y")
    for name in ("mean", "var", "invstd", "r", "d"):
        close(getattr(got, name), getattr(ref, name), dtype, name)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "r": ref.r, "d": ref.d}
    gr = bn.batch_renorm_backward(to_cf(dy), to_cf(x), w, **stats, backend="reference")
    gc = bn.batch_renorm_backward(dy, x, w, **stats, axis=-1, backend="cuda")
    close(gc.dx, to_cl(gr.dx), dtype, "dx")
    close(gc.dweight, gr.dweight, dtype, "dweight")
    close(gc.dbias, gr.dbias, dtype, "dbias")


def test_device_arrays_channels_last():
    """Channels-last device arrays: results stay on the device and equal the host run."""
    from numba import cuda

    x, dy, w, b = inputs((4, 5, 3), np.float32)
    dx, ddy, dw, db = (cuda.to_device(a) for a in (x, dy, w, b))
    res = bn.batch_norm_train(dx, dw, db, axis=-1, backend="cuda")
    host = bn.batch_norm_train(x, w, b, axis=-1, backend="cuda")
    for name in host._fields:
        dev = getattr(res, name)
        assert hasattr(dev, "copy_to_host"), name
        np.testing.assert_array_equal(dev.copy_to_host(), getattr(host, name), err_msg=name)
    assert res.y.shape == x.shape
    y = bn.batch_norm_eval(dx, dw, db, mean=res.mean, var=res.var, axis=-1, backend="cuda")
    np.testing.assert_allclose(
        y.copy_to_host(),
        bn.batch_norm_eval(x, w, b, mean=host.mean, var=host.var, axis=-1, backend="cuda"),
        rtol=1e-6,
        atol=1e-6,
    )
    g = bn.batch_norm_backward(ddy, dx, dw, mean=res.mean, invstd=res.invstd, axis=-1,
                               backend="cuda")  # fmt: skip
    gh = bn.batch_norm_backward(dy, x, w, mean=host.mean, invstd=host.invstd, axis=-1,
                                backend="cuda")  # fmt: skip
    for name, a, e in zip(gh._fields, g, gh, strict=True):
        np.testing.assert_array_equal(a.copy_to_host(), e, err_msg=name)
    gg = bn.batch_norm_train(dx, dw, db, ghost_batch_size=2, axis=-1, backend="cuda")
    gh = bn.batch_norm_train(x, w, b, ghost_batch_size=2, axis=-1, backend="cuda")
    for name in gh._fields:
        np.testing.assert_array_equal(getattr(gg, name).copy_to_host(), getattr(gh, name))


def test_bad_axis_and_weight_on_cuda():
    x, _, w, _ = inputs((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match="axis"):
        bn.batch_norm_train(x[..., None], axis=2, backend="cuda")
    with pytest.raises(TypeError, match="axis"):
        bn.batch_norm_train(x, axis=1.5, backend="cuda")
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        bn.batch_norm_train(x, np.ones(5, np.float32), axis=-1, backend="cuda")
