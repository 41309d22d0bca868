"""2-D convolution on channels-last images: Numba im2col/col2im around BLAS products.

Channels-last ``(N, H, W, C)`` makes the im2col row of an output position ``kh`` runs of
``kw * C`` contiguous input values (row ``i`` of the window: its ``kw`` neighbouring
pixels, all channels), so gathering the columns is ``kh`` contiguous copies, and the
product's result ``(N * H_out * W_out, C_out)`` reshaped is already the channels-last
output: no transposes. Channel-first ``(N, C, H, W)`` (PyTorch's layout) is accepted too
and costs a transpose of the input and of the output each way.

The columns are never built for the whole batch: each thread takes a range of samples
and, a block of :data:`BLOCK_BYTES` of columns at a time, gathers them and multiplies
(one BLAS call per block, from inside the kernel, BLAS held at one thread), so the
columns stay in the core's L2 cache; the backward pass gathers them again for the
weight gradient instead of keeping them. The whole-batch columns of the second layer of
:func:`~bnbench.nn.cnn2d` at batch 128 are 14.5 MB, and writing then reading them cost
more than the products: forward 10.0 ms whole-batch, 4.6 ms in blocks; backward 17.8 ms
whole-batch (columns kept), 12.3 ms in blocks with the gather repeated (float32, one
thread). Per-block products over a thread's samples are summed in a fixed order, so
results are deterministic for a fixed input and thread count.

The weight is stored exactly as PyTorch stores it, ``(C_out, C_in, kh, kw)``, so
initialisation (the same uniform draws in the same order) and checkpoints match
``torch.nn.Conv2d`` with no reshape; the column order ``(i * kw + j) * C_in + c_in`` is a
permuted copy of it (``C_out * C_in * kh * kw`` values) per call.
"""

import numba
import numpy as np
from numba import prange

from .. import config
from ..kernels.cpu import elementwise_kernel
from . import blas
from .blas import add_bias
from .flat import add_run, copy_run, copy_strided, int_pair, u64, zero_run
from .layers import Layer, no_relu_backward, uniform_init

#: Bytes of columns gathered and multiplied at a time, per thread: well inside a core's L2
#: cache (512 KiB here) beside the input and output rows they come from and go to.
#: float32, one thread, cnn2d's three convolutions at batch 128, forward + backward ms
#: for 64 / 128 / 256 / 512 KiB: 6.7 / 7.1 / 6.9 / 7.0, 17.6 / 17.5 / 16.3 / 16.1, 9.8 /
#: 8.3 / 7.6 / 8.5 (one block for the whole batch: 12.7, 53, 20).
BLOCK_BYTES = 1 << 18
#: Convolutions of fewer multiply-adds run the kernels' serial twins (one chunk): a
#: multiply-add costs far less than an elementwise pass's element, so the elementwise
#: size rule would keep e.g. cnn2d's third convolution serial up to batch 20.
PARALLEL_MACS = 1 << 20


