"""Channels-last input (``axis=-1``, ``(N, *spatial, C)``) on every backend: the same
results as channel-first batch norm of the transposed input, computed by the float64
oracle, for every operation; bad ``axis`` values; the BatchNorm layer over ``axis=-1``."""

import numpy as np
import pytest
from helpers import OWN, WITH_PEERS, backends_for, check_layer, numeric_grad, tol
from hypothesis import given, settings
from hypothesis import strategies as st

import bnbench as bn
from bnbench import nn

DTYPES = [np.float32, np.float64]
# channels-last shapes (N, *spatial, C): dense, one and two spatial axes, a spatial
# axis of size 1, odd sizes
SHAPES = [(6, 5), (2, 1), (4, 7, 3), (3, 5, 4, 6), (2, 1, 4), (5, 3, 1, 2), (9, 13, 1)]
# (channels-last shape, ghost batch size)
GHOST = [((6, 5), 2), ((6, 5), 3), ((6, 5), 6), ((4, 7, 3), 2), ((4, 7, 3), 4),
         ((8, 3, 5), 2), ((6, 5, 4, 3), 3), ((6, 2, 1, 4), 2), ((12, 33), 4)]  # fmt: skip
CLIPS = [(1.5, 0.3), (1.2, 50.0), (100.0, 100.0), (1.0, 0.0)]


def to_cf(a):
    """Channels-last ``(N, *spatial, C)`` -> channel-first ``(N, C, *spatial)`` copy."""
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def to_cl(a):
    """Channel-first -> channels-last (a view)."""
    return np.moveaxis(a, 1, -1)


