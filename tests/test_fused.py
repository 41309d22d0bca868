"""Batch norm followed by a ReLU, fused (``bnbench.functional.batch_norm_relu_*``): every
backend against the float64 oracle and within one rounding of the unfused pair, hard
inputs, the backward by finite differences, and the argument checks. The CPU backend's
fused kernels bit for bit against its unfused pair (parallel kernels and serial twins):
tests/kernels/test_cpu_fused.py; the CUDA backend's: tests/cuda/test_cuda_fused.py."""

import numpy as np
import pytest
from helpers import OWN, backends_for, numeric_grad, tol

import bnbench as bn
import bnbench.functional as F

DTYPES = [np.float32, np.float64]
# (shape, axis): dense, spatial, a spatial axis of size 1, ragged sizes, channels-last
CASES = [((5, 3), 1), ((256, 100), 1), ((1000, 7), 1), ((3, 4, 1), 1), ((7, 5, 13), 1),
         ((16, 8, 33), 1), ((4, 3, 5, 6), 1), ((2, 2, 3, 4, 5), 1), ((6, 7, 3), -1),
         ((3, 5, 4, 6), -1), ((9, 13, 1), -1)]  # fmt: skip
RELU_BACKENDS = ["reference", *backends_for("relu")]


def relu(a):
    """:class:`bnbench.nn.ReLU`'s arithmetic: ``a if a > 0 else a * 0``."""
    return np.where(a > 0, a, a * 0)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    kind = np.uint32 if a.dtype == np.float32 else np.uint64
    return np.array_equal(a.view(kind), b.view(kind))


def inputs(rng, shape, axis, dtype, loc=0.3, scale=2.0):
    C = shape[axis]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    weight = rng.uniform(0.5, 2.0, C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)  # about half the outputs masked
    return x, weight, bias, rng.standard_normal(shape).astype(dtype)


def fused(backend, x, w, b, dy, axis):
    """Every fused operation: ``(train, eval, backward)`` results."""
    kw = {"axis": axis, "backend": backend}
    tr = F.batch_norm_relu_train(x, w, b, **kw)
    ev = F.batch_norm_relu_eval(x, w, b, mean=tr.mean, var=tr.var, **kw)
    bw = F.batch_norm_relu_backward(dy, x, w, y=tr.y, mean=tr.mean, invstd=tr.invstd, **kw)
    return tr, ev, bw


def unfused(backend, x, w, b, dy, axis):
    """The same through the backend's batch norm and a separate ReLU each way."""
    kw = {"axis": axis, "backend": backend}
    tr = bn.batch_norm_train(x, w, b, **kw)
    ev = relu(bn.batch_norm_eval(x, w, b, mean=tr.mean, var=tr.var, **kw))
    dz = np.where(tr.y > 0, dy, dy * 0)  # nn.ReLU's backward, mask from its input
    bw = bn.batch_norm_backward(dz, x, w, mean=tr.mean, invstd=tr.invstd, **kw)
    return tr._replace(y=relu(tr.y)), ev, bw


def assert_bitwise(got, expected):
    (gt, ge, gb), (et, ee, eb) = got, expected
    for name, g, e in [*zip(gt._fields, gt, et, strict=True), ("eval", ge, ee),
                       *zip(("dx", "dweight", "dbias"), gb, eb, strict=True)]:  # fmt: skip
        assert same_bits(g, e), name


@pytest.mark.parametrize("backend", RELU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES[::2], ids=str)
def test_matches_reference(backend, dtype, shape, axis, rng):
    x, w, b, dy = inputs(rng, shape, axis, dtype)
    (gt, ge, gb), (rt, re, rb) = fused(backend, x, w, b, dy, axis), fused("reference", x, w, b,
                                                                          dy, axis)  # fmt: skip
    rtol, atol = tol(dtype)
    for name, g, r in [*zip(gt._fields, gt, rt, strict=True), ("eval", ge, re)]:
        assert g.dtype == dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=name)
    scale = max(1.0, float(np.abs(rb.dweight).max()), float(np.abs(rb.dbias).max()))
    for name, g, r in zip(("dx", "dweight", "dbias"), gb, rb, strict=True):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale, err_msg=name)


