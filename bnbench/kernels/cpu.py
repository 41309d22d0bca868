"""Numba CPU kernels (parallel, cached).

Every array arrives as ``(N, C, L)``, C-contiguous, ``L = prod(spatial)`` (``L = 1`` for
``(N, C)`` input). Two loop orders cover the layouts:

* *spatial* (``L > 1``): the ``N * C`` rows of ``L`` contiguous values are split into
  ``nchunks`` ranges, one per thread; each row is reduced in one pass and merged into
  per-chunk, per-channel partials.
* *dense* (``L == 1``): rows of ``C`` values are streamed, per-thread partials are
  vectors over C (a prange over channels would stride through memory and is 15-50x
  slower than PyTorch here).

Statistics are one pass of float64 sums shifted by a value of the data
(:func:`~bnbench.kernels.scalar.shifted_moments`), merged with Chan's formula: one read
of ``x`` instead of two (the two-pass version took 6.4 ms against 5.9 ms on
``(16, 64, 224, 224)`` float32, 2 threads) and no ``E[x^2] - E[x]^2`` cancellation.

Ghost batch norm (groups of ``G`` consecutive samples, each with its own statistics)
is the same code on ``(N // G, G, C, L)`` views: the parallel units are (group, chunk of
the group) pairs, statistics and coefficients are ``(groups, C)``, and the elementwise
passes read row ``n // G`` of them. Plain batch norm is the single group ``G = N``, so
``ghost_batch_size=N`` is plain batch norm bit for bit, by construction. Batch Renorm
is plain batch norm's passes with other per-channel coefficients
(:func:`~bnbench.kernels.scalar.renorm_affine_coefficients`).

Each parallel kernel has a serial twin (the same code compiled without ``parallel``),
run on inputs below :data:`SERIAL_BELOW` elements (:data:`ELEMENTWISE_SERIAL_BELOW` for
the elementwise passes), where waking the thread pool costs more than the work.

Per-chunk partials are merged in a fixed order, so results are bitwise deterministic for a
fixed input and thread count. Elementwise passes compute in float64 (``x * a + b`` with
per-channel float64 ``a``, ``b``) and round once on store.
"""

import types

import numba
import numpy as np
from numba import prange

from .. import config
from .scalar import (
    affine_coefficients,
    chan_merge,
    ema_step,
    grad_coefficients,
    renorm_affine_coefficients,
    renorm_grad_coefficients,
    shifted_moments,
)

_JIT = {"cache": config.CACHE, "fastmath": config.FASTMATH}
_PJIT = {"parallel": True, **_JIT}
#: The per-channel coefficient loops (O(C) work) compile without fast-math: with
#: ``reassoc`` LLVM regrouped ``(weight * r) * invstd * ...`` differently from plain batch
#: norm's ``weight * invstd * ...``, so Batch Renorm's dx at ``r = 1`` differed from plain
#: batch norm's in the last bit on ~10% of float64 elements (tests/test_renorm.py,
#: test_no_correction_is_plain_batch_norm). Strict IEEE order costs nothing measurable here.
_EXACT = {"cache": config.CACHE}

#: Inputs of fewer elements run a kernel's serial twin: waking Numba's thread pool costs
#: 5-15 us a call on this 2-core VM, more than the work. Reductions (statistics, gradient
#: sums, the fused dense passes) and elementwise passes cross over at different sizes.
#: Measured through the public API (float32, 2 threads, serial / parallel us):
#: forward-train (512, 100) 18 / 28, (128, 32, 40) 51 / 42; inference (512, 100) 15.7 /
#: 14.6, (4864, 25) 38 / 26; backward (9728, 25) 127 / 146, (128, 32, 40) 57 / 44. Between
#: 2^17 and 2^18 elements repeated measurements disagreed on the winner (run-to-run noise
#: of 20-40% on this VM).
SERIAL_BELOW = 1 << 17
ELEMENTWISE_SERIAL_BELOW = 1 << 15


