"""Timing helpers shared by the studies and the benchmarks.

Methodology (after pyhpc-benchmarks): validate before timing, warm up, interleave the
contenders in a shuffled order every repeat so that machine drift hits all of them
alike, and report the median with the interquartile range.
"""

import time

import numba
import numpy as np
from numba import prange

from . import config

ALIGN = 64  # bytes: a cache line, and what PyTorch's CPU allocator gives its tensors


def aligned_empty(shape, dtype, align=ALIGN):
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary.

    NumPy only guarantees 16 bytes; PyTorch's kernels ran up to 2x slower on such
    memory, so every contender is timed on aligned arrays.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a):
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


@numba.njit(parallel=True, cache=config.CACHE)
def _triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


def triad(n):
    """A STREAM triad ``a = b + s*c`` over float32 arrays of ``n`` values.

    Returns ``(fn, nbytes)``: a zero-argument callable and the bytes one call moves
    (3 arrays, as STREAM counts them).
    """
    a, b, c = (aligned_empty(n, np.float32) for _ in range(3))
    b[:] = 1.0
    c[:] = 2.0
    s = np.float32(3.0)
    return (lambda: _triad(a, b, c, s)), 3 * a.nbytes


def triad_bandwidth(n=50_000_000, repeats=9):
    """Median GB/s of the triad on arrays of ``n`` float32 values (200 MB each by
    default, far beyond cache)."""
    fn, nbytes = triad(n)
    times = interleaved_timings({"triad": fn}, repeats)["triad"]
    return nbytes / np.median(times) / 1e9


def interleaved_timings(contenders, repeats, warmup=1, seed=0):
    """Time every callable in ``contenders`` (name -> zero-argument callable).

    Each repeat runs all contenders once in a freshly shuffled order. Returns name ->
    array of ``repeats`` wall-clock durations in seconds.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    rng = np.random.default_rng(seed)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            fn = contenders[names[i]]
            t0 = time.perf_counter()
            fn()
            times[names[i]].append(time.perf_counter() - t0)
    return {name: np.asarray(t) for name, t in times.items()}


def time_once(fn):
    """Seconds one call of ``fn`` takes (at least 1 microsecond)."""
    t0 = time.perf_counter()
    fn()
    return max(time.perf_counter() - t0, 1e-6)
