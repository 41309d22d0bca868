"""Layers with explicit forward and backward passes.

Each layer: ``forward(x, mode)`` returns the output and keeps what backward needs;
``backward(dy)`` returns ``dx`` and stores parameter gradients in ``grads`` (same keys as
``params``). ``mode`` is ``"train"`` (BN uses batch statistics) or ``"eval"`` (BN uses
the statistics it was given). Arrays are float32 or float64 throughout; dense matmuls go
to BLAS (:mod:`bnbench.nn.blas`), batch norm to the bnbench kernels.
"""

import numpy as np
from numba import prange

from ..kernels.cpu import elementwise_kernel
from .blas import add_bias, linear_gradients, matmul, matmul_tn
from .conv import Conv1dCore


class Layer:
    params: dict
    grads: dict
    #: Linear, Conv1d and Conv2d: apply a ReLU after the bias, in the bias's own pass
    #: (:func:`bnbench.nn.fold_batch_norm` sets it where a folded BN had a fused ReLU). An
    #: inference-only option: ``backward`` refuses it.
    relu = False

    def __init__(self):
        self.params, self.grads = {}, {}

    def _param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)


def no_relu_backward(layer):
    if layer.relu:
        raise NotImplementedError(
            f"{type(layer).__name__} with relu=True (a folded network) is for inference only"
        )


def uniform_init(rng, shape, fan_in, dtype):
    """PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


class Linear(Layer):
    """``y = x @ W.T + b``; x ``(N, in)``, W ``(out, in)``."""

    def __init__(self, in_features, out_features, rng, bias=True, dtype=np.float32):
        super().__init__()
        self._param("weight", uniform_init(rng, (out_features, in_features), in_features, dtype))
        if bias:
            self._param("bias", uniform_init(rng, out_features, in_features, dtype))

    def forward(self, x, mode):
        self.x = x
        y = matmul(x, self.params["weight"].T)
        if "bias" in self.params:
            add_bias(y, self.params["bias"], self.relu)
        return y

    def backward(self, dy, input_grad=True):
        no_relu_backward(self)
        if "bias" in self.params:
            self.grads["bias"][...] = dy.sum(axis=0)
        if not input_grad:
            self.grads["weight"][...] = matmul_tn(dy, self.x)
            return None
        self.grads["weight"][...], dx = linear_gradients(dy, self.x, self.params["weight"])
        return dx


class Conv1d(Layer):
    """1-D convolution (PyTorch's ``Conv1d`` arithmetic and weight layout).

    Channel-first ``(N, C_in, L)`` -> ``(N, C_out, L_out)``, or with ``channels_last=True``
    ``(N, L, C_in)`` -> ``(N, L_out, C_out)``, the fast layout (no transposes);
    ``L_out = (L + 2 * padding - kernel_size) // stride + 1``. Weight ``(C_out, C_in *
    kernel_size)``, index ``c_in * kernel_size + j``. See :mod:`bnbench.nn.conv`.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        rng,
        stride=1,
        padding=0,
        bias=True,
        dtype=np.float32,
        channels_last=False,
    ):
        super().__init__()
        self.core = Conv1dCore(kernel_size, stride, padding)
        self.in_channels, self.channels_last = in_channels, channels_last
        fan_in = in_channels * kernel_size
        self._param("weight", uniform_init(rng, (out_channels, fan_in), fan_in, dtype))
        if bias:
            self._param("bias", uniform_init(rng, out_channels, fan_in, dtype))

    k = property(lambda self: self.core.k)
    stride = property(lambda self: self.core.stride)
    padding = property(lambda self: self.core.padding)

    def forward(self, x, mode):
        x_cl = x if self.channels_last or x.ndim != 3 else x.transpose(0, 2, 1)
        if x_cl.ndim != 3 or x_cl.shape[2] != self.in_channels:
            layout = "(N, L, C_in)" if self.channels_last else "(N, C_in, L)"
            raise ValueError(
                f"x must have shape {layout} with C_in = {self.in_channels}, got {x.shape}"
            )
        self.x_shape = x_cl.shape
        y = self.core.forward(x_cl, self.params["weight"], self.params.get("bias"), self.relu)
        return y if self.channels_last else np.ascontiguousarray(y.transpose(0, 2, 1))

    def backward(self, dy, input_grad=True):
        no_relu_backward(self)
        dy_cl = dy if self.channels_last else dy.transpose(0, 2, 1)
        dx, self.grads["weight"][...] = self.core.backward(
            np.ascontiguousarray(dy_cl), self.x_shape, input_grad
        )
        if "bias" in self.params:
            self.grads["bias"][...] = dy_cl.sum(axis=(0, 1))
        if dx is None or self.channels_last:
            return dx
        return dx.transpose(0, 2, 1)


@elementwise_kernel
def relu_kernel(x, y):
    """``y = x * (x > 0)`` over flat arrays, in one pass (NumPy's mask-and-multiply took
    two passes and two allocations)."""
    for i in prange(x.size):
        y[i] = x[i] if x[i] > 0 else x[i] * 0


@elementwise_kernel
def relu_backward_kernel(dy, x, dx):
    """``dx = dy * (x > 0)``."""
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * 0


class ReLU(Layer):
    """``max(x, 0)`` elementwise, as ``x * (x > 0)`` (so NaN stays NaN)."""

    def forward(self, x, mode):
        self.x = np.ascontiguousarray(x)
        y = np.empty_like(self.x)
        relu_kernel(self.x.reshape(-1), y.reshape(-1))
        return y

    def backward(self, dy):
        dy = np.ascontiguousarray(dy)
        dx = np.empty_like(dy)
        relu_backward_kernel(dy.reshape(-1), self.x.reshape(-1), dx.reshape(-1))
        return dx


class GlobalAvgPool(Layer):
    """Mean over the spatial axes: ``(N, C, *spatial)`` -> ``(N, C)``; with
    ``channels_last=True`` ``(N, *spatial, C)`` -> ``(N, C)`` (one spatial axis for 1-D
    signals, two for images)."""

    def __init__(self, channels_last=False):
        super().__init__()
        self.length_axis = 1 if channels_last else 2

    def forward(self, x, mode):
        self.shape = x.shape
        if x.ndim > 3:  # the spatial axes as one: the 3-D arithmetic
            N, C = x.shape[0], x.shape[-1 if self.length_axis == 1 else 1]
            x = x.reshape((N, -1, C) if self.length_axis == 1 else (N, C, -1))
        self.length = x.shape[self.length_axis]
        return x.mean(axis=self.length_axis)

    def backward(self, dy):
        dy = np.expand_dims(dy / self.length, self.length_axis)
        return np.repeat(dy, self.length, axis=self.length_axis).reshape(self.shape)


class Flatten(Layer):
    """``(N, ...)`` -> ``(N, prod(...))``. With ``channels_last=True`` a ``(N, L, C)``
    input is flattened in channel-first order (``c * L + l``, as PyTorch flattens
    ``(N, C, L)``; likewise ``(N, H, W, C)`` as ``(N, C, H, W)``), so the next layer's
    weights mean what they mean in PyTorch."""

    def __init__(self, channels_last=False):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x, mode):
        self.shape = x.shape
        if self.channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        if not self.channels_last:
            return dy.reshape(self.shape)
        N, *spatial, C = self.shape
        return np.ascontiguousarray(np.moveaxis(dy.reshape(N, C, *spatial), 1, -1))


class Reshape(Layer):
    """Reshape each sample to ``shape`` (e.g. ``(1, 40)`` to feed a Conv1d)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x, mode):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy):
        return dy.reshape(self.in_shape)