def cl_inputs(rng, shape, dtype, loc=3.0, scale=2.0):
    """Channels-last ``x`` and ``(C,)`` weight, bias, ``C = shape[-1]``."""
    C = shape[-1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    weight = rng.uniform(0.5, 2.0, C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    return x, weight, bias


def close(got, ref, dtype, name, scale=1.0):
    rtol, atol = tol(dtype)
    assert got.dtype == dtype and got.shape == ref.shape, (name, got.dtype, got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=name)


def grad_scale(ref):
    return max(1.0, float(np.abs(ref.dweight).max()), float(np.abs(ref.dbias).max()))


def check_train(backend, x, weight, bias):
    """Channels-last train on ``backend`` against the oracle on the transposed input."""
    ref = bn.batch_norm_train(to_cf(x), weight, bias, backend="reference")
    got = bn.batch_norm_train(x, weight, bias, axis=-1, backend=backend)
    close(got.y, to_cl(ref.y), x.dtype, "y")
    for name in ("mean", "var", "invstd"):
        close(getattr(got, name), getattr(ref, name), x.dtype, name)
    return ref, got


def check_backward(backend, dy, x, weight, mean, invstd):
    ref = bn.batch_norm_backward(to_cf(dy), to_cf(x), weight, mean=mean, invstd=invstd,
                                 backend="reference")  # fmt: skip
    got = bn.batch_norm_backward(dy, x, weight, mean=mean, invstd=invstd, axis=-1,
                                 backend=backend)  # fmt: skip
    scale = grad_scale(ref)
    close(got.dx, to_cl(ref.dx), x.dtype, "dx", scale)
    close(got.dweight, ref.dweight, x.dtype, "dweight", scale)
    close(got.dbias, ref.dbias, x.dtype, "dbias", scale)
    return got


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_train_eval_backward_match_channel_first(backend, dtype, shape, rng):
    x, weight, bias = cl_inputs(rng, shape, dtype)
    ref, _ = check_train(backend, x, weight, bias)
    y = bn.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var, axis=-1,
                           backend=backend)  # fmt: skip
    y_ref = bn.batch_norm_eval(to_cf(x), weight, bias, mean=ref.mean, var=ref.var,
                               backend="reference")  # fmt: skip
    close(y, to_cl(y_ref), dtype, "eval y")
    dy = rng.standard_normal(shape).astype(dtype)
    check_backward(backend, dy, x, weight, ref.mean, ref.invstd)


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 6)], ids=str)
def test_channels_last_is_not_channel_first(backend, shape, rng):
    """The statistics really are over the last axis: they differ from those that
    channel-first batch norm of the same array computes over its axis 1."""
    x, _, _ = cl_inputs(rng, shape, np.float64)
    x += np.arange(shape[-1])  # channel c has mean 3 + c
    got = bn.batch_norm_train(x, axis=-1, backend=backend)
    assert got.mean.shape == (shape[-1],)
    np.testing.assert_allclose(got.mean, x.reshape(-1, shape[-1]).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got.y.reshape(-1, shape[-1]).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(got.y.reshape(-1, shape[-1]).var(axis=0), 1, rtol=1e-4)


@pytest.mark.parametrize("backend", backends_for("ghost", ["reference", *WITH_PEERS]))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "G"), GHOST, ids=str)
def test_ghost_matches_channel_first_ghost(backend, dtype, shape, G, rng):
    """Ghost batches are groups of G samples (``G * prod(spatial)`` rows of the kernels'
    view), with per-group statistics equal to channel-first ghost batch norm's."""
    x, weight, bias = cl_inputs(rng, shape, dtype)
    x += np.arange(shape[0]).reshape(-1, *([1] * (x.ndim - 1))).astype(dtype)  # groups differ
    ref = bn.batch_norm_train(to_cf(x), weight, bias, ghost_batch_size=G, backend="reference")
    got = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, axis=-1, backend=backend)
    assert got.mean.shape == (shape[0] // G, shape[-1])
    close(got.y, to_cl(ref.y), dtype, "y")
    for name in ("mean", "var", "invstd"):
        close(getattr(got, name), getattr(ref, name), dtype, name)
    # each group is plain batch norm of its samples alone
    for g in range(shape[0] // G):
        one = bn.batch_norm_train(x[g * G : (g + 1) * G].astype(np.float64), axis=-1,
                                  backend="reference")  # fmt: skip
        np.testing.assert_allclose(got.mean[g], one.mean, *tol(dtype))
        np.testing.assert_allclose(got.var[g], one.var, *tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "ghost_batch_size": G}
    gr = bn.batch_norm_backward(to_cf(dy), to_cf(x), weight, **stats, backend="reference")
    gg = bn.batch_norm_backward(dy, x, weight, **stats, axis=-1, backend=backend)
    scale = grad_scale(gr)
    close(gg.dx, to_cl(gr.dx), dtype, "dx", scale)
    close(gg.dweight, gr.dweight, dtype, "dweight", scale)
    close(gg.dbias, gr.dbias, dtype, "dbias", scale)


@pytest.mark.parametrize("backend", backends_for("renorm", ["reference", *WITH_PEERS]))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rmax", "dmax"), CLIPS, ids=str)
@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 3), (3, 5, 4, 6)], ids=str)
def test_renorm_matches_channel_first(backend, dtype, rmax, dmax, shape, rng):
    x, weight, bias = cl_inputs(rng, shape, dtype)
    C = shape[-1]
    x64 = x.astype(np.float64).reshape(-1, C)
    rm = (x64.mean(axis=0) + rng.uniform(-2, 2, C)).astype(dtype)
    rv = (x64.var(axis=0) * rng.uniform(0.2, 5.0, C)).astype(dtype)
    clip = {"running_mean": rm, "running_var": rv, "rmax": rmax, "dmax": dmax}
    ref = bn.batch_renorm_train(to_cf(x), weight, bias, **clip, backend="reference")
    got = bn.batch_renorm_train(x, weight, bias, **clip, axis=-1, backend=backend)
    close(got.y, to_cl(ref.y), dtype, "y")
    for name in ("mean", "var", "invstd", "r", "d"):
        close(getattr(got, name), getattr(ref, name), dtype, name)
    dy = rng.standard_normal(shape).astype(dtype)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "r": ref.r, "d": ref.d}
    gr = bn.batch_renorm_backward(to_cf(dy), to_cf(x), weight, **stats, backend="reference")
    gg = bn.batch_renorm_backward(dy, x, weight, **stats, axis=-1, backend=backend)
    scale = grad_scale(gr)
    close(gg.dx, to_cl(gr.dx), dtype, "dx", scale)
    close(gg.dweight, gr.dweight, dtype, "dweight", scale)
    close(gg.dbias, gr.dbias, dtype, "dbias", scale)


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 3), (3, 5, 4, 6)], ids=str)
def test_axis_ndim_minus_one_is_axis_minus_one(backend, shape, rng):
    x, weight, bias = cl_inputs(rng, shape, np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    last = x.ndim - 1
    for axis in (last, np.int64(last), np.int32(-1)):
        a = bn.batch_norm_train(x, weight, bias, axis=-1, backend=backend)
        b = bn.batch_norm_train(x, weight, bias, axis=axis, backend=backend)
        for name, u, v in zip(a._fields, a, b, strict=True):
            np.testing.assert_array_equal(u, v, err_msg=name)
        stats = {"mean": a.mean, "var": a.var, "backend": backend}
        np.testing.assert_array_equal(bn.batch_norm_eval(x, weight, bias, **stats, axis=-1),
                                      bn.batch_norm_eval(x, weight, bias, **stats, axis=axis))  # fmt: skip
        stats = {"mean": a.mean, "invstd": a.invstd, "backend": backend}
        ga = bn.batch_norm_backward(dy, x, weight, **stats, axis=-1)
        gb = bn.batch_norm_backward(dy, x, weight, **stats, axis=axis)
        for name, u, v in zip(ga._fields, ga, gb, strict=True):
            np.testing.assert_array_equal(u, v, err_msg=name)


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
def test_non_contiguous_channels_last_input_and_out(backend, rng):
    base, weight, bias = cl_inputs(rng, (4, 10, 3), np.float32)
    x = base[:, ::2]  # (4, 5, 3), not contiguous
    assert not x.flags.c_contiguous
    ref = bn.batch_norm_train(to_cf(x), weight, bias, backend="reference")
    out = np.full(x.shape, np.nan, np.float32)
    got = bn.batch_norm_train(x, weight, bias, axis=-1, backend=backend, out=out)
    assert got.y is out
    close(out, to_cl(ref.y), np.float32, "y")


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("shape", [(100, 10_000, 2), (50, 100, 100, 3)], ids=str)
def test_float32_stable_with_mean_1e4_std(backend, shape, rng):
    """Channels-last float32 whose mean is 10^4 standard deviations: 1e-5 relative error
    against the float64 statistics (M = 10^6 and 5 * 10^5 values per channel)."""
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    C = shape[-1]
    x64 = x.astype(np.float64).reshape(-1, C)
    ref_mean, ref_var = x64.mean(axis=0), x64.var(axis=0)
    got = bn.batch_norm_train(x, axis=-1, backend=backend)
    np.testing.assert_allclose(got.mean, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(got.var, ref_var, rtol=1e-5)
    y_ref = (x64 - ref_mean) / np.sqrt(ref_var + 1e-5)
    np.testing.assert_allclose(got.y.reshape(-1, C), y_ref, rtol=1e-4, atol=1e-4)


@st.composite
def cl_layouts(draw):
    n = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 7), max_size=2))
    c = draw(st.integers(1, 9))
    if n * int(np.prod(spatial)) < 2:
        n += 1
    return (n, *spatial, c)