def twin(fn, jit_options):
    """``fn`` compiled with ``jit_options`` under its own name: Numba's on-disk cache
    keys a function by its qualified name and bytecode, not by its compile options, so
    two dispatchers of one function (parallel and serial) would load each other's
    machine code."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_twin",
                              fn.__defaults__, fn.__closure__)  # fmt: skip
    copy.__qualname__ = fn.__qualname__ + "_twin"
    return numba.njit(**jit_options)(copy)


def thread_count(x, elementwise=False):
    """Threads a kernel uses on ``x``: Numba's count, or 1 below :data:`SERIAL_BELOW`
    (:data:`ELEMENTWISE_SERIAL_BELOW` for elementwise passes)."""
    below = ELEMENTWISE_SERIAL_BELOW if elementwise else SERIAL_BELOW
    return 1 if x.size < below else numba.get_num_threads()


class ParallelKernel:
    """A ``prange`` kernel and its serial twin, chosen by the size of the first argument
    (``x`` or ``dy``) with :func:`thread_count`, the same rule that sets its chunk counts."""

    def __init__(self, fn, elementwise=False):
        self.parallel = numba.njit(**_PJIT)(fn)
        self.serial = twin(fn, _JIT)
        self.elementwise = elementwise

    def __call__(self, *args):
        serial = thread_count(args[0], self.elementwise) == 1
        return (self.serial if serial else self.parallel)(*args)


def elementwise_kernel(fn):
    """A ``prange`` kernel over elements or rows, with a serial twin below
    :data:`ELEMENTWISE_SERIAL_BELOW` elements (also used by :mod:`bnbench.nn`)."""
    return ParallelKernel(fn, elementwise=True)


@numba.njit(inline="always")
def chunk_span(k, nchunks, total):
    """Chunk ``k`` of ``nchunks`` near-equal chunks of ``range(total)`` as ``(lo, hi)``."""
    return k * total // nchunks, (k + 1) * total // nchunks


@numba.njit(inline="always")
def row_span(k, nchunks, N, C):
    """Chunk ``k`` of the ``N * C`` rows as ``(n0, c0, n1, c1)``: from row (n0, c0) up to,
    not including, (n1, c1). Kernels walk it as ``for n: for c in channel_span(...)``:
    nested loops over (n, c) with direct indexing ran the (128, 32, 40) gradient sums in
    27.7 us against 30.8 us for one flat loop over rows (2 threads, float32)."""
    lo, hi = chunk_span(k, nchunks, N * C)
    return lo // C, lo % C, hi // C, hi % C


@numba.njit(inline="always")
def channel_span(n, n0, c0, n1, c1, C):
    """The channels ``(lo, hi)`` of row ``n`` inside the :func:`row_span` ``(n0, c0, n1, c1)``."""
    return (c0 if n == n0 else 0), (c1 if n == n1 else C)


@ParallelKernel
def _spatial_moments(x, group_size, splits):
    # x: (N, C, L), groups of group_size samples. Unit u = (group u // splits, chunk u % splits of its G * C
    # rows). Per (unit, channel): sums shifted by the first value the unit sees of that
    # channel, turned into (mean, M2) once at the end. Merging every row instead cost two
    # divisions per row. callgrind, float32, per call: 1.78M -> 1.63M instructions on
    # (128, 32, 40), 8.09M -> 7.94M on (32, 64, 56, 56); wall-clock gains (~5%) were
    # within this VM's run-to-run noise.
    N, C, L = x.shape
    G = group_size
    groups = N // G
    count = np.zeros((groups * splits, C))
    mean = np.zeros((groups * splits, C))
    m2 = np.zeros((groups * splits, C))
    for u in prange(groups * splits):
        first = (u // splits) * G
        n0, c0, n1, c1 = row_span(u % splits, splits, G, C)
        shift = np.zeros(C)
        s = np.zeros(C)
        q = np.zeros(C)
        for n in range(first + n0, first + min(n1 + 1, G)):
            cs, ce = channel_span(n - first, n0, c0, n1, c1, C)
            for c in range(cs, ce):
                if count[u, c] == 0:
                    shift[c] = x[n, c, 0]
                sh = shift[c]
                rs = 0.0
                rq = 0.0
                for i in range(L):
                    d = x[n, c, i] - sh
                    rs += d
                    rq += d * d
                s[c] += rs
                q[c] += rq
                count[u, c] += L
        for c in range(C):
            if count[u, c] > 0:
                mean[u, c], m2[u, c] = shifted_moments(shift[c], s[c], q[c], count[u, c])
    return count, mean, m2


@ParallelKernel
def _dense_moments(x, splits):
    # x: (groups, G, C), units as in _spatial_moments (chunks of a group's G rows). Four
    # rows per sweep over C: the float64 partials are loaded and stored once per four
    # rows. (4096, 1024) float32, 2 threads: 0.26 ms against 0.38 ms one row at a time
    # (the loop is bound by L1 traffic on the partials, not by DRAM).
    groups, G, C = x.shape
    count = np.zeros((groups * splits, C))
    mean = np.zeros((groups * splits, C))
    m2 = np.zeros((groups * splits, C))
    for u in prange(groups * splits):
        xg = x[u // splits]
        lo, hi = chunk_span(u % splits, splits, G)
        shift = xg[lo].astype(np.float64)
        s = np.zeros(C)
        q = np.zeros(C)
        n = lo
        while n + 4 <= hi:
            r0, r1, r2, r3 = xg[n], xg[n + 1], xg[n + 2], xg[n + 3]
            for c in range(C):
                d0, d1 = r0[c] - shift[c], r1[c] - shift[c]
                d2, d3 = r2[c] - shift[c], r3[c] - shift[c]
                s[c] += (d0 + d1) + (d2 + d3)
                q[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            n += 4
        for m in range(n, hi):
            for c in range(C):
                d = xg[m, c] - shift[c]
                s[c] += d
                q[c] += d * d
        for c in range(C):
            count[u, c] = hi - lo
            mean[u, c], m2[u, c] = shifted_moments(shift[c], s[c], q[c], hi - lo)
    return count, mean, m2


@numba.njit(**_EXACT)
def _merge_chunks(count, mean, m2, splits):
    """Merge each group's ``splits`` consecutive partials (rows of ``(groups * splits,
    C)``) in order; returns ``(groups, C)`` mean and biased var."""
    groups, C = count.shape[0] // splits, count.shape[1]
    out_mean = np.empty((groups, C))
    out_var = np.empty((groups, C))
    for g in range(groups):
        for c in range(C):
            n, mu, q = 0.0, 0.0, 0.0
            for k in range(g * splits, (g + 1) * splits):
                n, mu, q = chan_merge(n, mu, q, count[k, c], mean[k, c], m2[k, c])
            out_mean[g, c] = mu
            out_var[g, c] = q / n
    return out_mean, out_var


def _affine_coefficients_py(weight, bias, mean, var, eps):
    """Per (group, channel) ``(scale, shift, invstd)`` float64 arrays, shaped like
    ``mean``, for ``y = x * scale + shift``."""
    groups, C = mean.shape
    scale, shift, invstd = np.empty((groups, C)), np.empty((groups, C)), np.empty((groups, C))
    for g in prange(groups):
        for c in range(C):
            scale[g, c], shift[g, c], invstd[g, c] = affine_coefficients(
                np.float64(weight[c]), np.float64(bias[c]), np.float64(mean[g, c]),
                np.float64(var[g, c]), eps,
            )  # fmt: skip
    return scale, shift, invstd


#: Serial for plain batch norm's (1, C) (a parallel launch costs microseconds), parallel
#: over groups where ghost batch norm has many: (4096, 1024) float32 in groups of 32 has
#: 131072 (group, channel) pairs, each a square root and divisions.
_affine_coefficients_serial = numba.njit(**_EXACT)(_affine_coefficients_py)
_affine_coefficients_parallel = twin(_affine_coefficients_py, {"parallel": True, **_EXACT})
PARALLEL_PAIRS = 8192


def group_affine_coefficients(weight, bias, mean, var, eps):
    """``(scale, shift, invstd)`` per (group, channel) of ``(groups, C)`` statistics."""
    parallel = mean.size >= PARALLEL_PAIRS
    fn = _affine_coefficients_parallel if parallel else _affine_coefficients_serial
    return fn(weight, bias, mean, var, eps)


@numba.njit(**_EXACT)
def _renorm_coefficients(weight, bias, mean, var, running_mean, running_var, rmax, dmax, eps):
    """Batch Renorm's per-channel ``(scale, shift, invstd, r, d)``, ``(1, C)`` each."""
    C = mean.shape[1]
    out = np.empty((5, 1, C))
    for c in range(C):
        out[0, 0, c], out[1, 0, c], out[2, 0, c], out[3, 0, c], out[4, 0, c] = (
            renorm_affine_coefficients(
                np.float64(weight[c]), np.float64(bias[c]), mean[0, c], var[0, c],
                np.float64(running_mean[c]), np.float64(running_var[c]), rmax, dmax, eps,
            )
        )  # fmt: skip
    return out[0], out[1], out[2], out[3], out[4]


