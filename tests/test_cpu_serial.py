"""The CPU backend's serial twins (inputs below ``cpu.SERIAL_BELOW`` elements): against
the float64 oracle, and against the parallel kernels on the same input.

tests/conftest.py sets ``SERIAL_BELOW = 0`` for every test (parallel kernels); the tests
here raise it so that every kernel call takes the serial twin, and check that it does."""

import numba
import numpy as np
import pytest
from helpers import make_inputs, tol

import bnbench as bn
from bnbench.kernels import cpu

DTYPES = [np.float32, np.float64]
SHAPES = [(2, 1), (5, 3), (64, 7), (1000, 7), (256, 33), (3, 4, 1), (3, 4, 5), (7, 5, 13),
          (16, 8, 33), (4, 3, 5, 6)]  # fmt: skip
GHOST = [((4, 3), 2), ((12, 5), 3), ((64, 7), 4), ((256, 33), 32), ((6, 2, 1), 2),
         ((8, 3, 5), 2), ((9, 4, 7), 3), ((16, 5, 3, 2), 8), ((12, 5), 12)]  # fmt: skip
CLIPS = [(1.5, 0.3), (100.0, 100.0), (1.0, 0.0)]

KERNELS = {name: obj for name, obj in vars(cpu).items() if isinstance(obj, cpu.ParallelKernel)}


def thresholds(patcher, size):
    """Both size thresholds (reductions and elementwise passes) set to ``size``."""
    patcher.setattr(cpu, "SERIAL_BELOW", size)
    patcher.setattr(cpu, "ELEMENTWISE_SERIAL_BELOW", size)


def forbid(monkeypatch, which):
    """Make every ``which`` (``"parallel"`` or ``"serial"``) dispatcher fail if called."""
    for name, obj in KERNELS.items():

        def fail(*args, _name=name):
            raise AssertionError(f"{which} {_name} called")

        monkeypatch.setattr(obj, which, fail)


@pytest.fixture
def serial(monkeypatch):
    """Serial twins everywhere; a parallel kernel call fails the test."""
    thresholds(monkeypatch, 1 << 40)
    forbid(monkeypatch, "parallel")


def run_all(x, weight, bias, dy, G, rm, rv, rmax, dmax):
    """Every operation of the CPU backend on one input, as a dict of arrays."""
    out = {}
    res = bn.batch_norm_train(x, weight, bias, backend="cpu")
    out.update({f"train.{k}": v for k, v in res._asdict().items()})
    out["eval"] = bn.batch_norm_eval(x, weight, bias, mean=res.mean, var=res.var, backend="cpu")
    back = bn.batch_norm_backward(dy, x, weight, mean=res.mean, invstd=res.invstd, backend="cpu")
    out.update({f"backward.{k}": v for k, v in back._asdict().items()})
    if G is not None:
        gh = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend="cpu")
        out.update({f"ghost.{k}": v for k, v in gh._asdict().items()})
        gb = bn.batch_norm_backward(dy, x, weight, mean=gh.mean, invstd=gh.invstd,
                                    ghost_batch_size=G, backend="cpu")  # fmt: skip
        out.update({f"ghost_backward.{k}": v for k, v in gb._asdict().items()})
    clip = {"running_mean": rm, "running_var": rv, "rmax": rmax, "dmax": dmax}
    rn = bn.batch_renorm_train(x, weight, bias, **clip, backend="cpu")
    out.update({f"renorm.{k}": v for k, v in rn._asdict().items()})
    rb = bn.batch_renorm_backward(dy, x, weight, mean=rn.mean, invstd=rn.invstd, r=rn.r,
                                  d=rn.d, backend="cpu")  # fmt: skip
    out.update({f"renorm_backward.{k}": v for k, v in rb._asdict().items()})
    return out


def inputs(rng, shape, dtype):
    x, weight, bias = make_inputs(rng, shape, dtype, loc=3.0, scale=2.0)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    axes = tuple(i for i in range(x.ndim) if i != 1)
    rm = (x.astype(np.float64).mean(axis=axes) + rng.uniform(-2, 2, C)).astype(dtype)
    rv = (x.astype(np.float64).var(axis=axes) * rng.uniform(0.2, 5, C)).astype(dtype)
    return x, weight, bias, dy, rm, rv