@pytest.mark.parametrize("backend", OWN)
@settings(max_examples=60, deadline=None)
@given(
    shape=cl_layouts(),
    dtype=st.sampled_from(DTYPES),
    loc=st.sampled_from([0.0, -7.5, 1e3]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**31),
)
def test_matches_reference_property(backend, shape, dtype, loc, scale, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = cl_inputs(rng, shape, dtype, loc, scale)
    ref, _ = check_train(backend, x, weight, bias)
    dy = rng.standard_normal(shape).astype(dtype)
    check_backward(backend, dy, x, weight, ref.mean, ref.invstd)


# -- bad axis


X4 = np.ones((2, 3, 4, 5), np.float32)
X4[0] = 2.0


def calls(x, C):
    """One call per public function that takes ``axis``, for ``x`` with ``C`` channels."""
    s = np.ones(C, np.float32)
    z = np.zeros(C, np.float32)
    return {
        "train": lambda axis: bn.batch_norm_train(x, axis=axis),
        "eval": lambda axis: bn.batch_norm_eval(x, mean=z, var=s, axis=axis),
        "backward": lambda axis: bn.batch_norm_backward(x, x, mean=z, invstd=s, axis=axis),
        "renorm": lambda axis: bn.batch_renorm_train(
            x, running_mean=z, running_var=s, rmax=2.0, dmax=1.0, axis=axis
        ),
        "renorm_backward": lambda axis: bn.batch_renorm_backward(
            x, x, mean=z, invstd=s, r=s, d=z, axis=axis
        ),
    }


@pytest.mark.parametrize("op", ["train", "eval", "backward", "renorm", "renorm_backward"])
@pytest.mark.parametrize(
    ("axis", "error"),
    [(0, ValueError), (2, ValueError), (4, ValueError), (-2, ValueError), (-5, ValueError),
     (1.5, TypeError), (-1.0, TypeError), (True, TypeError), (None, TypeError),
     ("-1", TypeError)],
    ids=repr,
)  # fmt: skip
def test_bad_axis_is_an_error_naming_axis(op, axis, error):
    # C = 5 for every call: axis=-1 is valid, so only axis is wrong
    with pytest.raises(error, match="axis"):
        calls(X4, 5)[op](axis)
    calls(X4, 5)[op](-1)  # the same call with a valid axis succeeds
    calls(X4, 3)[op](1)


def test_bad_axis_message_says_what_is_expected():
    with pytest.raises(ValueError, match=r"axis must be 1 .* or -1 .*\(2, 3, 4, 5\), got 2"):
        bn.batch_norm_train(X4, axis=2)
    with pytest.raises(TypeError, match=r"axis must be an integer.*got 1\.5"):
        bn.batch_norm_train(X4, axis=1.5)


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
def test_per_channel_arrays_must_match_the_last_axis(backend):
    """(4, 7, 3) channels-last has C = 3: a weight of 7 (channel-first's C) is refused."""
    x = np.arange(84, dtype=np.float32).reshape(4, 7, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*got \(7,\)"):
        bn.batch_norm_train(x, np.ones(7, np.float32), axis=-1, backend=backend)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        bn.batch_norm_train(x, None, np.ones(7, np.float32), axis=-1, backend=backend)
    with pytest.raises(ValueError, match=r"mean must have shape \(3,\)"):
        bn.batch_norm_eval(x, mean=np.zeros(7, np.float32), var=np.ones(3, np.float32),
                           axis=-1, backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        bn.batch_norm_backward(x, x, np.ones(7, np.float32), mean=np.zeros(3, np.float32),
                               invstd=np.ones(3, np.float32), axis=-1, backend=backend)  # fmt: skip
    # and channel-first takes the weight of 7
    bn.batch_norm_train(x, np.ones(7, np.float32), axis=1, backend=backend)


def test_ghost_statistics_shape_is_per_group_of_samples():
    x = np.arange(4 * 7 * 3, dtype=np.float64).reshape(4, 7, 3)
    res = bn.batch_norm_train(x, ghost_batch_size=2, axis=-1)
    assert res.mean.shape == (2, 3)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 3\)"):
        bn.batch_norm_backward(x, x, mean=np.zeros((14, 3)), invstd=np.ones((2, 3)),
                               ghost_batch_size=2, axis=-1)  # fmt: skip
    with pytest.raises(ValueError, match="ghost_batch_size must divide the batch size N = 4"):
        bn.batch_norm_train(x, ghost_batch_size=7, axis=-1)


def test_training_needs_two_values_per_channel_channels_last():
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn.batch_norm_train(np.ones((1, 1, 3)), axis=-1)
    bn.batch_norm_train(np.arange(6.0).reshape(1, 2, 3), axis=-1)  # two values per channel


# -- the BatchNorm layer over axis=-1

F64 = np.float64


def bn_layer(C, rng, **kw):
    layer = nn.BatchNorm(C, dtype=F64, axis=-1, **kw)
    layer.params["weight"][...] = rng.uniform(0.5, 2, C)
    layer.params["bias"][...] = rng.normal(size=C)
    return layer


@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 3), (3, 2, 4, 3)], ids=str)
def test_batchnorm_layer_gradients(rng, shape):
    check_layer(bn_layer(3, rng), rng.normal(1.0, 2.0, shape), rng)


