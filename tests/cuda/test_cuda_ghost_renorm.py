"""Ghost batch norm and Batch Renorm on the CUDA backend against the float64 oracle,
with host and device arrays (under the simulator: tiny blocks, several per group)."""

import numpy as np
import pytest

import bnbench as bn
from bnbench import config

GHOST = [((4, 3), 2), ((12, 5), 3), ((12, 5), 12), ((8, 3, 5), 2), ((9, 2, 7), 3),
         ((8, 3, 2, 3), 4), ((40, 3), 8)]  # fmt: skip
RENORM = [(2, 1), (9, 3), (3, 2, 7), (4, 3, 2, 5)]
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


def inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + 3.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm = x.mean(axis=tuple(i for i in range(x.ndim) if i != 1)) + rng.uniform(-2, 2, C)
    rv = rng.uniform(0.5, 12.0, C)
    return x, dy, w, b, rm.astype(dtype), rv.astype(dtype)


def close(got, ref, dtype, name):
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == ref.shape, name
    np.testing.assert_allclose(got, ref, **tol(dtype), err_msg=name)


def test_ghost_groups_span_several_blocks_under_the_simulator():
    if not config.CUDA_SIMULATOR:
        pytest.skip("block sizes are patched small only under the simulator")
    from bnbench.kernels import cuda as kc

    # (9, 2, 7) in groups of 3: 21 values per (group, channel), 3 * 2 (group, channel)s
    blocks, per_block = kc.blocks_per_channel(3 * 7, 2 * 3)
    assert blocks > 1 and per_block < 21


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "G"), GHOST, ids=str)
def test_ghost_matches_reference(shape, G, dtype):
    x, dy, w, b, _, _ = inputs(shape, dtype)
    ref = bn.batch_norm_train(x, w, b, ghost_batch_size=G, backend="reference")
    got = bn.batch_norm_train(x, w, b, ghost_batch_size=G, backend="cuda")
    for name in ref._fields:
        close(getattr(got, name), getattr(ref, name), dtype, name)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "ghost_batch_size": G}
    gr = bn.batch_norm_backward(dy, x, w, **stats, backend="reference")
    gc = bn.batch_norm_backward(dy, x, w, **stats, backend="cuda")
    for name in gr._fields:
        close(getattr(gc, name), getattr(gr, name), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rmax,dmax", [(1.5, 0.3), (100.0, 100.0)], ids=str)
@pytest.mark.parametrize("shape", RENORM, ids=str)
def test_renorm_matches_reference(shape, rmax, dmax, dtype):
    x, dy, w, b, rm, rv = inputs(shape, dtype)
    clip = {"running_mean": rm, "running_var": rv, "rmax": rmax, "dmax": dmax}
    ref = bn.batch_renorm_train(x, w, b, **clip, backend="reference")
    got = bn.batch_renorm_train(x, w, b, **clip, backend="cuda")
    for name in ref._fields:
        close(getattr(got, name), getattr(ref, name), dtype, name)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "r": ref.r, "d": ref.d}
    gr = bn.batch_renorm_backward(dy, x, w, **stats, backend="reference")
    gc = bn.batch_renorm_backward(dy, x, w, **stats, backend="cuda")
    for name in gr._fields:
        close(getattr(gc, name), getattr(gr, name), dtype, name)


def test_whole_batch_ghost_and_uncorrected_renorm_are_plain_batch_norm():
    x, dy, w, b, rm, rv = inputs((6, 3, 5), np.float64)
    plain = bn.batch_norm_train(x, w, b, backend="cuda")
    ghost = bn.batch_norm_train(x, w, b, ghost_batch_size=6, backend="cuda")
    renorm = bn.batch_renorm_train(x, w, b, running_mean=rm, running_var=rv, rmax=1.0,
                                   dmax=0.0, backend="cuda")  # fmt: skip
    np.testing.assert_array_equal(ghost.y, plain.y)
    np.testing.assert_array_equal(renorm.y, plain.y)
    for name in plain._fields[1:]:
        np.testing.assert_array_equal(getattr(ghost, name)[0], getattr(plain, name))
        np.testing.assert_array_equal(getattr(renorm, name), getattr(plain, name))
    gp = bn.batch_norm_backward(dy, x, w, mean=plain.mean, invstd=plain.invstd, backend="cuda")
    gg = bn.batch_norm_backward(dy, x, w, mean=ghost.mean, invstd=ghost.invstd,
                                ghost_batch_size=6, backend="cuda")  # fmt: skip
    gr = bn.batch_renorm_backward(dy, x, w, mean=renorm.mean, invstd=renorm.invstd,
                                  r=renorm.r, d=renorm.d, backend="cuda")  # fmt: skip
    for a, b_, c in zip(gp, gg, gr, strict=True):
        np.testing.assert_array_equal(b_, a)
        np.testing.assert_array_equal(c, a)


def test_device_arrays_stay_on_the_device():
    from numba import cuda

    x, dy, w, b, rm, rv = inputs((8, 3, 5), np.float32)
    dev = [cuda.to_device(a) for a in (x, dy, w, b, rm, rv)]
    dx, ddy, dw, db, drm, drv = dev
    res = bn.batch_norm_train(dx, dw, db, ghost_batch_size=4, backend="cuda")
    host = bn.batch_norm_train(x, w, b, ghost_batch_size=4, backend="cuda")
    for name in host._fields:
        got = getattr(res, name)
        assert hasattr(got, "copy_to_host"), name
        np.testing.assert_array_equal(got.copy_to_host(), getattr(host, name))
    g = bn.batch_norm_backward(ddy, dx, dw, mean=res.mean, invstd=res.invstd,
                               ghost_batch_size=4, backend="cuda")  # fmt: skip
    gh = bn.batch_norm_backward(dy, x, w, mean=host.mean, invstd=host.invstd,
                                ghost_batch_size=4, backend="cuda")  # fmt: skip
    for a, e in zip(g, gh, strict=True):
        np.testing.assert_array_equal(a.copy_to_host(), e)
    clip = {"rmax": 2.0, "dmax": 1.0}
    rd = bn.batch_renorm_train(dx, dw, db, running_mean=drm, running_var=drv, **clip,
                               backend="cuda")  # fmt: skip
    rh = bn.batch_renorm_train(x, w, b, running_mean=rm, running_var=rv, **clip, backend="cuda")
    for name in rh._fields:
        np.testing.assert_array_equal(getattr(rd, name).copy_to_host(), getattr(rh, name))
    out = cuda.device_array(x.shape, np.float32)
    gd = bn.batch_renorm_backward(ddy, dx, dw, mean=rd.mean, invstd=rd.invstd, r=rd.r,
                                  d=rd.d, backend="cuda", out=out)  # fmt: skip
    assert gd.dx is out
    gh = bn.batch_renorm_backward(dy, x, w, mean=rh.mean, invstd=rh.invstd, r=rh.r, d=rh.d,
                                  backend="cuda")  # fmt: skip
    for a, e in zip(gd, gh, strict=True):
        np.testing.assert_array_equal(a.copy_to_host(), e)


def test_deterministic():
    x, dy, w, b, rm, rv = inputs((12, 3, 9), np.float32)
    a, c = (bn.batch_norm_train(x, w, b, ghost_batch_size=3, backend="cuda") for _ in range(2))
    for u, v in zip(a, c, strict=True):
        np.testing.assert_array_equal(u, v)
