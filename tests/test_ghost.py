"""Ghost batch norm (``ghost_batch_size``) on every backend against the float64 oracle."""

import numpy as np
import pytest
from helpers import OWN, backends_for, make_inputs, numeric_grad, tol
from hypothesis import given, settings
from hypothesis import strategies as st

import bnbench as bn
from bnbench import registry
from bnbench.kernels import OPERATIONS, supports

# (shape, ghost batch size): dense and spatial layouts, group counts below, at and above
# the thread count, ragged spatial sizes, G = N
CASES = [
    ((4, 3), 2),
    ((12, 5), 3),
    ((12, 5), 12),
    ((64, 7), 4),
    ((256, 33), 32),
    ((6, 2, 1), 2),
    ((8, 3, 5), 2),
    ((8, 3, 5), 4),
    ((9, 4, 7), 3),
    ((16, 5, 3, 2), 8),
    ((4, 2, 2, 3, 2), 2),
    ((32, 8, 33), 16),
]
DTYPES = [np.float32, np.float64]


def groups_of(a, G):
    return a.reshape(a.shape[0] // G, G, *a.shape[1:])


def check_ghost(backend, x, weight, bias, G, dy):
    ref = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend="reference")
    got = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend)
    rtol, atol = tol(x.dtype)
    for name in ("y", "mean", "var", "invstd"):
        r, g = getattr(ref, name), getattr(got, name)
        assert g.dtype == x.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=name)
    assert got.mean.shape == (x.shape[0] // G, x.shape[1])
    stats = {"mean": ref.mean, "invstd": ref.invstd, "ghost_batch_size": G}
    gr = bn.batch_norm_backward(dy, x, weight, **stats, backend="reference")
    gg = bn.batch_norm_backward(dy, x, weight, **stats, backend=backend)
    scale = max(1.0, float(np.abs(gr.dweight).max()), float(np.abs(gr.dbias).max()))
    for name in ("dx", "dweight", "dbias"):
        r, g = getattr(gr, name), getattr(gg, name)
        assert g.dtype == x.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale, err_msg=name)
    return got


@pytest.mark.parametrize("backend", backends_for("ghost"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "G"), CASES, ids=str)
def test_matches_reference(backend, dtype, shape, G, rng):
    x, weight, bias = make_inputs(rng, shape, dtype, loc=3.0, scale=2.0)
    dy = rng.standard_normal(shape).astype(dtype)
    check_ghost(backend, x, weight, bias, G, dy)


def test_the_oracle_is_plain_batch_norm_per_group(rng):
    """Each group of the reference is plain batch norm of that group alone."""
    x, weight, bias = make_inputs(rng, (12, 3, 5), np.float64, loc=1.0)
    dy = rng.standard_normal(x.shape)
    res = bn.batch_norm_train(x, weight, bias, ghost_batch_size=4, backend="reference")
    grads = bn.batch_norm_backward(
        dy, x, weight, mean=res.mean, invstd=res.invstd, ghost_batch_size=4, backend="reference"
    )
    dweight = np.zeros(3)
    for g in range(3):
        sl = slice(4 * g, 4 * g + 4)
        one = bn.batch_norm_train(x[sl], weight, bias, backend="reference")
        np.testing.assert_allclose(res.y[sl], one.y, rtol=1e-13, atol=1e-13)
        for name in ("mean", "var", "invstd"):
            np.testing.assert_allclose(getattr(res, name)[g], getattr(one, name), rtol=1e-13)
        back = bn.batch_norm_backward(
            dy[sl], x[sl], weight, mean=one.mean, invstd=one.invstd, backend="reference"
        )
        np.testing.assert_allclose(grads.dx[sl], back.dx, rtol=1e-12, atol=1e-13)
        dweight += back.dweight
    np.testing.assert_allclose(grads.dweight, dweight, rtol=1e-12)
    np.testing.assert_allclose(grads.dbias, dy.sum(axis=(0, 2)), rtol=1e-12)