@pytest.mark.parametrize("shape", [(8, 3), (4, 5, 3), (6, 2, 2, 3)], ids=str)
def test_ghost_batchnorm_layer_gradients_and_observed_stats(rng, shape):
    layer = bn_layer(3, rng, ghost_batch_size=2)
    x = rng.normal(1.0, 2.0, shape)
    x[: shape[0] // 2] += 3.0
    seen = []
    layer.observers.append(type("O", (), {"update": lambda self, *a: seen.append(a)})())
    y = layer.forward(x, "train")
    ref = bn.batch_norm_train(to_cf(x), layer.params["weight"], layer.params["bias"],
                              ghost_batch_size=2, backend="reference")  # fmt: skip
    np.testing.assert_allclose(y, to_cl(ref.y), rtol=1e-10, atol=1e-12)
    ((mean, var, count),) = seen  # the whole batch's statistics, over the last axis
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, x.reshape(-1, 3).var(axis=0), rtol=1e-10)
    assert count == x.size // 3
    check_layer(layer, x, rng)


def test_frozen_and_renorm_layers_over_the_last_axis(rng):
    x = rng.normal(1.0, 2.0, (6, 4, 3))
    frozen = bn_layer(3, rng)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    frozen.freeze((mean, var))
    expected = (x - mean) / np.sqrt(var + 1e-5) * frozen.params["weight"] + frozen.params["bias"]
    np.testing.assert_allclose(frozen.forward(x, "train"), expected, rtol=1e-12)
    check_layer(frozen, x, rng)

    renorm = nn.BatchRenorm(3, dtype=F64, momentum=0.0, axis=-1)
    renorm.running_mean = np.array([3.0, -3.0, 0.0])
    renorm.running_sigma = np.array([3.0, 0.3, 1.0])  # Ioffe's moving sigma (eps inside)
    renorm.rmax, renorm.dmax = 1.05, 0.1
    check_layer(renorm, x, rng)
    mean, var = renorm.statistics  # the moving mu and sigma as BN's (mean, var)
    ref = bn.batch_renorm_train(to_cf(x), renorm.params["weight"], renorm.params["bias"],
                                running_mean=mean, running_var=var, rmax=1.05, dmax=0.1,
                                backend="reference")  # fmt: skip
    np.testing.assert_allclose(renorm.forward(x, "train"), to_cl(ref.y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 2, 3, 3), (6, 3)], ids=str)
