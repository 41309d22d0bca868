"""Batch Renorm (``batch_renorm_train`` / ``batch_renorm_backward``) on every backend."""

import numpy as np
import pytest
from helpers import OWN, backends_for, make_inputs, numeric_grad, tol
from hypothesis import given, settings
from hypothesis import strategies as st

import bnbench as bn
from bnbench import registry
from bnbench.kernels import supports

SHAPES = [(2, 1), (5, 3), (256, 33), (1000, 7), (3, 4, 1), (7, 5, 13), (4, 3, 5, 6),
          (2, 2, 3, 4, 5), (16, 8, 33)]  # fmt: skip
DTYPES = [np.float32, np.float64]
# (rmax, dmax): both clips active, r clipped only, no clipping, no correction at all
CLIPS = [(1.5, 0.3), (1.2, 50.0), (100.0, 100.0), (1.0, 0.0)]


def running(rng, x):
    """Running estimates away from the batch's statistics, so that r and d matter."""
    C = x.shape[1]
    mean = x.astype(np.float64).mean(axis=tuple(i for i in range(x.ndim) if i != 1))
    shift = rng.uniform(-2.0, 2.0, C)
    scale = rng.uniform(0.2, 5.0, C)
    var = x.astype(np.float64).var(axis=tuple(i for i in range(x.ndim) if i != 1))
    return (mean + shift).astype(x.dtype), (var * scale).astype(x.dtype)


def renorm(x, weight, bias, rm, rv, rmax, dmax, backend):
    return bn.batch_renorm_train(x, weight, bias, running_mean=rm, running_var=rv,
                                 rmax=rmax, dmax=dmax, backend=backend)  # fmt: skip


def renorm_grads(dy, x, weight, res, backend):
    return bn.batch_renorm_backward(dy, x, weight, mean=res.mean, invstd=res.invstd,
                                    r=res.r, d=res.d, backend=backend)  # fmt: skip


def check_renorm(backend, x, weight, bias, rm, rv, rmax, dmax, dy):
    ref = renorm(x, weight, bias, rm, rv, rmax, dmax, "reference")
    got = renorm(x, weight, bias, rm, rv, rmax, dmax, backend)
    rtol, atol = tol(x.dtype)
    for name in ref._fields:
        r, g = getattr(ref, name), getattr(got, name)
        assert g.dtype == x.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=name)
    gr, gg = (
        renorm_grads(dy, x, weight, ref, "reference"),
        renorm_grads(dy, x, weight, ref, backend),
    )
    scale = max(1.0, float(np.abs(gr.dweight).max()), float(np.abs(gr.dbias).max()))
    for name in gr._fields:
        r, g = getattr(gr, name), getattr(gg, name)
        assert g.dtype == x.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale, err_msg=name)
    return ref


