"""Batch norm followed by a ReLU, fused, on the CPU (part of the ``cpu`` backend: its
module re-exports the three functions at the end).

Plain batch norm's passes with the ReLU folded into them, one pass over the data fewer
each way:

* forward (training and inference mode): the statistics and per-channel coefficients are
  :mod:`bnbench.kernels.cpu`'s own; the affine pass stores ``relu(x * a + b)`` instead
  of ``x * a + b``. Two passes over ``x`` and one write, where BN then a ReLU layer read
  ``x`` twice, wrote ``z``, read it again and wrote ``y``.
* backward: from ``dy`` and the fused output ``y`` (the mask ``y > 0``, see
  :func:`~bnbench.kernels.scalar.relu_grad`), one pass masks ``dy`` into ``dz`` and sums
  it for the gradient coefficients, then plain batch norm's input-gradient pass runs on
  ``dz``: dy, y and x read and dz written, then dz and x read and dx written, where the
  ReLU backward's own pass (dy and y read, dz written) came first and the sums read dz
  again. A backward that never stores ``dz`` (mask applied in both passes) was measured
  slower here: it reads dy and y twice, and the in-cache passes are compute-bound
  (float32, 2 threads, (1000, 20, 25) channels-last: 973 us against the unfused 828 us;
  (32, 64, 56, 56): 9.1 ms against 11.8 ms).

Bit for bit the unfused pair (BN, then :class:`bnbench.nn.ReLU`): ``relu`` commutes with
the rounding to the output's dtype, the masked gradient is exactly what the ReLU
backward stores, and every float operation is the unfused kernels' own, in the same
order. Where the unfused kernel reduces within a row (the spatial gradient sums, a loop
that LLVM vectorises with ``reassoc`` and whose lane count it picks by the loop body's
cost) the masked row is first written to ``dz`` and then reduced by the same
loop as the unfused kernel's, so the summation order is the same one (a single fused loop
risks other lanes, hence other last bits; tests/kernels/test_cpu_fused.py checks the
bits). With the mask inline in the input-gradient pass, LLVM moved the multiply into the
select and contracted ``g * a + x * b + d`` into other fused multiply-adds than the
unfused kernel's (float64 spatial dx: 1 ulp off on some elements), one more reason to run
that pass as the unfused kernel itself.

"The same operations" holds for kernels compiled alike: a parallel kernel that reduces
inside a loop (``_spatial_grad_sums``, fused or not) loaded from Numba's on-disk cache
rounds its float64 sums differently, in the last bits, from the same kernel compiled in
the running process (measured: (16, 8, 33) float64, sum(dy); the serial twins agree).
Every kernel here has this property, the unfused ones included; it shows only right after
one module's source changed (its kernels recompile, the other's load from the cache).
"""

import numpy as np
from numba import prange

from .cpu import (
    ParallelKernel,
    channel_span,
    chunk_count,
    chunk_span,
    elementwise_kernel,
    grad_input,
    grad_sums,
    group_affine_coefficients,
    group_grad_coefficients,
    group_moments,
    group_splits,
    grouped,
    is_dense,
    loop_layout,
    row_span,
    thread_count,
)
from .scalar import relu, relu_grad


@elementwise_kernel
def _spatial_affine_relu(x, group_size, a, b, out, nchunks):
    """:func:`~bnbench.kernels.cpu._spatial_affine` storing ``relu(x * a + b)``."""
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
                    dst[i] = relu(src[i] * ac + bc)


