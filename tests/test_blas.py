"""bnbench.nn.blas: ``matmul`` and ``matmul_tn`` against a float64 product, on the single
BLAS call and on the split over Numba's threads, and the BLAS thread count around it."""

import numba
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from bnbench.nn import blas

DTYPES = [np.float32, np.float64]
# (M, K, N): tiny, one row, fewer rows than threads, ragged, above the default threshold
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 4, 2), (17, 9, 13), (128, 100, 100), (513, 64, 33),
          (2048, 33, 40)]  # fmt: skip
PATHS = {"serial": 1 << 62, "split": 0}


def bound(a, b, dtype):
    """A rounding bound of ``a @ b`` elementwise: ``K * eps * |a| @ |b|`` (plus a floor)."""
    eps = np.finfo(dtype).eps
    K = a.shape[1]
    return 4 * K * eps * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)) + 1e-300


def check_product(got, a, b, dtype):
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert got.dtype == dtype and got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound(a, b, dtype)), float((err / bound(a, b, dtype)).max())


@pytest.fixture(params=list(PATHS), ids=list(PATHS))
def path(request, monkeypatch):
    """Force one path; count the calls that reach the split."""
    monkeypatch.setattr(blas, "PARALLEL_MACS", PATHS[request.param])
    calls = []
    real = blas.run_parallel

    def counting(kernel, *args):
        calls.append(kernel)
        return real(kernel, *args)

    monkeypatch.setattr(blas, "run_parallel", counting)
    return request.param, calls


def expect_split(path, rows):
    name, calls = path
    split = name == "split" and rows >= 2 and numba.get_num_threads() > 1
    assert len(calls) == (1 if split else 0), (name, rows, calls)
    calls.clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("M", "K", "N"), SHAPES, ids=str)
def test_matmul(M, K, N, dtype, path, rng):
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    check_product(blas.matmul(a, b), a, b, dtype)
    expect_split(path, M)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("M", "K", "N"), SHAPES, ids=str)
def test_matmul_tn(M, K, N, dtype, path, rng):
    """``a.T @ b`` with ``a`` ``(M, K)``, ``b`` ``(M, N)``: the split is over M."""
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((M, N)).astype(dtype)
    check_product(blas.matmul_tn(a, b), a.T, b, dtype)
    expect_split(path, M)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_operands(dtype, path, rng):
    """A transposed weight (Fortran order), strided slices, a transposed ``a``."""
    M, K, N = 300, 48, 40
    a = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype)
    check_product(blas.matmul(a, W.T), a, W.T, dtype)  # b F-contiguous
    expect_split(path, M)
    big = rng.standard_normal((2 * K, 3 * N)).astype(dtype)
    b = big[::2, ::3]  # neither C- nor F-contiguous
    assert not (b.flags.c_contiguous or b.flags.f_contiguous)
    check_product(blas.matmul(a, b), a, b, dtype)
    expect_split(path, M)
    a_strided = rng.standard_normal((M, 2 * K)).astype(dtype)[:, 1::2]
    check_product(blas.matmul(a_strided, b), a_strided, b, dtype)
    expect_split(path, M)
    a_t = np.ascontiguousarray(a.T).T  # Fortran order
    check_product(blas.matmul(a_t, W.T), a_t, W.T, dtype)
    expect_split(path, M)
    # a.T @ b with strided rows
    dy = rng.standard_normal((2 * M, N)).astype(dtype)[::2]
    x = rng.standard_normal((M, 3 * K)).astype(dtype)[:, ::3]
    check_product(blas.matmul_tn(dy, x), dy.T, x, dtype)
    expect_split(path, M)
    # and with the F-ordered a
    b2 = rng.standard_normal((M, N)).astype(dtype)
    check_product(blas.matmul_tn(a_t, b2), a_t.T, b2, dtype)
    expect_split(path, M)