@pytest.mark.parametrize("backend", backends_for("renorm"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rmax", "dmax"), CLIPS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, dtype, rmax, dmax, shape, rng):
    x, weight, bias = make_inputs(rng, shape, dtype, loc=3.0, scale=2.0)
    rm, rv = running(rng, x)
    dy = rng.standard_normal(shape).astype(dtype)
    check_renorm(backend, x, weight, bias, rm, rv, rmax, dmax, dy)


def test_the_oracle_follows_ioffe(rng):
    """r, d and y computed by hand (Ioffe 2017, Algorithm 1; sigmas with eps)."""
    x, weight, bias = make_inputs(rng, (50, 4), np.float64, loc=1.0, scale=2.0)
    rm, rv = np.array([0.0, 1.0, 5.0, 1.0]), np.array([4.0, 4.0, 1.0, 100.0])
    res = renorm(x, weight, bias, rm, rv, 2.0, 1.0, "reference")
    mu, var = x.mean(axis=0), x.var(axis=0)
    sigma_b, sigma = np.sqrt(var + 1e-5), np.sqrt(rv + 1e-5)
    r = np.clip(sigma_b / sigma, 0.5, 2.0)
    d = np.clip((mu - rm) / sigma, -1.0, 1.0)
    np.testing.assert_allclose(res.r, r, rtol=1e-14)
    np.testing.assert_allclose(res.d, d, rtol=1e-14)
    assert res.r[3] == 0.5 and res.d[2] == -1.0  # the clips are exercised
    np.testing.assert_allclose(res.y, ((x - mu) / sigma_b * r + d) * weight + bias, rtol=1e-13)
    np.testing.assert_array_equal(res.invstd, 1 / sigma_b)
    np.testing.assert_allclose(res.var, var, rtol=1e-14)


@pytest.mark.parametrize("kernels", ["parallel", "serial"])
@pytest.mark.parametrize("backend", ["reference", *OWN])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 5), (300, 33), (6, 3, 7), (16, 4, 3, 3)], ids=str)
def test_no_correction_is_plain_batch_norm(backend, dtype, shape, rng, kernels, monkeypatch):
    """rmax = 1, dmax = 0: r = 1, d = 0 and plain batch norm, bit for bit (the
    coefficients are plain batch norm's operations on the same values; see
    scalar.renorm_affine_coefficients), with the CPU's parallel kernels and with their
    serial twins (what inputs of these sizes run outside the tests)."""
    if kernels == "serial":
        from bnbench.kernels import cpu

        monkeypatch.setattr(cpu, "SERIAL_BELOW", 1 << 40)
        monkeypatch.setattr(cpu, "ELEMENTWISE_SERIAL_BELOW", 1 << 40)
    x, weight, bias = make_inputs(rng, shape, dtype, loc=2.0, scale=3.0)
    rm, rv = running(rng, x)
    dy = rng.standard_normal(shape).astype(dtype)
    plain = bn.batch_norm_train(x, weight, bias, backend=backend)
    res = renorm(x, weight, bias, rm, rv, 1.0, 0.0, backend)
    np.testing.assert_array_equal(res.r, 1)
    np.testing.assert_array_equal(res.d, 0)
    for name in plain._fields:
        np.testing.assert_array_equal(getattr(res, name), getattr(plain, name), err_msg=name)
    gp = bn.batch_norm_backward(dy, x, weight, mean=plain.mean, invstd=plain.invstd,
                                backend=backend)  # fmt: skip
    for name, a, b in zip(gp._fields, renorm_grads(dy, x, weight, res, backend), gp, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("backend", OWN)
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 8),
    C=st.integers(1, 6),
    spatial=st.lists(st.integers(1, 5), max_size=2),
    dtype=st.sampled_from(DTYPES),
    rmax=st.sampled_from([1.0, 1.1, 3.0, np.inf]),
    dmax=st.sampled_from([0.0, 0.5, 5.0, np.inf]),
    loc=st.sampled_from([0.0, -7.5, 1e3]),
    seed=st.integers(0, 2**31),
)
def test_matches_reference_property(backend, n, C, spatial, dtype, rmax, dmax, loc, seed):
    rng = np.random.default_rng(seed)
    shape = (n, C, *spatial)
    x, weight, bias = make_inputs(rng, shape, dtype, loc=loc)
    rm, rv = running(rng, x)
    dy = rng.standard_normal(shape).astype(dtype)
    check_renorm(backend, x, weight, bias, rm, rv, rmax, dmax, dy)


