"""Timing helpers shared by every timing of :mod:`bnbench.perf` and the benchmarks.

Methodology (after pyhpc-benchmarks): validate before timing (:func:`validate`), warm up,
interleave the contenders in a shuffled order every repeat so that machine drift hits all
of them alike (:func:`interleaved_timings`), and report the median with the
interquartile range (:func:`timing_row`).
"""

import time

import numba
import numpy as np
from numba import prange

from .. import config

ALIGN = 64  # bytes: a cache line, and what PyTorch's CPU allocator gives its tensors
#: Inputs at least this large are out of cache: the triad runs interleaved with them, so
#: their "% of triad" compares against bandwidth measured under the same conditions.
OUT_OF_CACHE_BYTES = 64 * 2**20


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


def repeats_within(budget_s, contenders, low=5, high=300):
    """How many interleaved repeats of ``contenders`` (name -> callable) fit in
    ``budget_s`` seconds, judged from one timed call of each (already warm), clipped to
    ``[low, high]``."""
    cost = sum(time_once(fn) for fn in contenders.values())
    return int(np.clip(budget_s / cost, low, high))


def validate(name, got, expected):
    """Raise ``AssertionError`` naming ``name`` unless ``got`` (a NumPy or device array)
    matches the float64 reference's ``expected`` (rtol 1e-4, atol 1e-4 of its scale):
    a wrong contender is caught before it is timed."""
    if hasattr(got, "copy_to_host"):
        got = got.copy_to_host()
    scale = float(np.abs(expected).max())
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
        err = float(np.abs(got.astype(np.float64) - expected).max())
        raise AssertionError(f"{name} disagrees with the reference (max abs error {err:.3g})")


def timing_row(shape, op, backend, prealloc, dtype, threads, times, factor):
    """The columns every kernel timing row has: what was timed, the median and quartiles
    of ``times`` (seconds) in ms, and GB/s for ``factor`` times the input's bytes."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    median = float(np.median(times))
    return {
        "shape": "x".join(map(str, shape)),
        "layout": "(N, C)" if len(shape) == 2 else "(N, C, *spatial)",
        "op": op,
        "backend": backend,
        "preallocated_out": prealloc,
        "dtype": np.dtype(dtype).name,
        "threads": threads,
        "input_mib": nbytes / 2**20,
        "repeats": len(times),
        "median_ms": median * 1e3,
        "q25_ms": float(np.quantile(times, 0.25)) * 1e3,
        "q75_ms": float(np.quantile(times, 0.75)) * 1e3,
        "gbps": factor * nbytes / median / 1e9,
    }
