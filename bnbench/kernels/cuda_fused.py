"""Batch norm followed by a ReLU, fused, on CUDA (part of the ``cuda`` backend: its
module re-exports the three functions at the end).

The statistics and coefficient kernels are :mod:`bnbench.kernels.cuda`'s own; only the
data passes differ, each the unfused kernel's with the ReLU
(:func:`~bnbench.kernels.scalar.relu`) applied to the float64 value before the store, or
the gradient masked by the fused output (:func:`~bnbench.kernels.scalar.relu_grad`)
where it is read. Same operations, same reduction trees: in the simulator, bit for bit
BN then a ReLU layer.
"""

import functools
from types import SimpleNamespace

import numpy as np
from numba import cuda

from .. import config
from . import scalar
from .cuda import (
    as_row,
    blocks_per_channel,
    channel_grid,
    configured_kernels,
    deliver,
    device_function,
    elementwise_grid,
    empty_like,
    is_device,
    moment_partials,
    on_device,
)

_relu = device_function(scalar.relu)
_relu_grad = device_function(scalar.relu_grad)


@functools.cache
def kernels(tpb):
    """The fused data-pass kernels for ``tpb`` threads per block: a namespace."""

    @cuda.jit
    def affine_relu(x, group_size, scale, shift, out):
        C, L = x.shape[1], x.shape[2]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, x.size, step):
            n, r = i // (C * L), i % (C * L)
            c, j = r // L, r % L
            g = n // group_size
            out[n, c, j] = _relu(x[n, c, j] * scale[g, c] + shift[g, c])

    @cuda.jit
    def grad_partial_relu(dy, y, x, group_size, per_block, sum_dy, sum_dy_x):
        """``grad_partial`` of the masked ``dy``."""
        nb = sum_dy.shape[2]
        g, b = cuda.blockIdx.x // nb, cuda.blockIdx.x % nb
        c, t = cuda.blockIdx.y, cuda.threadIdx.x
        L = x.shape[2]
        M = group_size * L
        n0 = g * group_size
        lo = b * per_block
        hi = min(lo + per_block, M)
        s, q = 0.0, 0.0
        for i in range(lo + t, hi, tpb):
            n, j = n0 + i // L, i % L
            v = np.float64(_relu_grad(dy[n, c, j], y[n, c, j]))
            s += v
            q += v * x[n, c, j]
        ss = cuda.shared.array(tpb, np.float64)
        sq = cuda.shared.array(tpb, np.float64)
        ss[t], sq[t] = s, q
        cuda.syncthreads()
        k = tpb // 2
        while k > 0:
            if t < k:
                ss[t] += ss[t + k]
                sq[t] += sq[t + k]
            cuda.syncthreads()
            k //= 2
        if t == 0:
            sum_dy[g, c, b], sum_dy_x[g, c, b] = ss[0], sq[0]

    @cuda.jit
    def grad_input_relu(dy, y, x, group_size, a, b, d, out):
        C, L = x.shape[1], x.shape[2]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, x.size, step):
            n, r = i // (C * L), i % (C * L)
            c, j = r // L, r % L
            g = n // group_size
            gr = _relu_grad(dy[n, c, j], y[n, c, j])
            out[n, c, j] = gr * a[g, c] + x[n, c, j] * b[g, c] + d[g, c]

    return SimpleNamespace(
        affine_relu=affine_relu, grad_partial_relu=grad_partial_relu,
        grad_input_relu=grad_input_relu,
    )  # fmt: skip


def _f():
    return kernels(config.CUDA_THREADS_PER_BLOCK)


def forward_train_relu(x, weight, bias, eps, out):
    k, host = configured_kernels(), not is_device(x)
    dx, dout = on_device(x), (empty_like(x) if host else out)
    N, C, _ = x.shape
    parts = moment_partials(dx, N)
    mean, var, invstd = (cuda.device_array((1, C), x.dtype) for _ in range(3))
    scale, shift = cuda.device_array((1, C)), cuda.device_array((1, C))
    k.moments_finish[channel_grid(C)](
        *parts, on_device(weight), on_device(bias), eps, mean, var, invstd, scale, shift
    )
    _f().affine_relu[elementwise_grid(x.size)](dx, N, scale, shift, dout)
    return tuple(s[0] for s in deliver(host, dout, out, mean, var, invstd))


def forward_eval_relu(x, weight, bias, mean, var, eps, out):
    k, host = configured_kernels(), not is_device(x)
    dx, dout = on_device(x), (empty_like(x) if host else out)
    C = x.shape[1]
    scale, shift = cuda.device_array((1, C)), cuda.device_array((1, C))
    k.eval_coefficients[channel_grid(C)](
        on_device(weight), on_device(bias), on_device(mean), on_device(var), eps, scale, shift
    )
    _f().affine_relu[elementwise_grid(x.size)](dx, x.shape[0], scale, shift, dout)
    deliver(host, dout, out)


def backward_relu(dy, y, x, weight, mean, invstd, out):
    k, f, host = configured_kernels(), _f(), not is_device(x)
    ddy, dyy, dx = on_device(dy), on_device(y), on_device(x)
    dout = empty_like(x) if host else out
    N, C, L = x.shape
    nb, per_block = blocks_per_channel(N * L, C)
    sums = [cuda.device_array((1, C, nb)) for _ in range(2)]
    grid = (nb, C), config.CUDA_THREADS_PER_BLOCK
    f.grad_partial_relu[grid](ddy, dyy, dx, N, per_block, *sums)
    a, b, d = (cuda.device_array((1, C)) for _ in range(3))
    dweight, dbias = cuda.device_array(C, x.dtype), cuda.device_array(C, x.dtype)
    k.grad_finish[channel_grid(C)](
        *sums, on_device(weight), on_device(as_row(mean)), on_device(as_row(invstd)), float(N * L),
        a, b, d, dweight, dbias,
    )  # fmt: skip
    f.grad_input_relu[elementwise_grid(x.size)](ddy, dyy, dx, N, a, b, d, dout)
    return deliver(host, dout, out, dweight, dbias)