def reference(x, weight, bias, dy, G, rm, rv, rmax, dmax):
    """The oracle's results for what :func:`run_all` computes, on the same statistics
    (the backward passes take the oracle's forward statistics)."""
    out = {}
    ref = "reference"
    res = bn.batch_norm_train(x, weight, bias, backend=ref)
    out.update({f"train.{k}": v for k, v in res._asdict().items()})
    out["eval"] = bn.batch_norm_eval(x, weight, bias, mean=res.mean, var=res.var, backend=ref)
    back = bn.batch_norm_backward(dy, x, weight, mean=res.mean, invstd=res.invstd, backend=ref)
    out.update({f"backward.{k}": v for k, v in back._asdict().items()})
    if G is not None:
        gh = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=ref)
        out.update({f"ghost.{k}": v for k, v in gh._asdict().items()})
        gb = bn.batch_norm_backward(dy, x, weight, mean=gh.mean, invstd=gh.invstd,
                                    ghost_batch_size=G, backend=ref)  # fmt: skip
        out.update({f"ghost_backward.{k}": v for k, v in gb._asdict().items()})
    clip = {"running_mean": rm, "running_var": rv, "rmax": rmax, "dmax": dmax}
    rn = bn.batch_renorm_train(x, weight, bias, **clip, backend=ref)
    out.update({f"renorm.{k}": v for k, v in rn._asdict().items()})
    rb = bn.batch_renorm_backward(dy, x, weight, mean=rn.mean, invstd=rn.invstd, r=rn.r,
                                  d=rn.d, backend=ref)  # fmt: skip
    out.update({f"renorm_backward.{k}": v for k, v in rb._asdict().items()})
    return out


def check_against_reference(got, ref, dtype):
    rtol, atol = tol(dtype)
    assert got.keys() == ref.keys()
    for op in {k.split(".")[0] for k in ref}:
        names = [k for k in ref if k.split(".")[0] == op]
        scale = max([1.0] + [float(np.abs(ref[k]).max()) for k in names if "dweight" in k
                             or "dbias" in k])  # fmt: skip
        for k in names:
            assert got[k].dtype == dtype and got[k].shape == ref[k].shape, k
            np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=atol * scale, err_msg=k)


def ghost_size(shape):
    return {s: G for s, G in GHOST}.get(shape)


@pytest.mark.usefixtures("serial")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rmax", "dmax"), CLIPS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_serial_matches_reference(shape, rmax, dmax, dtype, rng):
    x, weight, bias, dy, rm, rv = inputs(rng, shape, dtype)
    G = 2 if shape[0] % 2 == 0 and shape[0] > 2 else None
    # each backward pass on its own backend's forward statistics
    ref = reference(x, weight, bias, dy, G, rm, rv, rmax, dmax)
    check_against_reference(run_all(x, weight, bias, dy, G, rm, rv, rmax, dmax), ref, dtype)
    # and the backward pass on the oracle's statistics
    rtol, atol = tol(dtype)
    back = bn.batch_norm_backward(dy, x, weight, mean=ref["train.mean"],
                                  invstd=ref["train.invstd"], backend="cpu")  # fmt: skip
    for k in ("dx", "dweight", "dbias"):
        scale = max(1.0, float(np.abs(ref["backward.dweight"]).max()),
                    float(np.abs(ref["backward.dbias"]).max()))  # fmt: skip
        np.testing.assert_allclose(getattr(back, k), ref[f"backward.{k}"], rtol=rtol,
                                   atol=atol * scale, err_msg=k)  # fmt: skip


@pytest.mark.usefixtures("serial")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "G"), GHOST, ids=str)
def test_serial_ghost_matches_reference(shape, G, dtype, rng):
    x, weight, bias, dy, _, _ = inputs(rng, shape, dtype)
    x += np.arange(shape[0]).reshape(-1, *([1] * (x.ndim - 1))).astype(dtype)  # groups differ
    ref = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend="reference")
    got = bn.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend="cpu")
    rtol, atol = tol(dtype)
    for k in ref._fields:
        g, r = getattr(got, k), getattr(ref, k)
        assert g.dtype == dtype and g.shape == r.shape, k
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=k)
    stats = {"mean": ref.mean, "invstd": ref.invstd, "ghost_batch_size": G}
    gr = bn.batch_norm_backward(dy, x, weight, **stats, backend="reference")
    gg = bn.batch_norm_backward(dy, x, weight, **stats, backend="cpu")
    scale = max(1.0, float(np.abs(gr.dweight).max()), float(np.abs(gr.dbias).max()))
    for k in gr._fields:
        np.testing.assert_allclose(getattr(gg, k), getattr(gr, k), rtol=rtol,
                                   atol=atol * scale, err_msg=k)  # fmt: skip


@pytest.mark.usefixtures("serial")
@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 3), (3, 5, 4, 6)], ids=str)
def test_serial_channels_last(shape, rng):
    """Channels-last input takes the serial dense kernels: the oracle's channel-first
    result of the transposed input."""
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    C = shape[-1]
    w, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    got = bn.batch_norm_train(x, w, b, axis=-1, backend="cpu")
    ref = bn.batch_norm_train(np.ascontiguousarray(np.moveaxis(x, -1, 1)), w, b,
                              backend="reference")  # fmt: skip
    np.testing.assert_allclose(got.y, np.moveaxis(ref.y, 1, -1), *tol(np.float32))
    np.testing.assert_allclose(got.var, ref.var, *tol(np.float32))