@numba.njit(**_EXACT)
def _group_sums(sums, splits):
    """``(groups * splits, C)`` partial sums -> ``(groups, C)``, in order."""
    groups, C = sums.shape[0] // splits, sums.shape[1]
    out = np.zeros((groups, C))
    for g in range(groups):
        for k in range(g * splits, (g + 1) * splits):
            for c in range(C):
                out[g, c] += sums[k, c]
    return out


@numba.njit(**_EXACT)
def group_grad_coefficients(sum_dy, sum_dy_x, splits, weight, mean, invstd, count):
    """Per (group, channel) dx coefficients ``a, b, d``; dweight and dbias ``(C,)`` summed
    over the groups in order."""
    s_dy, s_dy_x = _group_sums(sum_dy, splits), _group_sums(sum_dy_x, splits)
    groups, C = s_dy.shape
    a, b, d = np.empty((groups, C)), np.empty((groups, C)), np.empty((groups, C))
    dweight, dbias = np.zeros(C), np.zeros(C)
    for g in range(groups):
        for c in range(C):
            a[g, c], b[g, c], d[g, c], dw, db = grad_coefficients(
                np.float64(weight[c]), np.float64(mean[g, c]), np.float64(invstd[g, c]),
                s_dy[g, c], s_dy_x[g, c], count,
            )  # fmt: skip
            dweight[c] += dw
            dbias[c] += db
    return a, b, d, dweight, dbias


