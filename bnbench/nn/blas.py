"""Matrix products for the layers, parallel over Numba's threads when they are big.

A BLAS library running its own threads next to Numba's parallel kernels oversubscribes
the cores: both thread pools spin while waiting, and on 2 cores a training step that
takes 0.5 ms took 20-70 ms with OpenBLAS at 2 threads beside Numba's (measured; this is
why :func:`bnbench.train.run` pins NumPy's BLAS to one thread). So the thread policy goes
by size instead, all on Numba's one pool:

* a product of fewer than :data:`PARALLEL_MACS` multiply-adds (twice that for
  ``a.T @ b``) runs as one NumPy BLAS call: single-threaded where the caller pins NumPy's
  BLAS to one thread, as :func:`bnbench.train.run`, the step timing and the benchmarks
  do (unpinned, OpenBLAS is single-threaded below 262144 and threads above it);
* a bigger one is split into one block of rows (of the output, or of the shared axis for
  ``a.T @ b``) per Numba thread, each block one single-threaded BLAS call from inside a
  ``prange``. Numba reaches BLAS through SciPy's bundled OpenBLAS; that library is held
  at one thread for the duration of the call.
"""

import threading

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS Numba calls, for threadpoolctl)
from numba import prange
from threadpoolctl import ThreadpoolController

from .. import config
from ..kernels.cpu import elementwise_kernel
from ..kernels.scalar import relu as _relu_value

#: Multiply-adds from which ``a @ b`` is split over Numba's threads (``a.T @ b``: twice
#: this). float32, 2 threads, microseconds serial / split: (128, 100) @ (100, 100) 24.0 /
#: 23.4, (512, 100) @ (100, 100) 88 / 60; its ``a.T @ b`` 24 / 32 and 90 / 71.
PARALLEL_MACS = 1 << 20

_PJIT = {"parallel": True, "cache": config.CACHE}


@numba.njit(**_PJIT)
def _rows_product(a, b, out, nchunks):
    """``out = a @ b``, a block of rows of ``a`` per chunk."""
    M = a.shape[0]
    for k in prange(nchunks):
        lo, hi = k * M // nchunks, (k + 1) * M // nchunks
        out[lo:hi] = np.dot(a[lo:hi], b)


@numba.njit(**_PJIT)
def _shared_rows_product(a, b, partial, nchunks):
    """``partial[k] = a[rows_k].T @ b[rows_k]``: ``a.T @ b`` is their sum."""
    M = a.shape[0]
    for k in prange(nchunks):
        lo, hi = k * M // nchunks, (k + 1) * M // nchunks
        partial[k] = np.dot(a[lo:hi].T, b[lo:hi])


@numba.njit(**_PJIT)
def _two_products(a1, b1, out1, a2, b2, out2):
    """``out1 = a1 @ b1`` and ``out2 = a2 @ b2``, one per thread."""
    for k in prange(2):
        if k == 0:
            out1[...] = np.dot(a1, b1)
        else:
            out2[...] = np.dot(a2, b2)


_numba_blas = None
_lock = threading.Lock()


def _single_threaded_blas():
    """threadpoolctl controllers of the BLAS library Numba's ``np.dot`` calls."""
    global _numba_blas
    if _numba_blas is None:
        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        _numba_blas = [lib for lib in libs if "scipy.libs" in lib.filepath] or libs
    return _numba_blas


def run_parallel(kernel, *args):
    """Run a parallel ``kernel`` with Numba's BLAS held at one thread (no oversubscription)."""
    libs = _single_threaded_blas()
    with _lock:
        before = [lib.num_threads for lib in libs]
        for lib in libs:
            lib.set_num_threads(1)
        try:
            kernel(*args)
        finally:
            for lib, n in zip(libs, before, strict=True):
                lib.set_num_threads(n)


def _chunks(rows, macs):
    threads = numba.get_num_threads()
    if threads == 1 or macs < PARALLEL_MACS:
        return 1
    return min(threads, rows)


def matmul(a, b):
    """``a @ b`` for 2-D ``a`` ``(M, K)`` and ``b`` ``(K, N)`` of one float dtype."""
    nchunks = _chunks(a.shape[0], a.shape[0] * a.shape[1] * b.shape[1])
    if nchunks == 1:
        return a @ b
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    run_parallel(_rows_product, np.ascontiguousarray(a), b, out, nchunks)
    return out


def matmul_tn(a, b):
    """``a.T @ b`` for 2-D ``a`` ``(M, K)`` and ``b`` ``(M, N)``: a reduction over the
    shared rows (a weight gradient), split over them."""
    nchunks = _chunks(a.shape[0], a.shape[0] * a.shape[1] * b.shape[1] // 2)
    if nchunks == 1:
        return a.T @ b
    partial = np.empty((nchunks, a.shape[1], b.shape[1]), a.dtype)
    run_parallel(_shared_rows_product, np.ascontiguousarray(a), np.ascontiguousarray(b),
              partial, nchunks)  # fmt: skip
    return partial.sum(axis=0)


def linear_gradients(dy, x, w):
    """``(dy.T @ x, dy @ w)``: the weight and input gradients of ``y = x @ w.T`` (``dy``
    ``(M, N)``, ``x`` ``(M, K)``, ``w`` ``(N, K)``). Each product runs on a thread of its
    own when they are big enough to split and Numba has two threads or more; otherwise as
    :func:`matmul_tn` and :func:`matmul`. For a linear layer's products (float32, 2
    threads) this beat two split products: (512, 100, 100) 115 vs 122 us, (128, 100,
    100) 35 vs 45 us; for the convolution's tall products ((5120, 25) and (5120, 75))
    it lost, 344 vs 319 us, so :class:`bnbench.nn.Conv1d` splits them instead."""
    M, N = dy.shape
    K = x.shape[1]
    if numba.get_num_threads() < 2 or M * N * K < PARALLEL_MACS:
        return matmul_tn(dy, x), matmul(dy, w)
    dy, x, w = (np.ascontiguousarray(a) for a in (dy, x, w))
    dw, dx = np.empty((N, K), dy.dtype), np.empty((M, K), dy.dtype)
    run_parallel(_two_products, dy.T, x, dw, dy, w, dx)
    return dw, dx


@elementwise_kernel
def _bias_relu(y, bias):
    """``y = relu(y + bias)`` in place over rows ``(M, C)``: NumPy's ``y += bias`` (the
    same float add, so the same bits), then the ReLU in the same pass."""
    for r in prange(y.shape[0]):
        row = y[r]
        for c in range(y.shape[1]):
            row[c] = _relu_value(row[c] + bias[c])


def add_bias(y, bias, relu=False):
    """``y += bias`` on rows ``(M, C)`` in place, with a ReLU in the same pass if ``relu``."""
    if relu:
        _bias_relu(y, bias)
    else:
        y += bias