@pytest.mark.parametrize("backend", ["reference", *OWN])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 5), (64, 33), (6, 3, 7), (16, 4, 3, 3)], ids=str)
def test_whole_batch_is_plain_batch_norm_bit_for_bit(backend, dtype, shape, rng):
    x, weight, bias = make_inputs(rng, shape, dtype, loc=2.0, scale=3.0)
    dy = rng.standard_normal(shape).astype(dtype)
    plain = bn.batch_norm_train(x, weight, bias, backend=backend)
    ghost = bn.batch_norm_train(x, weight, bias, ghost_batch_size=shape[0], backend=backend)
    np.testing.assert_array_equal(ghost.y, plain.y)
    for name in ("mean", "var", "invstd"):
        assert getattr(ghost, name).shape == (1, shape[1])
        np.testing.assert_array_equal(getattr(ghost, name)[0], getattr(plain, name))
    gp = bn.batch_norm_backward(dy, x, weight, mean=plain.mean, invstd=plain.invstd,
                                backend=backend)  # fmt: skip
    gg = bn.batch_norm_backward(dy, x, weight, mean=ghost.mean, invstd=ghost.invstd,
                                ghost_batch_size=shape[0], backend=backend)  # fmt: skip
    for a, b in zip(gg, gp, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", OWN)
def test_groups_are_independent(backend, rng):
    """Changing one group's samples leaves every other group's output unchanged."""
    x, weight, bias = make_inputs(rng, (12, 4, 6), np.float32)
    a = bn.batch_norm_train(x, weight, bias, ghost_batch_size=3, backend=backend)
    x2 = x.copy()
    x2[3:6] = x2[3:6] * 10 + 100
    b = bn.batch_norm_train(x2, weight, bias, ghost_batch_size=3, backend=backend)
    keep = np.r_[0:3, 6:12]
    np.testing.assert_array_equal(a.y[keep], b.y[keep])
    np.testing.assert_array_equal(a.mean[[0, 2, 3]], b.mean[[0, 2, 3]])
    assert np.all(b.mean[1] > 50)


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize("shape", [(4096, 64), (64, 8, 300)], ids=str)
def test_deterministic(backend, shape, rng):
    x, weight, bias = make_inputs(rng, shape, np.float32, loc=100.0)
    dy = rng.standard_normal(shape).astype(np.float32)
    runs = [bn.batch_norm_train(x, weight, bias, ghost_batch_size=16, backend=backend)
            for _ in range(2)]  # fmt: skip
    for u, v in zip(*runs, strict=True):
        np.testing.assert_array_equal(u, v)
    stats = {"mean": runs[0].mean, "invstd": runs[0].invstd, "ghost_batch_size": 16}
    grads = [bn.batch_norm_backward(dy, x, weight, **stats, backend=backend) for _ in range(2)]
    for u, v in zip(*grads, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("backend", OWN)
def test_nan_stays_in_its_group_and_channel(backend, rng):
    x, weight, bias = make_inputs(rng, (8, 3, 4), np.float32)
    x[5, 1, 2] = np.nan
    res = bn.batch_norm_train(x, weight, bias, ghost_batch_size=4, backend=backend)
    assert np.isnan(res.mean[1, 1]) and np.all(np.isnan(res.y[4:, 1]))
    assert np.all(np.isfinite(res.y[:4])) and np.all(np.isfinite(res.y[4:, [0, 2]]))


@pytest.mark.parametrize("backend", OWN)
@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 9),
    G=st.integers(2, 6),
    C=st.integers(1, 6),
    spatial=st.lists(st.integers(1, 5), max_size=2),
    dtype=st.sampled_from(DTYPES),
    loc=st.sampled_from([0.0, -7.5, 1e3]),
    seed=st.integers(0, 2**31),
)
def test_matches_reference_property(backend, groups, G, C, spatial, dtype, loc, seed):
    rng = np.random.default_rng(seed)
    shape = (groups * G, C, *spatial)
    x, weight, bias = make_inputs(rng, shape, dtype, loc=loc)
    check_ghost(backend, x, weight, bias, G, rng.standard_normal(shape).astype(dtype))


def ghost_loss(x, weight, bias, g, G, backend):
    y = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend).y
    return float(np.sum(y * g))


@pytest.mark.parametrize("backend", ["reference", *OWN])
@pytest.mark.parametrize(("shape", "G"), [((6, 3), 2), ((4, 2, 3), 2), ((6, 2, 2, 2), 3)],
                         ids=str)  # fmt: skip
def test_backward_matches_finite_differences(backend, shape, G, rng):
    x, weight, bias = make_inputs(rng, shape, np.float64, loc=1.0, scale=2.0)
    g = rng.standard_normal(shape)
    res = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend)
    grads = bn.batch_norm_backward(g, x, weight, mean=res.mean, invstd=res.invstd,
                                   ghost_batch_size=G, backend=backend)  # fmt: skip

    def f():
        return ghost_loss(x, weight, bias, g, G, backend)

    np.testing.assert_allclose(grads.dx, numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dweight, numeric_grad(f, weight), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dbias, numeric_grad(f, bias), rtol=1e-6, atol=1e-7)


# -- running statistics: the groups' exact aggregate


