"""2-D max and average pooling on channels-last images (PyTorch semantics, no padding).

Each output pixel reads a ``kh x kw`` window of input pixels; channels-last makes each
read one contiguous run of ``C`` values, so the inner loop runs over channels. The
kernels are parallel over samples (each sample's output and gradient are its own, so
overlapping windows never race) with serial twins for small inputs.
"""

import numpy as np
from numba import prange

from ..kernels.cpu import elementwise_kernel
from .conv2d import output_size
from .flat import int_pair, u64, zero_run
from .layers import Layer

# Flat arrays, unsigned offsets (:data:`bnbench.nn.flat.u64`), as in :mod:`bnbench.nn.conv2d`.


@elementwise_kernel
def _max_pool(x, shape, kh, kw, sh, sw, y, idx):
    """``y[n, ho, wo, c]``: the window's maximum; ``idx``: its flat position ``h * W + w``
    in the input, the first maximum in row-major window order (as PyTorch), or the last NaN
    (PyTorch's ``val > max || isnan(val)``, so a NaN propagates). Flat arrays, ``shape =
    (N, H, W, C, H_out, W_out)``. The update is branch-free (``where``s on a bitwise
    ``|``): 2x2 windows of (128, 28, 28, 16) float32, one thread, 2.0 ms against 3.3 ms
    for ``if v > m or v != v: ...``; of (128, 14, 14, 32) 0.74 against 1.6 ms."""
    N, H, W, C, H_out, W_out = shape
    for n in prange(N):
        for ho in range(H_out):
            for wo in range(W_out):
                o = ((n * H_out + ho) * W_out + wo) * C
                p = ho * sh * W + wo * sw
                s = (n * H * W + p) * C
                for c in range(C):
                    y[u64(o + c)] = x[u64(s + c)]
                    idx[u64(o + c)] = p
                for i in range(kh):
                    for j in range(kw):
                        if i == 0 and j == 0:
                            continue
                        p = (ho * sh + i) * W + wo * sw + j
                        s, p32 = (n * H * W + p) * C, np.int32(p)
                        for c in range(C):
                            v, m = x[u64(s + c)], y[u64(o + c)]
                            take = (v > m) | (v != v)
                            y[u64(o + c)] = v if take else m
                            idx[u64(o + c)] = p32 if take else idx[u64(o + c)]


@elementwise_kernel
def _max_pool_backward(dx, dy, idx, shape):
    """``dx[n, idx, c] += dy[n, ho, wo, c]`` (flat arrays)."""
    N, H, W, C, H_out, W_out = shape
    for n in prange(N):
        zero_run(dx, u64(n * H * W * C), u64(H * W * C))
        for q in range(H_out * W_out):
            o = (n * H_out * W_out + q) * C
            for c in range(C):
                dx[u64((n * H * W + idx[u64(o + c)]) * C + c)] += dy[u64(o + c)]


@elementwise_kernel
def _avg_pool(x, shape, kh, kw, sh, sw, y):
    """``y[n, ho, wo, c]``: the window's sum divided by ``kh * kw`` (flat arrays)."""
    N, H, W, C, H_out, W_out = shape
    count = kh * kw
    for n in prange(N):
        for ho in range(H_out):
            for wo in range(W_out):
                o = ((n * H_out + ho) * W_out + wo) * C
                zero_run(y, u64(o), u64(C))
                for i in range(kh):
                    for j in range(kw):
                        s = ((n * H + ho * sh + i) * W + wo * sw + j) * C
                        for c in range(C):
                            y[u64(o + c)] += x[u64(s + c)]
                for c in range(C):
                    y[u64(o + c)] /= count


@elementwise_kernel
def _avg_pool_backward(dx, dy, shape, kh, kw, sh, sw):
    """Each ``dy[n, ho, wo, c] / (kh * kw)`` added to its window of ``dx`` (flat)."""
    N, H, W, C, H_out, W_out = shape
    count = kh * kw
    for n in prange(N):
        zero_run(dx, u64(n * H * W * C), u64(H * W * C))
        for ho in range(H_out):
            for wo in range(W_out):
                o = ((n * H_out + ho) * W_out + wo) * C
                for i in range(kh):
                    for j in range(kw):
                        s = ((n * H + ho * sh + i) * W + wo * sw + j) * C
                        for c in range(C):
                            dx[u64(s + c)] += dy[u64(o + c)] / count


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, channels_last=False):
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride")
        for name in ("kernel_size", "stride"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.channels_last = channels_last

    def _input(self, x):
        if x.ndim != 4:
            layout = "(N, H, W, C)" if self.channels_last else "(N, C, H, W)"
            raise ValueError(f"x must have shape {layout}, got {x.shape}")
        x = np.ascontiguousarray(x if self.channels_last else x.transpose(0, 2, 3, 1))
        out = output_size(x.shape[1:3], self.kernel_size, self.stride, (0, 0))
        if min(out) < 1:
            raise ValueError(
                f"x of spatial size {x.shape[1:3]} is smaller than kernel_size {self.kernel_size}"
            )
        self.x_shape = x.shape
        self.shape = (*x.shape, *out)  # (N, H, W, C, H_out, W_out)
        return x, np.empty((x.shape[0], *out, x.shape[3]), x.dtype)

    def _output(self, y):
        return y if self.channels_last else np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def _grad(self, dy):
        return np.ascontiguousarray(dy if self.channels_last else dy.transpose(0, 2, 3, 1))


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d(kernel_size, stride)`` (no padding, dilation or ceil mode) on
    ``(N, C, H, W)``, or with ``channels_last=True`` on ``(N, H, W, C)``, the layout the
    kernels compute in (the other costs a transpose each way); the default is
    channel-first like every layer's (:class:`~bnbench.nn.Conv2d`, ``Flatten``), so that
    layers built with defaults agree. The gradient goes to the first maximum of each
    window, as in PyTorch."""

    def forward(self, x, mode):
        x, y = self._input(x)
        self.idx = np.empty(y.size, np.int32)  # H * W < 2^31; int32 lanes beside float32
        _max_pool(x.reshape(-1), self.shape, *self.kernel_size, *self.stride, y.reshape(-1),
                  self.idx)  # fmt: skip
        return self._output(y)

    def backward(self, dy):
        dx = np.empty(self.x_shape, dy.dtype)
        _max_pool_backward(dx.reshape(-1), self._grad(dy).reshape(-1), self.idx, self.shape)
        return self._output(dx)


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d(kernel_size, stride)`` (no padding or ceil mode), layouts as
    :class:`MaxPool2d`."""

    def forward(self, x, mode):
        x, y = self._input(x)
        _avg_pool(x.reshape(-1), self.shape, *self.kernel_size, *self.stride, y.reshape(-1))
        return self._output(y)

    def backward(self, dy):
        dx = np.empty(self.x_shape, dy.dtype)
        _avg_pool_backward(dx.reshape(-1), self._grad(dy).reshape(-1), self.shape,
                           *self.kernel_size, *self.stride)  # fmt: skip
        return self._output(dx)