@pytest.mark.parametrize("backend", backends_for("relu"))
@pytest.mark.parametrize(("shape", "axis"), [((64, 9), 1), ((6, 5, 11), 1), ((6, 5, 4), -1)],
                         ids=str)  # fmt: skip
def test_equal_to_the_unfused_pair_within_one_rounding(backend, shape, axis, rng):
    """On every backend, peers included: the stated bound (one unit in the last place,
    relative to the largest magnitude; zeros' signs aside)."""
    x, w, b, dy = inputs(rng, shape, axis, np.float32)
    got, exp = fused(backend, x, w, b, dy, axis), unfused(backend, x, w, b, dy, axis)
    (gt, ge, gb), (et, ee, eb) = got, exp
    ulp = np.finfo(np.float32).eps
    for g, e in [*zip(gt, et, strict=True), (ge, ee), *zip(gb, eb, strict=True)]:
        assert np.abs(g - e).max() <= ulp * np.abs(e).max()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4)], ids=str)
def test_backward_by_finite_differences(backend, shape, rng):
    x, w, b, _ = inputs(rng, shape, 1, np.float64, loc=0.0, scale=1.0)
    R = rng.standard_normal(shape)

    def loss():
        return float(np.sum(F.batch_norm_relu_train(x, w, b, backend=backend).y * R))

    tr = F.batch_norm_relu_train(x, w, b, backend=backend)
    assert 0 < np.mean(tr.y > 0) < 1  # the mask matters
    g = F.batch_norm_relu_backward(R, x, w, y=tr.y, mean=tr.mean, invstd=tr.invstd,
                                   backend=backend)  # fmt: skip
    np.testing.assert_allclose(g.dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g.dweight, numeric_grad(loss, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g.dbias, numeric_grad(loss, b), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("shape", [(1_000_000, 2), (10, 2, 100_000)], ids=["dense", "spatial"])
def test_float32_stable_with_mean_1e4_std(backend, shape, rng):
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    got = F.batch_norm_relu_train(x, backend=backend)
    ref = F.batch_norm_relu_train(x, backend="reference")
    x64 = x.astype(np.float64).swapaxes(0, 1).reshape(2, -1)
    np.testing.assert_allclose(got.var, x64.var(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got.y, ref.y, rtol=1e-4, atol=1e-4)
    assert np.all(got.y >= 0) and 0.4 < np.mean(got.y > 0) < 0.6


@pytest.mark.parametrize("backend", RELU_BACKENDS)
@pytest.mark.parametrize("shape", [(50, 3), (5, 3, 7)], ids=str)
def test_all_negative_and_all_positive_channels(backend, shape, rng):
    """Channel 0 entirely below 0 (output 0, every gradient 0); channel 1 entirely above
    (plain batch norm there, forward and backward)."""
    x, w, b, dy = inputs(rng, shape, 1, np.float32, loc=0.0, scale=1.0)
    b[0], b[1] = -100.0, 100.0
    tr, ev, bw = fused(backend, x, w, b, dy, 1)
    plain = bn.batch_norm_train(x, w, b, backend=backend)
    pb = bn.batch_norm_backward(dy, x, w, mean=plain.mean, invstd=plain.invstd, backend=backend)
    assert np.all(tr.y[:, 0] == 0) and np.all(ev[:, 0] == 0)
    assert np.all(bw.dx[:, 0] == 0) and bw.dweight[0] == 0 and bw.dbias[0] == 0
    np.testing.assert_array_equal(tr.y[:, 1], plain.y[:, 1])
    np.testing.assert_allclose(bw.dx[:, 1], pb.dx[:, 1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bw.dweight[1], pb.dweight[1], rtol=1e-5)
    np.testing.assert_array_equal(bw.dbias[1], pb.dbias[1])


@pytest.mark.parametrize("backend", ["reference", *OWN])
@pytest.mark.parametrize("shape", [(50, 3), (5, 3, 7), (6, 4, 3)], ids=str)
def test_nan_propagates_to_its_channel_only(backend, shape, rng):
    x, w, b, dy = inputs(rng, shape, 1, np.float32)
    x[1, 2] = np.nan
    tr, ev, bw = fused(backend, x, w, b, dy, 1)
    assert np.isnan(tr.mean[2]) and np.all(np.isnan(tr.y[:, 2])) and np.all(np.isnan(ev[:, 2]))
    assert np.all(np.isfinite(tr.y[:, :2])) and np.all(np.isfinite(ev[:, :2]))
    assert np.all(np.isnan(bw.dx[:, 2])) and np.all(np.isfinite(bw.dx[:, :2]))
    dy[0, 0] = np.inf  # masked or not, an infinite gradient poisons its channel's sums
    bw = F.batch_norm_relu_backward(dy, x, w, y=tr.y, mean=tr.mean, invstd=tr.invstd,
                                    backend=backend)  # fmt: skip
    assert not np.isfinite(bw.dbias[0]) and np.all(np.isfinite(bw.dbias[1:2]))


@pytest.mark.parametrize("backend", OWN)
def test_deterministic_and_out(backend, rng):
    x, w, b, dy = inputs(rng, (16, 8, 100), 1, np.float32)
    a, c = fused(backend, x, w, b, dy, 1), fused(backend, x, w, b, dy, 1)
    assert_bitwise(a, c)
    out = np.full_like(x, np.nan)
    assert F.batch_norm_relu_train(x, w, b, backend=backend, out=out).y is out
    assert same_bits(out, a[0].y)
    out = np.full_like(x, np.nan)
    stats = {"mean": a[0].mean, "var": a[0].var, "backend": backend}
    assert F.batch_norm_relu_eval(x, w, b, **stats, out=out) is out
    out = np.full_like(x, np.nan)
    got = F.batch_norm_relu_backward(dy, x, w, y=a[0].y, mean=a[0].mean, invstd=a[0].invstd,
                                     backend=backend, out=out)  # fmt: skip
    assert got.dx is out and same_bits(out, a[2].dx)


X = np.ones((8, 3, 5), np.float32)
C3 = np.ones(3, np.float32)


def test_the_checks_of_the_unfused_functions_apply():
    with pytest.raises(ValueError, match=r"eps must be a positive finite float, got 0"):
        F.batch_norm_relu_train(X, eps=0)
    with pytest.raises(ValueError, match=r"more than one value per channel in training mode"):
        F.batch_norm_relu_train(np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match=r"weight must have the dtype of x \(float32\)"):
        F.batch_norm_relu_train(X, np.ones(3))
    with pytest.raises(ValueError, match=r"var must be non-negative"):
        F.batch_norm_relu_eval(X, mean=C3, var=-C3)
    with pytest.raises(ValueError, match=r"axis must be 1 \(channel-first"):
        F.batch_norm_relu_eval(X, mean=C3, var=C3, axis=0)
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'y'"):
        F.batch_norm_relu_backward(X, X, mean=C3, invstd=C3)
    with pytest.raises(TypeError, match=r"positional"):
        F.batch_norm_relu_backward(X, X, X, C3, C3)
    with pytest.raises(ValueError, match=r"y must have the shape of x \(8, 3, 5\), got \(8, 3\)"):
        F.batch_norm_relu_backward(X, X, y=X[:, :, 0], mean=C3, invstd=C3)
    with pytest.raises(TypeError, match=r"y must have the dtype of x \(float32\)"):
        F.batch_norm_relu_backward(X, X, y=X.astype(np.float64), mean=C3, invstd=C3)
    with pytest.raises(ValueError, match=r"out must have the shape"):
        F.batch_norm_relu_train(X, out=np.empty((8, 3), np.float32))


def test_a_backend_without_the_fused_kernels_is_a_clear_error(monkeypatch):
    from bnbench import registry

    impl = registry.get_backend("reference")
    monkeypatch.delattr(impl, "forward_train_relu")
    with pytest.raises(ValueError, match=r"backend 'reference' has no relu kernel "
                                         r"\(batch_norm_relu_train\); backends that have "
                                         r"one: cpu"):  # fmt: skip
        F.batch_norm_relu_train(X, backend="reference")