def test_split_and_serial_paths_agree(monkeypatch, rng):
    a = rng.standard_normal((1000, 64)).astype(np.float32)
    b = rng.standard_normal((64, 50)).astype(np.float32)
    dy = rng.standard_normal((1000, 50)).astype(np.float32)
    monkeypatch.setattr(blas, "PARALLEL_MACS", 1 << 62)
    serial, serial_tn = blas.matmul(a, b), blas.matmul_tn(dy, a)
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0)
    split, split_tn = blas.matmul(a, b), blas.matmul_tn(dy, a)
    # the split computes the same rows in the same way: only the blocking of a.T @ b
    # (a sum of per-block partial products) may round differently
    np.testing.assert_allclose(split, serial, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split_tn, serial_tn, rtol=1e-4, atol=1e-4)


def test_default_threshold_picks_the_path(monkeypatch, rng):
    """Below :data:`PARALLEL_MACS` multiply-adds one BLAS call, from it the split
    (``a.T @ b``: from twice it)."""
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: never split")
    calls = []
    real = blas.run_parallel
    monkeypatch.setattr(blas, "run_parallel", lambda k, *a: (calls.append(k), real(k, *a))[1])
    monkeypatch.setattr(blas, "PARALLEL_MACS", 1000)
    x = rng.standard_normal((10, 10))
    blas.matmul(x, rng.standard_normal((10, 9)))  # 900 < 1000
    assert calls == []
    blas.matmul(x, rng.standard_normal((10, 10)))  # 1000
    assert len(calls) == 1
    blas.matmul_tn(x, rng.standard_normal((10, 19)))  # 1900 // 2 < 1000
    assert len(calls) == 1
    blas.matmul_tn(x, rng.standard_normal((10, 20)))  # 2000 // 2
    assert len(calls) == 2


def test_one_numba_thread_never_splits(monkeypatch, rng):
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0)
    monkeypatch.setattr(blas, "run_parallel", lambda *a: pytest.fail("split with one thread"))
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        a, b = rng.standard_normal((64, 8)), rng.standard_normal((8, 5))
        np.testing.assert_allclose(blas.matmul(a, b), a @ b, rtol=1e-12)
        np.testing.assert_allclose(blas.matmul_tn(a, a), a.T @ a, rtol=1e-12)
    finally:
        numba.set_num_threads(before)


# -- the BLAS thread count


def scipy_blas():
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    scipy_libs = [lib for lib in libs if "scipy.libs" in lib.filepath]
    if not scipy_libs:
        pytest.skip(f"no BLAS from scipy.libs among {[lib.filepath for lib in libs]}")
    return scipy_libs


@pytest.mark.parametrize("threads", [None, 2, 1])
def test_blas_thread_count_is_restored_after_a_split_call(threads, monkeypatch, rng):
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: never split")
    monkeypatch.setattr(blas, "PARALLEL_MACS", 0)
    libs = scipy_blas()
    original = [lib.num_threads for lib in libs]
    try:
        if threads is not None:
            for lib in libs:
                lib.set_num_threads(threads)
        before = [lib.num_threads for lib in ThreadpoolController().select(user_api="blas")
                  .lib_controllers]  # fmt: skip
        a, b = rng.standard_normal((256, 32)), rng.standard_normal((32, 16))
        np.testing.assert_allclose(blas.matmul(a, b), a @ b, rtol=1e-12)
        np.testing.assert_allclose(blas.matmul_tn(a, a), a.T @ a, rtol=1e-12)
        after = [lib.num_threads for lib in ThreadpoolController().select(user_api="blas")
                 .lib_controllers]  # fmt: skip
        assert after == before
        assert [lib.num_threads for lib in scipy_blas()] == [threads or n for n in original]
    finally:
        for lib, n in zip(libs, original, strict=True):
            lib.set_num_threads(n)


def test_blas_is_single_threaded_during_the_split_and_restored_after_an_error():
    libs = scipy_blas()
    original = [lib.num_threads for lib in libs]
    seen = []

    def kernel(*args):
        seen.append([lib.num_threads for lib in scipy_blas()])
        raise RuntimeError("boom")

    try:
        for lib in libs:
            lib.set_num_threads(2)
        with pytest.raises(RuntimeError, match="boom"):
            blas.run_parallel(kernel, 1, 2)
        assert seen == [[1] * len(libs)]
        assert [lib.num_threads for lib in scipy_blas()] == [2] * len(libs)
    finally:
        for lib, n in zip(libs, original, strict=True):
            lib.set_num_threads(n)