def close_to_rounding(a, b, dtype, name):
    """Equal up to a few units in the last place of the array's largest value."""
    eps = np.finfo(dtype).eps
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=64 * eps, atol=64 * eps * scale, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rmax", "dmax"), [(1.5, 0.3), (1.0, 0.0)], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_serial_and_parallel_agree(shape, rmax, dmax, dtype, rng, monkeypatch):
    x, weight, bias, dy, rm, rv = inputs(rng, shape, dtype)
    G = ghost_size(shape) or (2 if shape[0] % 2 == 0 and shape[0] > 2 else None)
    args = (x, weight, bias, dy, G, rm, rv, rmax, dmax)
    with monkeypatch.context() as m:
        thresholds(m, 1 << 40)
        forbid(m, "parallel")
        serial = run_all(*args)
    with monkeypatch.context() as m:
        thresholds(m, 0)
        if numba.get_num_threads() > 1:
            forbid(m, "serial")
        parallel = run_all(*args)
    assert serial.keys() == parallel.keys()
    for k in serial:
        assert serial[k].dtype == parallel[k].dtype == dtype, k
        close_to_rounding(serial[k], parallel[k], dtype, k)
    # both are deterministic
    with monkeypatch.context() as m:
        thresholds(m, 1 << 40)
        again = run_all(*args)
    for k in serial:
        np.testing.assert_array_equal(again[k], serial[k], err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_size_threshold_picks_the_twin(dtype, rng, monkeypatch):
    """Below SERIAL_BELOW elements the serial twin, from it the parallel kernel."""
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: the serial twin always")
    x, weight, bias = make_inputs(rng, (8, 4, 5), dtype)  # 160 elements
    calls = []
    for name, obj in KERNELS.items():
        for which in ("serial", "parallel"):
            real = getattr(obj, which)

            def spy(*args, _real=real, _tag=(name, which)):
                calls.append(_tag)
                return _real(*args)

            monkeypatch.setattr(obj, which, spy)
    thresholds(monkeypatch, 161)
    bn.batch_norm_train(x, weight, bias, backend="cpu")
    assert calls and {w for _, w in calls} == {"serial"}, calls
    calls.clear()
    thresholds(monkeypatch, 160)
    bn.batch_norm_train(x, weight, bias, backend="cpu")
    assert calls and {w for _, w in calls} == {"parallel"}, calls
    assert cpu.thread_count(x) == numba.get_num_threads()
    thresholds(monkeypatch, 161)
    assert cpu.thread_count(x) == 1


def test_conftest_runs_the_parallel_kernels():
    assert cpu.SERIAL_BELOW == cpu.ELEMENTWISE_SERIAL_BELOW == 0


# -- the twins are distinct dispatchers


def test_there_are_parallel_kernels_with_twins():
    assert {"_dense_moments", "_spatial_moments", "_dense_affine", "_spatial_affine",
            "_dense_grad_sums", "_spatial_grad_sums", "_dense_grad_input",
            "_spatial_grad_input", "_dense_ghost_train", "_dense_ghost_backward"} <= set(KERNELS)  # fmt: skip


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_serial_and_parallel_are_different_dispatchers(name):
    obj = KERNELS[name]
    assert isinstance(obj.serial, numba.core.registry.CPUDispatcher)
    assert isinstance(obj.parallel, numba.core.registry.CPUDispatcher)
    assert obj.serial is not obj.parallel
    assert obj.serial.py_func is not obj.parallel.py_func
    assert obj.parallel.py_func.__qualname__ == name
    assert obj.serial.py_func.__qualname__ == name + "_twin"
    assert obj.serial.py_func.__code__ is obj.parallel.py_func.__code__  # the same code
    assert obj.parallel.targetoptions.get("parallel") is True
    assert not obj.serial.targetoptions.get("parallel", False)
    check_cache_keys_differ(obj.serial, obj.parallel)


def test_affine_coefficient_twins_are_different_dispatchers(rng):
    """The fix in this commit: the parallel and serial coefficient loops had one cache
    entry (Numba keys its cache by qualified name), so one loaded the other's code."""
    par, ser = cpu._affine_coefficients_parallel, cpu._affine_coefficients_serial
    assert par is not ser
    assert par.py_func.__qualname__ != ser.py_func.__qualname__
    assert par.targetoptions.get("parallel") is True
    assert not ser.targetoptions.get("parallel", False)
    check_cache_keys_differ(par, ser)
    groups, C = 3, 5
    w, b = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    mean, var = rng.standard_normal((groups, C)), rng.uniform(0.1, 3, (groups, C))
    for u, v in zip(par(w, b, mean, var, 1e-5), ser(w, b, mean, var, 1e-5), strict=True):
        np.testing.assert_array_equal(u, v)
    invstd = 1 / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(ser(w, b, mean, var, 1e-5)[0], w * invstd, rtol=1e-15)


def check_cache_keys_differ(a, b):
    """Numba's on-disk cache index file of each dispatcher (where caching is on)."""
    names = []
    for d in (a, b):
        cache_file = getattr(getattr(d, "_cache", None), "_cache_file", None)
        names.append(getattr(cache_file, "_index_name", None))
    if None not in names:
        assert names[0] != names[1], names
