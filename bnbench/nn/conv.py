"""1-D convolution on channels-last data: Numba im2col/col2im around one BLAS matmul.

Channels-last ``(N, L, C)`` makes the im2col row of an output position one contiguous
run of ``k * C`` input values (the ``k`` consecutive positions it covers, all channels),
so gathering the columns is a copy of contiguous runs, and the matmul's result
``(N * L_out, C_out)`` is already the channels-last output: no transposes. Channel-first
``(N, C, L)`` (PyTorch's layout) is accepted too and costs a transpose of the input and of
the output each way.

The weight is stored as PyTorch stores it, ``(C_out, C_in * k)`` with index
``c_in * k + j``, so initialisation and checkpoints match ``torch.nn.Conv1d``; the
channels-last column order ``j * C_in + c_in`` is a permuted copy of it (``C_out * C_in *
k`` values) per call.
"""

import numpy as np
from numba import prange

from ..kernels.cpu import elementwise_kernel
from .blas import add_bias, matmul, matmul_tn


@elementwise_kernel
def _im2col(x, k, stride, padding, cols):
    """``cols[n, l, j * C + c] = x[n, l * stride + j - padding, c]``, 0 outside ``x``.
    x ``(N, L, C)``, cols ``(N, L_out, k * C)``."""
    N, L, C = x.shape
    L_out = cols.shape[1]
    for n in prange(N):
        for lo in range(L_out):
            for j in range(k):
                pos = lo * stride + j - padding
                base = j * C
                if 0 <= pos < L:
                    for c in range(C):
                        cols[n, lo, base + c] = x[n, pos, c]
                else:
                    for c in range(C):
                        cols[n, lo, base + c] = 0


@elementwise_kernel
def _col2im(dcols, k, stride, padding, dx):
    """The adjoint of :func:`_im2col`: ``dx[n, pos, c] = sum of dcols`` over every
    ``(l, j)`` with ``l * stride + j - padding = pos``."""
    N, L, C = dx.shape
    L_out = dcols.shape[1]
    for n in prange(N):
        for pos in range(L):
            for c in range(C):
                dx[n, pos, c] = 0
        for lo in range(L_out):
            for j in range(k):
                pos = lo * stride + j - padding
                if 0 <= pos < L:
                    base = j * C
                    for c in range(C):
                        dx[n, pos, c] += dcols[n, lo, base + c]


def output_length(length, kernel_size, stride, padding):
    """``L_out = (L + 2 * padding - kernel_size) // stride + 1`` (PyTorch's formula)."""
    return (length + 2 * padding - kernel_size) // stride + 1


class Conv1dCore:
    """The arithmetic of :class:`bnbench.nn.Conv1d` on channels-last ``(N, L, C_in)``
    arrays: ``forward`` keeps the columns for ``backward``."""

    def __init__(self, kernel_size, stride, padding):
        self.k, self.stride, self.padding = kernel_size, stride, padding

    def weight_columns(self, weight):
        """``(C_out, C_in * k)`` in PyTorch order -> ``(C_out, k * C_in)`` column order."""
        C_out = weight.shape[0]
        return weight.reshape(C_out, -1, self.k).transpose(0, 2, 1).reshape(C_out, -1)

    def forward(self, x, weight, bias, relu=False):
        N, L, C_in = x.shape
        L_out = output_length(L, self.k, self.stride, self.padding)
        if L_out < 1:
            raise ValueError(
                f"x of length {L} is too short for kernel_size {self.k} with padding "
                f"{self.padding} (output length {L_out})"
            )
        self.cols = np.empty((N, L_out, self.k * C_in), x.dtype)
        _im2col(np.ascontiguousarray(x), self.k, self.stride, self.padding, self.cols)
        self.w = self.weight_columns(weight)
        y = matmul(self.cols.reshape(N * L_out, -1), self.w.T)
        if bias is not None:
            add_bias(y, bias, relu)  # relu: a folded layer's (bnbench.nn.fold_batch_norm)
        return y.reshape(N, L_out, -1)

    def backward(self, dy, x_shape, input_grad=True):
        """``dy`` ``(N, L_out, C_out)`` -> ``(dx, dweight)``, dweight in PyTorch order;
        ``dx`` is ``None`` unless ``input_grad``."""
        N, L_out, C_out = dy.shape
        dy2 = dy.reshape(N * L_out, C_out)
        dw = matmul_tn(dy2, self.cols.reshape(N * L_out, -1))  # (C_out, k * C_in)
        dweight = dw.reshape(C_out, self.k, -1).transpose(0, 2, 1).reshape(C_out, -1)
        if not input_grad:
            return None, dweight
        dcols = matmul(dy2, self.w).reshape(N, L_out, -1)
        dx = np.empty(x_shape, dy.dtype)
        _col2im(dcols, self.k, self.stride, self.padding, dx)
        return dx, dweight