@pytest.mark.parametrize("backend", OWN)
@pytest.mark.parametrize(("shape", "G"), [((64, 5), 8), ((12, 3, 7), 2)], ids=str)
def test_merged_group_stats_are_the_whole_batch_stats(backend, shape, G, rng):
    x, _, _ = make_inputs(rng, shape, np.float64, loc=4.0, scale=3.0)
    x[: shape[0] // 2] += 5.0  # groups that differ: the variance of their means counts
    ghost = bn.batch_norm_train(x, ghost_batch_size=G, backend=backend)
    plain = bn.batch_norm_train(x, backend="reference")
    count = G * (x.size // (shape[0] * shape[1]))
    merged = bn.merge_group_stats(ghost.mean, ghost.var, count=count)
    np.testing.assert_allclose(merged.mean, plain.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.var, plain.var, rtol=1e-12)
    assert merged.count == x.size // shape[1] and merged.mean.dtype == np.float64
    # Keras' virtual_batch_size average (mean of the group variances) misses the spread
    # of the group means
    assert np.all(ghost.var.mean(axis=0) < 0.9 * plain.var)
    rm, rv = np.zeros((2, shape[1])), np.ones((2, shape[1]))
    bn.update_running_stats(rm, rv, **merged._asdict(), momenta=[0.1, 1.0])
    np.testing.assert_allclose(rv[1], plain.var * merged.count / (merged.count - 1))


def test_merge_group_stats_bad_input():
    with pytest.raises(ValueError, match=r"mean must have shape \(groups, C\)"):
        bn.merge_group_stats(np.zeros(3), np.ones(3), count=4)
    with pytest.raises(ValueError, match=r"var must have the shape of mean \(2, 3\)"):
        bn.merge_group_stats(np.zeros((2, 3)), np.ones((3, 2)), count=4)
    with pytest.raises(ValueError, match=r"count must be a positive integer"):
        bn.merge_group_stats(np.zeros((2, 3)), np.ones((2, 3)), count=0)


# -- contract and bad input


@pytest.mark.parametrize("backend", sorted(registry.BACKENDS))
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_bnbench_backend_has_every_operation(backend, operation):
    try:
        impl = registry.get_backend(backend)
    except registry.BackendUnavailable as err:
        pytest.skip(str(err))
    assert supports(impl, operation)


X = np.ones((8, 3, 5), np.float32)


@pytest.mark.parametrize(
    ("G", "match"),
    [
        (3, r"ghost_batch_size must divide the batch size N = 8 \(groups of equal size\), got 3"),
        (16, r"ghost_batch_size must divide the batch size N = 8"),
        (1, r"ghost_batch_size must be at least 2, got 1"),
        (0, r"ghost_batch_size must be at least 2, got 0"),
        (-4, r"ghost_batch_size must be at least 2, got -4"),
        (2.0, r"ghost_batch_size must be an integer .* got 2.0 \(float\)"),
        ("4", r"ghost_batch_size must be an integer .* got '4' \(str\)"),
        (True, r"ghost_batch_size must be an integer .* got True \(bool\)"),
    ],
)  # fmt: skip
def test_bad_ghost_batch_size(G, match):
    with pytest.raises(ValueError, match=match):
        bn.batch_norm_train(X, ghost_batch_size=G)
    with pytest.raises(ValueError, match=match):
        bn.batch_norm_backward(X, X, mean=np.zeros((2, 3), np.float32),
                               invstd=np.ones((2, 3), np.float32), ghost_batch_size=G)  # fmt: skip


def test_numpy_integer_ghost_batch_size_is_accepted():
    res = bn.batch_norm_train(X + np.arange(8.0, dtype=np.float32)[:, None, None],
                              ghost_batch_size=np.int64(4))  # fmt: skip
    assert res.mean.shape == (2, 3)


def test_backward_statistics_must_be_per_group():
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 3\) \(one row per ghost"):
        bn.batch_norm_backward(X, X, mean=np.zeros(3, np.float32),
                               invstd=np.ones((2, 3), np.float32), ghost_batch_size=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"invstd must have shape \(2, 3\).*got \(4, 3\)"):
        bn.batch_norm_backward(X, X, mean=np.zeros((2, 3), np.float32),
                               invstd=np.ones((4, 3), np.float32), ghost_batch_size=4)  # fmt: skip


@pytest.mark.parametrize("peer", sorted(registry.PEERS))
def test_a_peer_without_ghost_kernel_is_a_clear_error(peer):
    try:
        impl = registry.get_backend(peer)
    except registry.BackendUnavailable as err:
        pytest.skip(str(err))
    if supports(impl, "ghost"):
        pytest.skip(f"{peer} has a ghost kernel")
    with pytest.raises(ValueError, match=rf"backend '{peer}' has no ghost kernel .*: .*cpu"):
        bn.batch_norm_train(X, ghost_batch_size=4, backend=peer)