@numba.njit(inline="always")
def _valid_outputs(j, stride, padding, size, size_out):
    """The outputs ``lo <= o < hi`` whose tap ``j`` reads inside the input:
    ``0 <= o * stride + j - padding < size``."""
    lo = min(max(0, (padding - j + stride - 1) // stride), size_out)
    hi = min(size_out, (size - 1 + padding - j) // stride + 1)
    return lo, max(lo, hi)


@numba.njit(cache=config.CACHE)
def _im2col(cols, x, shape, kh, kw, sh, sw, ph, pw):
    """``cols[n, ho, wo, (i * kw + j) * C + c] = x[n, ho * sh + i - ph, wo * sw + j - pw,
    c]``, 0 outside ``x``; flat arrays, cols of ``(N, H_out, W_out, kh * kw * C)``, x of
    ``(N, H, W, C)``, ``shape = (N, H, W, C, H_out, W_out)``.

    Each window row ``i`` is one run of ``kw * C`` values of ``x`` (clipped at the
    borders). With one channel those runs are too short to pay for a loop each (2.6 ms
    against 1.0 ms on (128, 28, 28, 1), 3x3), so the columns are filled one kernel tap at
    a time instead: a strided copy along the output row."""
    N, H, W, C, H_out, W_out = shape
    run = kw * C
    K = kh * run
    for n in range(N):
        for ho in range(H_out):
            row0 = (n * H_out + ho) * W_out * K
            for i in range(kh):
                h = ho * sh + i - ph
                if h < 0 or h >= H:
                    for wo in range(W_out):
                        zero_run(cols, u64(row0 + wo * K + i * run), u64(run))
                elif C == 1:
                    xrow = (n * H + h) * W
                    for j in range(kw):
                        lo, hi = _valid_outputs(j, sw, pw, W, W_out)
                        for wo in range(lo):
                            cols[u64(row0 + wo * K + i * kw + j)] = 0
                        for wo in range(hi, W_out):
                            cols[u64(row0 + wo * K + i * kw + j)] = 0
                        copy_strided(cols, u64(row0 + lo * K + i * kw + j), u64(K), x,
                                      u64(xrow + lo * sw + j - pw), u64(sw), u64(hi - lo))  # fmt: skip
                else:
                    xrow = (n * H + h) * W
                    for wo in range(W_out):
                        w0 = wo * sw - pw
                        a, b = max(w0, 0), max(min(w0 + kw, W), max(w0, 0))
                        r = row0 + wo * K + i * run
                        left, mid = (a - w0) * C, (b - a) * C
                        zero_run(cols, u64(r), u64(left))
                        copy_run(cols, u64(r + left), x, u64((xrow + a) * C), u64(mid))
                        zero_run(cols, u64(r + left + mid), u64(run - left - mid))


@numba.njit(cache=config.CACHE)
def _col2im(dcols, dx, shape, kh, kw, sh, sw, ph, pw):
    """The adjoint of :func:`_im2col`: ``dx[n, h, w, c]`` is the sum of every ``dcols``
    value that :func:`_im2col` copied from ``x[n, h, w, c]`` (flat arrays)."""
    N, H, W, C, H_out, W_out = shape
    run = kw * C
    K = kh * run
    for n in range(N):
        zero_run(dx, u64(n * H * W * C), u64(H * W * C))
        for ho in range(H_out):
            row0 = (n * H_out + ho) * W_out * K
            for i in range(kh):
                h = ho * sh + i - ph
                if 0 <= h < H:
                    xrow = (n * H + h) * W
                    for wo in range(W_out):
                        w0 = wo * sw - pw
                        a, b = max(w0, 0), max(min(w0 + kw, W), max(w0, 0))
                        d = row0 + wo * K + i * run + (a - w0) * C
                        add_run(dx, u64((xrow + a) * C), dcols, u64(d), u64((b - a) * C))


@numba.njit(cache=config.CACHE)
def _forward_samples(y, x, w_t, shape, geometry, lo, hi, block):
    """Samples ``lo <= n < hi`` of :func:`_forward`, ``block`` at a time."""
    N, H, W, C, H_out, W_out = shape
    R, K, HWC = H_out * W_out, w_t.shape[0], H * W * C
    cols = np.empty(block * R * K, x.dtype)
    for n in range(lo, hi, block):
        m = min(block, hi - n)
        c = cols[: m * R * K]
        _im2col(c, x[n * HWC : (n + m) * HWC], (m, H, W, C, H_out, W_out), *geometry)
        np.dot(c.reshape(m * R, K), w_t, y[n * R : (n + m) * R])


@numba.njit(cache=config.CACHE)
def _backward_samples(dy, x, w, dx, dw, shape, geometry, lo, hi, block, input_grad):
    """Samples ``lo <= n < hi`` of :func:`_backward`; ``dw`` gets their part."""
    N, H, W, C, H_out, W_out = shape
    C_out, K = w.shape
    R, HWC = H_out * W_out, H * W * C
    cols = np.empty(block * R * K, x.dtype)
    part = np.empty((C_out, K), x.dtype)
    dw[...] = 0
    for n in range(lo, hi, block):
        m = min(block, hi - n)
        c = cols[: m * R * K].reshape(m * R, K)
        d = dy[n * R : (n + m) * R]
        sub = (m, H, W, C, H_out, W_out)
        _im2col(c.reshape(-1), x[n * HWC : (n + m) * HWC], sub, *geometry)
        np.dot(d.T, c, part)
        dw += part
        if input_grad:
            np.dot(d, w, c)
            _col2im(c.reshape(-1), dx[n * HWC : (n + m) * HWC], sub, *geometry)


# The parallel loops only split the samples, one call each: the twins share the serial
# code. Compiling a parallel twin still takes 6-8 s (the serial twin 1.5-2 s): the
# callees are optimised again inside it, the one-channel path of _im2col alone 4 s of
# that; with the whole body inside the parallel loop, backward took 13 s.


@elementwise_kernel
def _forward(y, x, w_t, shape, geometry, nchunks, block):
    """``y = im2col(x) @ w_t`` (``y`` ``(N * H_out * W_out, C_out)``, ``x`` flat), the
    samples in ``nchunks`` ranges, ``block`` samples of columns at a time."""
    N = shape[0]
    for k in prange(nchunks):
        lo, hi = k * N // nchunks, (k + 1) * N // nchunks
        _forward_samples(y, x, w_t, shape, geometry, lo, hi, block)


@elementwise_kernel
def _backward(dy, x, w, dx, dw, shape, geometry, nchunks, block, input_grad):
    """``dw[k]``: chunk ``k``'s part of ``dy.T @ im2col(x)``; with ``input_grad``, ``dx =
    col2im(dy @ w)`` (flat). Chunks and blocks as in :func:`_forward`."""
    N = shape[0]
    for k in prange(nchunks):
        lo, hi = k * N // nchunks, (k + 1) * N // nchunks
        _backward_samples(dy, x, w, dx, dw[k], shape, geometry, lo, hi, block, input_grad)


def output_size(size, kernel_size, stride, padding):
    """``(size + 2 * padding - kernel_size) // stride + 1`` per axis (PyTorch's formula)."""
    return tuple((s + 2 * p - k) // st + 1
                 for s, k, st, p in zip(size, kernel_size, stride, padding, strict=True))  # fmt: skip


class Conv2d(Layer):
    """2-D convolution (PyTorch's ``Conv2d`` arithmetic, no dilation or groups).

    With ``channels_last=True`` ``(N, H, W, C_in)`` -> ``(N, H_out, W_out, C_out)``, the
    fast layout (no transposes); else channel-first ``(N, C_in, H, W)`` -> ``(N, C_out,
    H_out, W_out)``. ``H_out = (H + 2 * padding - kh) // stride + 1`` (likewise W).
    ``kernel_size``, ``stride`` and ``padding`` are an int or an ``(h, w)`` pair. Weight
    ``(C_out, C_in, kh, kw)`` as in PyTorch. See :mod:`bnbench.nn.conv2d`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, rng, stride=1, padding=0,
                 bias=True, dtype=np.float32, channels_last=False):  # fmt: skip
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = int_pair(stride, "stride")
        self.padding = int_pair(padding, "padding")
        for name, (lo, what) in {"kernel_size": (1, "positive"), "stride": (1, "positive"),
                                 "padding": (0, "non-negative")}.items():  # fmt: skip
            if min(getattr(self, name)) < lo:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.channels_last = channels_last
        kh, kw = self.kernel_size
        fan_in = in_channels * kh * kw
        shape = (out_channels, in_channels, kh, kw)
        self._param("weight", uniform_init(rng, shape, fan_in, dtype))
        if bias:
            self._param("bias", uniform_init(rng, out_channels, fan_in, dtype))

    def _check(self, x):
        layout = "(N, H, W, C_in)" if self.channels_last else "(N, C_in, H, W)"
        if x.ndim != 4 or x.shape[3 if self.channels_last else 1] != self.in_channels:
            raise ValueError(
                f"x must have shape {layout} with C_in = {self.in_channels}, got {x.shape}"
            )
        spatial = x.shape[1:3] if self.channels_last else x.shape[2:]
        out = output_size(spatial, self.kernel_size, self.stride, self.padding)
        if min(out) < 1:
            raise ValueError(
                f"x of spatial size {tuple(spatial)} is smaller than kernel_size "
                f"{self.kernel_size} with padding {self.padding} (output size {out})"
            )
        return out

    def _is_pointwise(self):
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def _plan(self, kernel, x_shape, out):
        """``(kernel twin, shape, geometry, nchunks, block)``."""
        N, H, W, C = x_shape
        C_out, K = self.w.shape
        rows = out[0] * out[1]
        threads = numba.get_num_threads()
        parallel = threads > 1 and N > 1 and N * rows * C_out * K >= PARALLEL_MACS
        block = max(1, BLOCK_BYTES // (rows * K * self.w.itemsize))
        geometry = (*self.kernel_size, *self.stride, *self.padding)
        nchunks = min(N, threads) if parallel else 1
        twin = kernel.parallel if parallel else kernel.serial
        return twin, (N, H, W, C, *out), geometry, nchunks, block

    def forward(self, x, mode):
        out = self._check(x)
        self.x = np.ascontiguousarray(x if self.channels_last else x.transpose(0, 2, 3, 1))
        N, H, W, C = self.x.shape
        w = self.params["weight"]
        self.w = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)  # (C_out, kh * kw * C_in)
        if self._is_pointwise():
            y = blas.matmul(self.x.reshape(N * H * W, C), self.w.T)
        else:
            y = np.empty((N * out[0] * out[1], self.w.shape[0]), x.dtype)
            kernel, *plan = self._plan(_forward, self.x.shape, out)
            blas.run_parallel(kernel, y, self.x.reshape(-1), np.ascontiguousarray(self.w.T), *plan)
        if "bias" in self.params:
            add_bias(y, self.params["bias"], self.relu)
        y = y.reshape(N, *out, -1)
        return y if self.channels_last else np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def backward(self, dy, input_grad=True):
        no_relu_backward(self)
        dy = np.ascontiguousarray(dy if self.channels_last else dy.transpose(0, 2, 3, 1))
        N, H_out, W_out, C_out = dy.shape
        dy2 = dy.reshape(-1, C_out)
        if "bias" in self.params:
            self.grads["bias"][...] = dy2.sum(axis=0)
        dx = None
        if self._is_pointwise():
            x2 = self.x.reshape(-1, self.in_channels)
            dw = blas.matmul_tn(dy2, x2)
            if input_grad:
                dx = blas.matmul(dy2, self.w).reshape(self.x.shape)
        else:
            kernel, *plan = self._plan(_backward, self.x.shape, (H_out, W_out))
            dw = np.empty((plan[2], *self.w.shape), dy.dtype)
            dx = np.empty(self.x.shape, dy.dtype) if input_grad else np.empty(0, dy.dtype)
            blas.run_parallel(kernel, dy2, self.x.reshape(-1), self.w, dx.reshape(-1), dw,
                           *plan, input_grad)  # fmt: skip
            dw = dw.sum(axis=0) if len(dw) > 1 else dw[0]
        kh, kw = self.kernel_size
        self.grads["weight"][...] = dw.reshape(C_out, kh, kw, -1).transpose(0, 3, 1, 2)
        if not input_grad:
            return None
        return dx if self.channels_last else dx.transpose(0, 3, 1, 2)