@elementwise_kernel
def _dense_affine_relu(x, group_size, a, b, out):
    for n in prange(x.shape[0]):
        src, dst = x[n], out[n]
        ag, bg = a[n // group_size], b[n // group_size]
        for c in range(x.shape[1]):
            dst[c] = relu(src[c] * ag[c] + bg[c])


@ParallelKernel
def _spatial_grad_sums_relu(dy, y, x, group_size, splits, dz):
    # _spatial_grad_sums of the masked dy: each row masked into `dz`, then reduced by
    # the unfused kernel's own loop on it (see the module docstring)
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
                gr, yr, row = dy[n, c], y[n, c], dz[n, c]
                for i in range(L):
                    row[i] = relu_grad(gr[i], yr[i])
                s = 0.0
                q = 0.0
                for i in range(L):
                    g = dz[n, c, i]
                    s += g
                    q += g * np.float64(x[n, c, i])
                sum_dy[u, c] += s
                sum_dy_x[u, c] += q
    return sum_dy, sum_dy_x


@ParallelKernel
def _dense_grad_sums_relu(dy, y, x, splits, dz):
    # _dense_grad_sums of the masked dy, stored to `dz` row by row and summed by the
    # unfused kernel's loop: with the mask and the stores in the summing loop, it did not
    # vectorise ((128, 28, 28, 16) channels-last backward 2.86 ms against 2.52 unfused)
    groups, G, C = dy.shape
    sum_dy = np.zeros((groups * splits, C))
    sum_dy_x = np.zeros((groups * splits, C))
    for u in prange(groups * splits):
        dyg, yg, xg, zg = dy[u // splits], y[u // splits], x[u // splits], dz[u // splits]
        lo, hi = chunk_span(u % splits, splits, G)
        s, q = sum_dy[u], sum_dy_x[u]
        n = lo
        while n + 4 <= hi:
            z0, z1, z2, z3 = zg[n], zg[n + 1], zg[n + 2], zg[n + 3]
            v0, v1, v2, v3 = xg[n], xg[n + 1], xg[n + 2], xg[n + 3]
            for r in range(4):
                d, yr, z = dyg[n + r], yg[n + r], zg[n + r]
                for c in range(C):
                    z[c] = relu_grad(d[c], yr[c])
            for c in range(C):
                s[c] += (np.float64(z0[c]) + z1[c]) + (np.float64(z2[c]) + z3[c])
                q[c] += (z0[c] * np.float64(v0[c]) + z1[c] * np.float64(v1[c])) + (
                    z2[c] * np.float64(v2[c]) + z3[c] * np.float64(v3[c])
                )
            n += 4
        for m in range(n, hi):
            for c in range(C):
                zg[m, c] = relu_grad(dyg[m, c], yg[m, c])
            for c in range(C):
                s[c] += zg[m, c]
                q[c] += zg[m, c] * np.float64(xg[m, c])
    return sum_dy, sum_dy_x


@elementwise_kernel
def _relu_grad_pass(dy, y, dz):
    """``dz = relu_grad(dy, y)`` over flat arrays: :class:`bnbench.nn.ReLU`'s backward."""
    for i in prange(dy.size):
        dz[i] = relu_grad(dy[i], y[i])


def affine_relu(x, a, b, out):
    """``out = relu(x * a[0, c] + b[0, c])``; ``a``, ``b`` float64 ``(1, C)``."""
    x2, out2 = loop_layout(x, out)
    if is_dense(x):
        _dense_affine_relu(x2, x.shape[0], a, b, out2)
    else:
        _spatial_affine_relu(x2, x.shape[0], a, b, out2, chunk_count(x))


def forward_train_relu(x, weight, bias, eps, out):
    mean, var = group_moments(x, x.shape[0])
    scale, shift, invstd = group_affine_coefficients(weight, bias, mean, var, eps)
    affine_relu(x, scale, shift, out)
    return mean[0], var[0], invstd[0]


def forward_eval_relu(x, weight, bias, mean, var, eps, out):
    scale, shift, _ = group_affine_coefficients(weight, bias, mean[None], var[None], eps)
    affine_relu(x, scale, shift, out)


def backward_relu(dy, y, x, weight, mean, invstd, out):
    """The gradient sums of the masked ``dy`` in one pass that also stores it (to a
    scratch array, as the unfused ReLU backward would), then the unfused kernels'
    coefficients and input-gradient pass on it: one pass over the data fewer than the
    ReLU backward and the BN backward, and those kernels' arithmetic by construction."""
    N, L = x.shape[0], x.shape[2]
    splits = group_splits(x, N)
    dz = np.empty_like(dy)
    if thread_count(x) == 1 < thread_count(x, elementwise=True):
        # the sums run serially at this size while elementwise passes run in parallel:
        # masking inside the sums would serialise the mask too (the MLP's (256, 100) and
        # (512, 100) backward: 0.92x the unfused time), so the mask runs as its own
        # parallel pass, then the unfused sums: the unfused pair exactly
        _relu_grad_pass(dy.reshape(-1), y.reshape(-1), dz.reshape(-1))
        sums = grad_sums(dz, x, N)[:2]
    elif is_dense(x):
        dy3, y3, x3, dz3 = grouped(N, *loop_layout(dy, y, x, dz))
        sums = _dense_grad_sums_relu(dy3, y3, x3, splits, dz3)
    else:
        sums = _spatial_grad_sums_relu(dy, y, x, N, splits, dz)
    a, b, d, dweight, dbias = group_grad_coefficients(
        *sums, splits, weight, mean[None], invstd[None], N * L
    )
    grad_input(dz, x, N, a, b, d, out)
    return dweight, dbias
