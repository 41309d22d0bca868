"""Every backend against the float64 NumPy oracle (bnbench.kernels.reference)."""

import numpy as np
import pytest
from helpers import OWN, REQUIRE_PEERS, WITH_PEERS, make_inputs, peer_unavailable, tol
from hypothesis import given, settings
from hypothesis import strategies as st

import bnbench as bn
from bnbench import registry

SHAPES = [
    (2, 1),  # two values per channel, one channel
    (5, 3),
    (256, 1024),
    (1000, 7),  # rows not divisible by the thread count
    (3, 4, 1),
    (2, 3, 1, 1),  # spatial dims of size 1 (the dense loop order)
    (1, 3, 2),  # N = 1
    (7, 5, 13),  # odd sizes, ragged tails
    (4, 3, 5, 6),
    (2, 2, 3, 4, 5),  # three spatial dims
    (16, 8, 33),
]
DTYPES = [np.float32, np.float64]


def check_train(backend, x, weight, bias, eps=1e-5):
    ref = bn.batch_norm_train(x, weight, bias, eps=eps, backend="reference")
    got = bn.batch_norm_train(x, weight, bias, eps=eps, backend=backend)
    rtol, atol = tol(x.dtype)
    for name in ("y", "mean", "var", "invstd"):
        r, g = getattr(ref, name), getattr(got, name)
        assert g.dtype == x.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=name)
    return ref


def check_backward(backend, dy, x, weight, mean, invstd):
    ref = bn.batch_norm_backward(dy, x, weight, mean=mean, invstd=invstd, backend="reference")
    got = bn.batch_norm_backward(dy, x, weight, mean=mean, invstd=invstd, backend=backend)
    rtol, atol = tol(x.dtype)
    scale = max(1.0, float(np.abs(ref.dweight).max()), float(np.abs(ref.dbias).max()))
    for name in ("dx", "dweight", "dbias"):
        r, g = getattr(ref, name), getattr(got, name)
        assert g.dtype == x.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale, err_msg=name)


@pytest.mark.parametrize("backend", WITH_PEERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, dtype, shape, rng):
    x, weight, bias = make_inputs(rng, shape, dtype, loc=3.0, scale=2.0)
    ref = check_train(backend, x, weight, bias)
    y_eval = bn.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var, backend=backend)
    y_ref = bn.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var, backend="reference")
    np.testing.assert_allclose(y_eval, y_ref, *tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    check_backward(backend, dy, x, weight, ref.mean, ref.invstd)


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 9))
    spatial = draw(st.lists(st.integers(1, 7), max_size=2))
    shape = (n, c, *spatial)
    if n * int(np.prod(spatial)) < 2:
        shape = (n + 1, c, *spatial)
    return shape


@pytest.mark.parametrize("backend", OWN)
@settings(max_examples=60, deadline=None)
@given(
    shape=layouts(),
    dtype=st.sampled_from(DTYPES),
    loc=st.sampled_from([0.0, -7.5, 1e3]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**31),
)
def test_matches_reference_property(backend, shape, dtype, loc, scale, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = make_inputs(rng, shape, dtype, loc, scale)
    ref = check_train(backend, x, weight, bias)
    dy = rng.standard_normal(shape).astype(dtype)
    check_backward(backend, dy, x, weight, ref.mean, ref.invstd)


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("shape", [(1_000_000, 2), (10, 2, 100_000)], ids=["dense", "spatial"])
def test_float32_stable_with_mean_1e4_std(backend, shape, rng):
    """Mean 10^4 standard deviations, M = 10^6 values per channel: 1e-5 relative error."""
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    got = bn.batch_norm_train(x, backend=backend)
    ref = bn.batch_norm_train(x, backend="reference")
    ref_mean, ref_var = (x.astype(np.float64).swapaxes(0, 1).reshape(2, -1).mean(1),
                         x.astype(np.float64).swapaxes(0, 1).reshape(2, -1).var(1))  # fmt: skip
    np.testing.assert_allclose(ref.var, ref_var, rtol=1e-7)  # the oracle, rounded to float32
    np.testing.assert_allclose(got.mean, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(got.var, ref_var, rtol=1e-5)
    np.testing.assert_allclose(got.y, ref.y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 3), (8, 3, 17)], ids=str)
def test_tiny_variance_and_constant_channels(backend, dtype, shape, rng):
    x, weight, bias = make_inputs(rng, shape, dtype, loc=5.0, scale=1e-4)
    x[:, 1] = dtype(2.5)  # a constant channel: var 0, y = bias
    ref = check_train(backend, x, weight, bias)
    assert ref.var[1] == 0
    got = bn.batch_norm_train(x, weight, bias, backend=backend)
    np.testing.assert_array_equal(got.var[1], 0)
    np.testing.assert_allclose(got.y[:, 1], bias[1], rtol=1e-6)


@pytest.mark.parametrize("backend", WITH_PEERS)
def test_eval_with_one_value_per_channel(backend, rng):
    x, weight, bias = make_inputs(rng, (1, 4), np.float64)
    mean, var = rng.standard_normal(4), rng.uniform(0.1, 2.0, 4)
    y = bn.batch_norm_eval(x, weight, bias, mean=mean, var=var, backend=backend)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * weight + bias, rtol=1e-12)