@pytest.mark.parametrize("backend", ["reference", *OWN])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 2, 2, 3)], ids=str)
@pytest.mark.parametrize(("rmax", "dmax"), [(1.5, 0.3), (100.0, 100.0)], ids=str)
def test_backward_matches_finite_differences_with_r_and_d_fixed(backend, shape, rmax, dmax, rng):
    """With r and d constants, ``y = xhat_B * (weight * r) + (bias + weight * d)``: plain
    batch norm with that affine map, differentiated numerically."""
    x, weight, bias = make_inputs(rng, shape, np.float64, loc=1.0, scale=2.0)
    rm, rv = running(rng, x)
    g = rng.standard_normal(shape)
    res = renorm(x, weight, bias, rm, rv, rmax, dmax, backend)
    grads = renorm_grads(g, x, weight, res, backend)
    r, d = res.r.copy(), res.d.copy()

    def f():
        y = bn.batch_norm_train(x, weight * r, bias + weight * d, backend=backend).y
        return float(np.sum(y * g))

    np.testing.assert_allclose(grads.dx, numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dweight, numeric_grad(f, weight), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dbias, numeric_grad(f, bias), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", OWN)
def test_deterministic_and_nan_stays_in_its_channel(backend, rng):
    x, weight, bias = make_inputs(rng, (64, 3, 50), np.float32, loc=10.0)
    rm, rv = running(rng, x)
    a, b = (renorm(x, weight, bias, rm, rv, 3.0, 5.0, backend) for _ in range(2))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    x[3, 1, 7] = np.nan
    res = renorm(x, weight, bias, rm, rv, 3.0, 5.0, backend)
    assert np.all(np.isnan(res.y[:, 1])) and np.all(np.isfinite(res.y[:, [0, 2]]))


X = np.ones((4, 3, 5), np.float32)
C3 = np.ones(3, np.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rmax": 0.5}, ValueError, r"rmax must be >= 1 \(1 is plain batch norm\), got 0.5"),
        ({"rmax": float("nan")}, ValueError, r"rmax must be >= 1 .* got nan"),
        ({"dmax": -0.1}, ValueError, r"dmax must be >= 0 \(0 is plain batch norm\), got -0.1"),
        ({"rmax": "3"}, TypeError, r"rmax must be a float >= 1, got str"),
        ({"dmax": None}, TypeError, r"dmax must be a float >= 0, got NoneType"),
        ({"running_mean": np.ones(4, np.float32)}, ValueError, r"running_mean must have shape \(3,\).*got \(4,\)"),
        ({"running_var": np.ones((1, 3), np.float32)}, ValueError, r"running_var must have shape \(3,\)"),
        ({"running_mean": np.ones(3)}, TypeError, r"running_mean must have the dtype of x \(float32\), got float64"),
        ({"running_var": -C3}, ValueError, r"running_var must be non-negative, got minimum -1.0"),
        ({"running_var": [1.0, 1.0, 1.0]}, TypeError, r"running_var must be a numpy.ndarray of shape \(3,\), got list"),
        ({"eps": 0.0}, ValueError, r"eps must be a positive finite float"),
        ({"x": np.ones((1, 3), np.float32)}, ValueError, r"more than one value per channel"),
    ],
)  # fmt: skip
def test_bad_input(kwargs, error, match):
    args = {"x": X, "running_mean": C3, "running_var": C3, "rmax": 3.0, "dmax": 5.0}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        bn.batch_renorm_train(**args)


def test_bad_backward_input():
    stats = {"mean": C3, "invstd": C3, "r": C3, "d": C3}
    with pytest.raises(ValueError, match=r"r must have shape \(3,\)"):
        bn.batch_renorm_backward(X, X, **{**stats, "r": np.ones(2, np.float32)})
    with pytest.raises(TypeError, match=r"d must have the dtype of x"):
        bn.batch_renorm_backward(X, X, **{**stats, "d": np.ones(3)})
    with pytest.raises(TypeError, match="missing 2 required keyword-only arguments: 'r' and 'd'"):
        bn.batch_renorm_backward(X, X, mean=C3, invstd=C3)
    with pytest.raises(TypeError, match="positional argument"):
        bn.batch_renorm_train(X, C3, C3, C3, C3)


@pytest.mark.parametrize("peer", sorted(registry.PEERS))
def test_a_peer_without_renorm_kernel_is_a_clear_error(peer):
    try:
        impl = registry.get_backend(peer)
    except registry.BackendUnavailable as err:
        pytest.skip(str(err))
    if supports(impl, "renorm"):
        pytest.skip(f"{peer} has a renorm kernel")
    with pytest.raises(ValueError, match=rf"backend '{peer}' has no renorm kernel"):
        bn.batch_renorm_train(X, running_mean=C3, running_var=C3, rmax=3, dmax=5, backend=peer)