def test_batchnorm_layer_eval_with_a_normaliser_gets_a_channel_first_view(rng, shape):
    layer = bn_layer(3, rng)
    x = rng.normal(2.0, 3.0, shape)
    seen = []

    def normaliser(h):
        seen.append(h.shape)
        axes = tuple(i for i in range(h.ndim) if i != 1)
        return h.mean(axis=axes), h.var(axis=axes)

    layer.eval_stats = normaliser
    y = layer.forward(x, "eval")
    assert seen == [(shape[0], shape[-1], *shape[1:-1])]  # (N, C, L) for 3-D input
    if len(shape) == 3:
        assert seen[0] == (shape[0], 3, shape[1])
    ref = bn.batch_norm_train(to_cf(x), layer.params["weight"], layer.params["bias"],
                              backend="reference")  # fmt: skip
    np.testing.assert_allclose(y, to_cl(ref.y), rtol=1e-10, atol=1e-12)
    # fixed statistics
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    layer.eval_stats = (mean, var)
    w, b = layer.params["weight"], layer.params["bias"]
    np.testing.assert_allclose(layer.forward(x, "eval"),
                               (x - mean) / np.sqrt(var + 1e-5) * w + b, rtol=1e-12)  # fmt: skip


def test_batchnorm_layer_axis_matches_channel_first_layer(rng):
    """The same layer over axis=-1 and over axis=1 on the transposed input: outputs,
    gradients and observed statistics agree."""
    x = rng.normal(1.0, 2.0, (4, 6, 3))
    dy = rng.normal(size=x.shape)
    cl, cf = bn_layer(3, np.random.default_rng(1)), nn.BatchNorm(3, dtype=F64)
    cf.params["weight"][...] = cl.params["weight"]
    cf.params["bias"][...] = cl.params["bias"]
    np.testing.assert_allclose(cl.forward(x, "train"), to_cl(cf.forward(to_cf(x), "train")),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    dx_cl = cl.backward(dy)
    dx_cf = cf.backward(to_cf(dy))
    np.testing.assert_allclose(dx_cl, to_cl(dx_cf), rtol=1e-10, atol=1e-12)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(cl.grads[name], cf.grads[name], rtol=1e-10, err_msg=name)
    for a, b in zip(cl.last_batch, cf.last_batch, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_functional_gradient_by_finite_differences(rng):
    """batch_norm_backward(axis=-1) is the gradient of batch_norm_train(axis=-1)."""
    x, weight, bias = cl_inputs(rng, (3, 4, 2), np.float64)
    g = rng.normal(size=x.shape)
    res = bn.batch_norm_train(x, weight, bias, axis=-1)
    grads = bn.batch_norm_backward(g, x, weight, mean=res.mean, invstd=res.invstd, axis=-1)

    def f():
        return float(np.sum(bn.batch_norm_train(x, weight, bias, axis=-1).y * g))

    np.testing.assert_allclose(grads.dx, numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dweight, numeric_grad(f, weight), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dbias, numeric_grad(f, bias), rtol=1e-6, atol=1e-7)
