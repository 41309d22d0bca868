"""The PyTorch peer (:mod:`bnbench.kernels.torch_peer`) called as the contract's functions
directly, on NumPy arrays: against the float64 oracle (:mod:`bnbench.kernels.reference`),
the ``*_fresh`` backwards equal to the contract's ``out=`` ones, and results in ``x``'s
dtype on the host. Through the public API, peer-parametrized: tests/test_functional.py."""

import numpy as np
import pytest

pytest.importorskip("torch")

from bnbench.kernels import reference  # noqa: E402
from bnbench.kernels import torch_peer as peer  # noqa: E402

SHAPES = [(16, 4, 1), (8, 3, 5)]  # the contract's (N, C, L): dense and spatial
EPS = 1e-5


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


def tolerance(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


def inputs(rng, shape, dtype):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype), dy


def run(module, name, *args, like):
    out = np.full(like.shape, np.nan, like.dtype)
    return out, getattr(module, name)(*args, out)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_train_and_eval_match_the_oracle(shape, dtype, rng):
    x, w, b, _ = inputs(rng, shape, dtype)
    y, stats = run(peer, "forward_train", x, w, b, EPS, like=x)
    ry, rstats = run(reference, "forward_train", x, w, b, EPS, like=x)
    for got, want in [(y, ry), *zip(stats, rstats, strict=True)]:
        assert isinstance(got, np.ndarray) and got.dtype == dtype
        np.testing.assert_allclose(got, want, **tolerance(dtype))
    mean, var, _ = stats
    ev, none = run(peer, "forward_eval", x, w, b, mean, var, EPS, like=x)
    rev, _ = run(reference, "forward_eval", x, w, b, mean, var, EPS, like=x)
    assert none is None
    np.testing.assert_allclose(ev, rev, **tolerance(dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_the_oracle_and_its_fresh_form(shape, dtype, rng):
    x, w, b, dy = inputs(rng, shape, dtype)
    _, (mean, _, invstd) = run(peer, "forward_train", x, w, b, EPS, like=x)
    dx, (dw, db) = run(peer, "backward", dy, x, w, mean, invstd, like=x)
    rdx, (rdw, rdb) = run(reference, "backward", dy, x, w, mean, invstd, like=x)
    for got, want in [(dx, rdx), (dw, rdw), (db, rdb)]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tolerance(dtype))
    for got, want in zip(peer.backward_fresh(dy, x, w, mean, invstd), (dx, dw, db), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_relu_compositions_match_the_oracle(shape, dtype, rng):
    x, w, b, dy = inputs(rng, shape, dtype)
    y, stats = run(peer, "forward_train_relu", x, w, b, EPS, like=x)
    ry, _ = run(reference, "forward_train_relu", x, w, b, EPS, like=x)
    assert np.all(y >= 0) and 0 < np.mean(y > 0) < 1  # the mask matters
    np.testing.assert_allclose(y, ry, **tolerance(dtype))
    mean, var, invstd = stats
    ev, _ = run(peer, "forward_eval_relu", x, w, b, mean, var, EPS, like=x)
    rev, _ = run(reference, "forward_eval_relu", x, w, b, mean, var, EPS, like=x)
    np.testing.assert_allclose(ev, rev, **tolerance(dtype))
    dx, (dw, db) = run(peer, "backward_relu", dy, y, x, w, mean, invstd, like=x)
    rdx, (rdw, rdb) = run(reference, "backward_relu", dy, y, x, w, mean, invstd, like=x)
    for got, want in [(dx, rdx), (dw, rdw), (db, rdb)]:
        np.testing.assert_allclose(got, want, **tolerance(dtype))
    fresh = peer.backward_relu_fresh(dy, y, x, w, mean, invstd)
    for got, want in zip(fresh, (dx, dw, db), strict=True):
        np.testing.assert_array_equal(got, want)


def test_update_running_matches_the_oracle(dtype, rng):
    K, C = 3, 4
    rm, rv = rng.standard_normal((K, C)).astype(dtype), rng.uniform(0.5, 2, (K, C)).astype(dtype)
    mean, var = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    momenta = [0.1, 0.5, 1.0]
    prm, prv, rrm, rrv = rm.copy(), rv.copy(), rm.astype(np.float64), rv.astype(np.float64)
    peer.update_running(prm, prv, mean, var, momenta)
    reference.update_running(rrm, rrv, mean.astype(np.float64), var.astype(np.float64), momenta)
    np.testing.assert_allclose(prm, rrm, **tolerance(dtype))
    np.testing.assert_allclose(prv, rrv, **tolerance(dtype))
    np.testing.assert_array_equal(prm[2], mean)  # momentum 1: the batch statistics


def test_host_arrays_are_not_device_arrays(rng):
    x = rng.standard_normal((4, 3, 1)).astype(np.float32)
    assert not peer.is_device(x)