@pytest.mark.parametrize("peer", sorted(registry.PEERS))
def test_every_peer_is_tested(peer):
    """An installed peer runs every contract test that takes WITH_PEERS; under the test
    command (which installs the peers extra) a peer that does not load is a failure."""
    reason = peer_unavailable(peer)
    if reason is None:
        assert peer in WITH_PEERS
    elif REQUIRE_PEERS:
        pytest.fail(f"the test command installs the peers extra, but: {reason}")
    else:
        pytest.skip(reason)


@pytest.mark.parametrize("backend", WITH_PEERS)
def test_non_contiguous_input_is_copied(backend, rng):
    base, weight, bias = make_inputs(rng, (6, 4, 10), np.float32)
    x = base[:, :, ::2]
    assert not x.flags.c_contiguous
    got = bn.batch_norm_train(x, weight, bias, backend=backend)
    ref = bn.batch_norm_train(np.ascontiguousarray(x), weight, bias, backend="reference")
    np.testing.assert_allclose(got.y, ref.y, *tol(np.float32))
    xt = np.ascontiguousarray(base[:, :, 0]).T.copy().T  # Fortran order (N, C)
    got = bn.batch_norm_train(xt, weight, bias, backend=backend)
    ref = bn.batch_norm_train(np.ascontiguousarray(xt), weight, bias, backend="reference")
    np.testing.assert_allclose(got.y, ref.y, *tol(np.float32))


@pytest.mark.parametrize("backend", WITH_PEERS)
def test_no_affine_is_unit_weight_zero_bias(backend, rng):
    x, _, _ = make_inputs(rng, (9, 3, 4), np.float64)
    got = bn.batch_norm_train(x, backend=backend)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_array_equal(got.y, bn.batch_norm_train(x, ones, zeros, backend=backend).y)
    np.testing.assert_allclose(got.y.mean(axis=(0, 2)), 0, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
@pytest.mark.parametrize("shape", [(300, 5), (6, 5, 11)], ids=str)
def test_out_is_written_and_returned(backend, shape, rng):
    """Every operation with ``out=``: the array is returned, filled with what the same
    backend gives without ``out=`` (which agrees with the oracle)."""
    x, weight, bias = make_inputs(rng, shape, np.float32)
    ref = check_train(backend, x, weight, bias)
    out = np.full_like(x, np.nan)
    res = bn.batch_norm_train(x, weight, bias, backend=backend, out=out)
    assert res.y is out
    np.testing.assert_array_equal(out, bn.batch_norm_train(x, weight, bias, backend=backend).y)

    out = np.full_like(x, np.nan)
    stats = {"mean": ref.mean, "var": ref.var, "backend": backend}
    assert bn.batch_norm_eval(x, weight, bias, **stats, out=out) is out
    np.testing.assert_array_equal(out, bn.batch_norm_eval(x, weight, bias, **stats))

    dy = rng.standard_normal(shape).astype(np.float32)
    check_backward(backend, dy, x, weight, ref.mean, ref.invstd)
    dout = np.full_like(x, np.nan)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "backend": backend}
    got = bn.batch_norm_backward(dy, x, weight, **stats, out=dout)
    assert got.dx is dout
    for a, b in zip(got, bn.batch_norm_backward(dy, x, weight, **stats), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("shape", [(4096, 64), (16, 8, 1000)], ids=str)
def test_deterministic(backend, shape, rng):
    x, weight, bias = make_inputs(rng, shape, np.float32, loc=100.0)
    dy = rng.standard_normal(shape).astype(np.float32)
    a = bn.batch_norm_train(x, weight, bias, backend=backend)
    b = bn.batch_norm_train(x, weight, bias, backend=backend)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    ga = bn.batch_norm_backward(dy, x, weight, mean=a.mean, invstd=a.invstd, backend=backend)
    gb = bn.batch_norm_backward(dy, x, weight, mean=a.mean, invstd=a.invstd, backend=backend)
    for u, v in zip(ga, gb, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("shape", [(50, 3), (5, 3, 7)], ids=str)
def test_nan_propagates_to_its_channel_only(backend, shape, rng):
    x, weight, bias = make_inputs(rng, shape, np.float32)
    x[1, 2] = np.nan
    res = bn.batch_norm_train(x, weight, bias, backend=backend)
    assert np.isnan(res.mean[2]) and np.isnan(res.var[2]) and np.all(np.isnan(res.y[:, 2]))
    assert np.all(np.isfinite(res.y[:, :2]))
    y = bn.batch_norm_eval(x, weight, bias, mean=res.mean, var=res.var, backend=backend)
    assert np.all(np.isnan(y[:, 2])) and np.all(np.isfinite(y[:, :2]))
    dy = rng.standard_normal(shape).astype(np.float32)
    dy[0, 0] = np.inf
    g = bn.batch_norm_backward(dy, x, weight, mean=res.mean, invstd=res.invstd, backend=backend)
    assert not np.isfinite(g.dbias[0]) and np.all(np.isnan(g.dx[:, 2]))