@numba.njit(**_EXACT)
def _renorm_grad_coefficients(sum_dy, sum_dy_x, splits, weight, mean, invstd, r, d, count):
    """Batch Renorm's ``a, b, d`` ``(1, C)`` and dweight, dbias ``(C,)``."""
    s_dy, s_dy_x = _group_sums(sum_dy, splits), _group_sums(sum_dy_x, splits)
    C = s_dy.shape[1]
    out = np.empty((5, C))
    for c in range(C):
        out[0, c], out[1, c], out[2, c], out[3, c], out[4, c] = renorm_grad_coefficients(
            np.float64(weight[c]), np.float64(mean[c]), np.float64(invstd[c]),
            np.float64(r[c]), np.float64(d[c]), s_dy[0, c], s_dy_x[0, c], count,
        )  # fmt: skip
    return out[0:1], out[1:2], out[2:3], out[3], out[4]


@elementwise_kernel
def _spatial_affine(x, group_size, a, b, out, nchunks):
    """``out[n, c] = x[n, c] * a[g, c] + b[g, c]`` with ``g = n // group_size``.

    Chunks of the N * C rows walked as nested (n, c) loops (see :func:`row_span`): no
    division per row. A flat prange over rows with ``g = n // group_size`` per row took
    the (128, 32, 40) float32 pass from 11.9 to 15.0 us against plain batch norm's flat
    loop without groups (2 threads); this form takes 9.8-11 us where that flat loop
    takes 12.4-14 (same runs, noisy VM)."""
    N, C, L = x.shape
    for k in prange(nchunks):
        n0, c0, n1, c1 = row_span(k, nchunks, N, C)
        for n in range(n0, min(n1 + 1, N)):
            cs, ce = channel_span(n, n0, c0, n1, c1, C)
            ag, bg = a[n // group_size], b[n // group_size]
            for c in range(cs, ce):
                ac, bc = ag[c], bg[c]
                src, dst = x[n, c], out[n, c]
                for i in range(L):
                    dst[i] = src[i] * ac + bc


@elementwise_kernel
def _dense_affine(x, group_size, a, b, out):
    for n in prange(x.shape[0]):
        src, dst = x[n], out[n]
        ag, bg = a[n // group_size], b[n // group_size]
        for c in range(x.shape[1]):
            dst[c] = src[c] * ag[c] + bg[c]


@ParallelKernel
def _spatial_grad_sums(dy, x, group_size, splits):
    # (N, C, L); units as in _spatial_moments
    N, C, L = dy.shape
    G = group_size
    groups = N // G
    sum_dy = np.zeros((groups * splits, C))
    sum_dy_x = np.zeros((groups * splits, C))
    for u in prange(groups * splits):
        first = (u // splits) * G
        n0, c0, n1, c1 = row_span(u % splits, splits, G, C)
        for n in range(first + n0, first + min(n1 + 1, G)):
            cs, ce = channel_span(n - first, n0, c0, n1, c1, C)
            for c in range(cs, ce):
                s = 0.0
                q = 0.0
                for i in range(L):
                    g = dy[n, c, i]
                    s += g
                    q += g * np.float64(x[n, c, i])
                sum_dy[u, c] += s
                sum_dy_x[u, c] += q
    return sum_dy, sum_dy_x


@ParallelKernel
def _dense_grad_sums(dy, x, splits):
    # (groups, G, C) views. Four rows per sweep over C, for the reason in _dense_moments:
    # against two rows per sweep, float32, 2 threads, interleaved medians: (40960, 64)
    # 777 -> 506 us, (200704, 16) 1759 -> 1502, (4096, 1024) 767 -> 699, (12544, 256)
    # 516 -> 522 (unchanged).
    groups, G, C = dy.shape
    sum_dy = np.zeros((groups * splits, C))
    sum_dy_x = np.zeros((groups * splits, C))
    for u in prange(groups * splits):
        dyg, xg = dy[u // splits], x[u // splits]
        lo, hi = chunk_span(u % splits, splits, G)
        s, q = sum_dy[u], sum_dy_x[u]
        n = lo
        while n + 4 <= hi:
            g0, g1, g2, g3 = dyg[n], dyg[n + 1], dyg[n + 2], dyg[n + 3]
            v0, v1, v2, v3 = xg[n], xg[n + 1], xg[n + 2], xg[n + 3]
            for c in range(C):
                s[c] += (np.float64(g0[c]) + g1[c]) + (np.float64(g2[c]) + g3[c])
                q[c] += (g0[c] * np.float64(v0[c]) + g1[c] * np.float64(v1[c])) + (
                    g2[c] * np.float64(v2[c]) + g3[c] * np.float64(v3[c])
                )
            n += 4
        for m in range(n, hi):
            for c in range(C):
                s[c] += dyg[m, c]
                q[c] += dyg[m, c] * np.float64(xg[m, c])
    return sum_dy, sum_dy_x


@elementwise_kernel
def _spatial_grad_input(dy, x, group_size, a, b, d, out, nchunks):
    # the loop order of _spatial_affine
    N, C, L = x.shape
    for k in prange(nchunks):
        n0, c0, n1, c1 = row_span(k, nchunks, N, C)
        for n in range(n0, min(n1 + 1, N)):
            cs, ce = channel_span(n, n0, c0, n1, c1, C)
            g = n // group_size
            ag, bg, dg = a[g], b[g], d[g]
            for c in range(cs, ce):
                ac, bc, dc = ag[c], bg[c], dg[c]
                gr, v, dst = dy[n, c], x[n, c], out[n, c]
                for i in range(L):
                    dst[i] = gr[i] * ac + v[i] * bc + dc


@elementwise_kernel
def _dense_grad_input(dy, x, group_size, a, b, d, out):
    for n in prange(x.shape[0]):
        gr, v, dst = dy[n], x[n], out[n]
        ag, bg, dg = a[n // group_size], b[n // group_size], d[n // group_size]
        for c in range(x.shape[1]):
            dst[c] = gr[c] * ag[c] + v[c] * bg[c] + dg[c]


@numba.njit(**_EXACT)
def _ghost_row_coefficients(weight, bias, shift, s, q, count, eps, mean, var, invstd, a, b):
    """One group's statistics (written to the ``(C,)`` rows ``mean``, ``var``,
    ``invstd``) and affine coefficients ``a``, ``b`` from its shifted sums. Compiled
    without fast-math, like the other coefficient loops, and called (not inlined) from
    :func:`_dense_ghost_train`, so the fast-math flags of the data passes do not reach it."""
    for c in range(shift.shape[0]):
        mu, m2 = shifted_moments(shift[c], s[c], q[c], count)
        v = m2 / count
        a[c], b[c], inv = affine_coefficients(
            np.float64(weight[c]), np.float64(bias[c]), mu, v, eps
        )
        mean[c], var[c], invstd[c] = mu, v, inv


@ParallelKernel
def _dense_ghost_train(x, weight, bias, eps, out, mean, var, invstd, nchunks):
    """Ghost batch norm of dense ``(groups, G, C)`` input in one parallel pass: each
    chunk of consecutive groups computes a group's shifted sums, its statistics and
    coefficients, then normalises the group's rows while they are in cache. The general
    path (partials, merge, coefficients and affine pass, each over ``(groups, C)``
    float64 arrays) took 3.4 ms against plain batch norm's 0.36 ms on (4096, 1024)
    float32, G = 32, 2 threads: the (groups, C) arrays' page faults and passes cost more
    than the data pass. Statistics are written in x's dtype (no cast afterwards)."""
    groups, G, C = x.shape
    for k in prange(nchunks):
        lo, hi = chunk_span(k, nchunks, groups)
        s, q, a, b = np.empty(C), np.empty(C), np.empty(C), np.empty(C)
        for g in range(lo, hi):
            xg, og = x[g], out[g]
            shift = xg[0].astype(np.float64)
            s[:] = 0.0
            q[:] = 0.0
            n = 0
            while n + 4 <= G:
                r0, r1, r2, r3 = xg[n], xg[n + 1], xg[n + 2], xg[n + 3]
                for c in range(C):
                    d0, d1 = r0[c] - shift[c], r1[c] - shift[c]
                    d2, d3 = r2[c] - shift[c], r3[c] - shift[c]
                    s[c] += (d0 + d1) + (d2 + d3)
                    q[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                n += 4
            for m in range(n, G):
                for c in range(C):
                    d = xg[m, c] - shift[c]
                    s[c] += d
                    q[c] += d * d
            _ghost_row_coefficients(
                weight, bias, shift, s, q, G, eps, mean[g], var[g], invstd[g], a, b
            )
            for m in range(G):
                src, dst = xg[m], og[m]
                for c in range(C):
                    dst[c] = src[c] * a[c] + b[c]


@numba.njit(**_EXACT)
def _ghost_row_grad(weight, mean, invstd, s, q, count, a, b, d, dweight, dbias):
    """One group's dx coefficients; adds its dweight and dbias contributions."""
    for c in range(s.shape[0]):
        a[c], b[c], d[c], dw, db = grad_coefficients(
            np.float64(weight[c]), np.float64(mean[c]), np.float64(invstd[c]),
            s[c], q[c], count,
        )  # fmt: skip
        dweight[c] += dw
        dbias[c] += db


@ParallelKernel
def _dense_ghost_backward(dy, x, weight, mean, invstd, out, nchunks):
    """Ghost batch norm's backward of dense ``(groups, G, C)`` input in one parallel pass
    (the reason is :func:`_dense_ghost_train`'s): per group its sums, coefficients and
    dx; dweight and dbias summed per chunk of groups, then over chunks in order."""
    groups, G, C = x.shape
    dweight = np.zeros((nchunks, C))
    dbias = np.zeros((nchunks, C))
    for k in prange(nchunks):
        lo, hi = chunk_span(k, nchunks, groups)
        s, q = np.empty(C), np.empty(C)
        a, b, d = np.empty(C), np.empty(C), np.empty(C)
        for g in range(lo, hi):
            dyg, xg, og = dy[g], x[g], out[g]
            s[:] = 0.0
            q[:] = 0.0
            for m in range(G):
                gr, v = dyg[m], xg[m]
                for c in range(C):
                    s[c] += gr[c]
                    q[c] += gr[c] * np.float64(v[c])
            _ghost_row_grad(weight, mean[g], invstd[g], s, q, G, a, b, d, dweight[k], dbias[k])
            for m in range(G):
                gr, v, dst = dyg[m], xg[m], og[m]
                for c in range(C):
                    dst[c] = gr[c] * a[c] + v[c] * b[c] + d[c]
    return dweight, dbias


@numba.njit(**_JIT)
def _ema_update(running_mean, running_var, mean, var, momenta):
    for k in range(momenta.shape[0]):
        m = momenta[k]
        for c in range(mean.shape[0]):
            running_mean[k, c] = ema_step(running_mean[k, c], mean[c], m)
            running_var[k, c] = ema_step(running_var[k, c], var[c], m)


def is_dense(x):
    """Whether ``x`` ``(N, C, L)`` is dense input (``L == 1``), which loops over rows."""
    return x.shape[2] == 1


def loop_layout(*arrays):
    """The arrays as the loop order wants them: 2-D ``(N, C)`` views for dense input."""
    return [a.reshape(a.shape[:2]) for a in arrays] if is_dense(arrays[0]) else list(arrays)


def grouped(group_size, *arrays):
    """``(groups, G, ...)`` views of the layout's arrays (no copies)."""
    return [a.reshape(a.shape[0] // group_size, group_size, *a.shape[1:]) for a in arrays]


def chunk_count(x):
    """One chunk per thread, never more chunks than rows in the layout's loop order."""
    rows = x.shape[0] if is_dense(x) else x.shape[0] * x.shape[1]
    return max(1, min(thread_count(x, elementwise=True), rows))


def group_splits(x, group_size):
    """Chunks per group: one unit of work per thread while there are fewer groups than
    threads, never more chunks than a group has rows in the layout's loop order. Plain
    batch norm (one group) splits into one chunk per thread."""
    groups = x.shape[0] // group_size
    rows = group_size if is_dense(x) else group_size * x.shape[1]
    return max(1, min(rows, thread_count(x) // groups))


def group_moments(x, group_size):
    """Per (group, channel) mean and biased variance, ``(groups, C)`` float64. With one
    chunk per group the partials are the groups' statistics: no merge."""
    count, mean, m2, splits = _moment_partials(x, group_size)
    if splits == 1:
        return mean, m2 / count
    return _merge_chunks(count, mean, m2, splits)


def _moment_partials(x, group_size):
    splits = group_splits(x, group_size)
    if is_dense(x):
        return (*_dense_moments(*grouped(group_size, *loop_layout(x)), splits), splits)
    return (*_spatial_moments(x, group_size, splits), splits)


def moments(x):
    """Per-channel mean and biased variance of ``x`` ``(N, C, L)``, both float64 ``(C,)``."""
    mean, var = group_moments(x, x.shape[0])
    return mean[0], var[0]


def affine(x, a, b, out, group_size=None):
    """``out = x * a[g, c] + b[g, c]`` elementwise, ``g = n // group_size``; ``a``, ``b``
    float64 ``(groups, C)`` (``(1, C)`` without groups)."""
    x2, out2 = loop_layout(x, out)
    G = group_size or x.shape[0]
    if is_dense(x):
        _dense_affine(x2, G, a, b, out2)
    else:
        _spatial_affine(x2, G, a, b, out2, chunk_count(x))


def _fused_ghost(x, group_size):
    """Whether dense ghost batch norm runs the fused one-pass kernels: at least one group
    per thread. One group (plain batch norm) always takes the general path, which Batch
    Renorm shares, so that ``rmax = 1, dmax = 0`` stays plain batch norm bit for bit."""
    groups = x.shape[0] // group_size
    return is_dense(x) and groups > 1 and groups >= thread_count(x)


def forward_train_ghost(x, weight, bias, eps, group_size, out):
    if _fused_ghost(x, group_size):
        x3, out3 = grouped(group_size, *loop_layout(x, out))
        shape = (x3.shape[0], x3.shape[2])
        mean, var, invstd = (np.empty(shape, x.dtype) for _ in range(3))
        nchunks = min(thread_count(x), x3.shape[0])
        _dense_ghost_train(x3, weight, bias, eps, out3, mean, var, invstd, nchunks)
        return mean, var, invstd
    mean, var = group_moments(x, group_size)
    scale, shift, invstd = group_affine_coefficients(weight, bias, mean, var, eps)
    affine(x, scale, shift, out, group_size)
    return mean, var, invstd


def forward_train(x, weight, bias, eps, out):
    mean, var, invstd = forward_train_ghost(x, weight, bias, eps, x.shape[0], out)
    return mean[0], var[0], invstd[0]


def forward_train_renorm(x, weight, bias, running_mean, running_var, rmax, dmax, eps, out):
    mean, var = group_moments(x, x.shape[0])
    scale, shift, invstd, r, d = _renorm_coefficients(
        weight, bias, mean, var, running_mean, running_var, rmax, dmax, eps
    )
    affine(x, scale, shift, out)
    return mean[0], var[0], invstd[0], r[0], d[0]


def forward_eval(x, weight, bias, mean, var, eps, out):
    scale, shift, _ = group_affine_coefficients(weight, bias, mean[None], var[None], eps)
    affine(x, scale, shift, out)


def grad_sums(dy, x, group_size):
    """Per-chunk ``sum(dy)`` and ``sum(dy * x)`` of every (group, channel), and the splits."""
    splits = group_splits(x, group_size)
    if is_dense(x):
        return (*_dense_grad_sums(*grouped(group_size, *loop_layout(dy, x)), splits), splits)
    return (*_spatial_grad_sums(dy, x, group_size, splits), splits)


def grad_input(dy, x, group_size, a, b, d, out):
    """``out = dy * a + x * b + d`` per (group, channel): the input gradient pass."""
    dy2, x2, out2 = loop_layout(dy, x, out)
    if is_dense(x):
        _dense_grad_input(dy2, x2, group_size, a, b, d, out2)
    else:
        _spatial_grad_input(dy2, x2, group_size, a, b, d, out2, chunk_count(x))


def backward_ghost(dy, x, weight, mean, invstd, group_size, out):
    if _fused_ghost(x, group_size):
        dy3, x3, out3 = grouped(group_size, *loop_layout(dy, x, out))
        nchunks = min(thread_count(x), x3.shape[0])
        dw, db = _dense_ghost_backward(dy3, x3, weight, mean, invstd, out3, nchunks)
        return dw.sum(axis=0), db.sum(axis=0)
    a, b, d, dweight, dbias = group_grad_coefficients(
        *grad_sums(dy, x, group_size), weight, mean, invstd, group_size * x.shape[2]
    )
    grad_input(dy, x, group_size, a, b, d, out)
    return dweight, dbias


def backward(dy, x, weight, mean, invstd, out):
    return backward_ghost(dy, x, weight, mean[None], invstd[None], x.shape[0], out)


def backward_renorm(dy, x, weight, mean, invstd, r, d, out):
    N = x.shape[0]
    a, b, dc, dweight, dbias = _renorm_grad_coefficients(
        *grad_sums(dy, x, N), weight, mean, invstd, r, d, N * x.shape[2]
    )
    grad_input(dy, x, N, a, b, dc, out)
    return dweight, dbias


def update_running(running_mean, running_var, mean, var, momenta):
    _ema_update(running_mean, running_var, mean, var, momenta)
