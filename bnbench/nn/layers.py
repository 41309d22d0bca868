"""Layers with explicit forward and backward passes.

Each layer: ``forward(x, mode)`` returns the output and keeps what backward needs;
``backward(dy)`` returns ``dx`` and stores parameter gradients in ``grads`` (same keys as
``params``). ``mode`` is ``"train"`` (BN uses batch statistics) or ``"eval"`` (BN uses
the statistics it was given). Arrays are float32 or float64 throughout; dense matmuls go
to NumPy's BLAS, batch norm to the bnbench kernels.
"""

import numpy as np


class Layer:
    params: dict
    grads: dict

    def __init__(self):
        self.params, self.grads = {}, {}

    def _param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)


def _uniform_init(rng, shape, fan_in, dtype):
    """PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


class Linear(Layer):
    """``y = x @ W.T + b``; x ``(N, in)``, W ``(out, in)``."""

    def __init__(self, in_features, out_features, rng, bias=True, dtype=np.float32):
        super().__init__()
        self._param("weight", _uniform_init(rng, (out_features, in_features), in_features, dtype))
        if bias:
            self._param("bias", _uniform_init(rng, out_features, in_features, dtype))

    def forward(self, x, mode):
        self.x = x
        y = x @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def backward(self, dy):
        self.grads["weight"][...] = dy.T @ self.x
        if "bias" in self.params:
            self.grads["bias"][...] = dy.sum(axis=0)
        return dy @ self.params["weight"]


class Conv1d(Layer):
    """1-D convolution by im2col and one matmul; x ``(N, C_in, L)`` -> ``(N, C_out, L_out)``,
    ``L_out = (L + 2 * padding - kernel_size) // stride + 1``."""

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
    ):
        super().__init__()
        self.k, self.stride, self.padding = kernel_size, stride, padding
        fan_in = in_channels * kernel_size
        self._param("weight", _uniform_init(rng, (out_channels, fan_in), fan_in, dtype))
        if bias:
            self._param("bias", _uniform_init(rng, out_channels, fan_in, dtype))

    def _cols(self, x):
        xp = np.pad(x, ((0, 0), (0, 0), (self.padding, self.padding)))
        L_out = (xp.shape[2] - self.k) // self.stride + 1
        win = np.lib.stride_tricks.sliding_window_view(xp, self.k, axis=2)
        win = win[:, :, : (L_out - 1) * self.stride + 1 : self.stride]  # (N, C, L_out, k)
        return np.ascontiguousarray(win.transpose(0, 2, 1, 3)).reshape(x.shape[0], L_out, -1)

    def forward(self, x, mode):
        self.x_shape = x.shape
        self.cols = self._cols(x)  # (N, L_out, C_in * k)
        y = self.cols @ self.params["weight"].T  # (N, L_out, C_out)
        if "bias" in self.params:
            y += self.params["bias"]
        return np.ascontiguousarray(y.transpose(0, 2, 1))

    def backward(self, dy):
        N, C_in, L = self.x_shape
        dy_t = dy.transpose(0, 2, 1)  # (N, L_out, C_out)
        self.grads["weight"][...] = np.tensordot(dy_t, self.cols, axes=([0, 1], [0, 1]))
        if "bias" in self.params:
            self.grads["bias"][...] = dy.sum(axis=(0, 2))
        dcols = (dy_t @ self.params["weight"]).reshape(N, -1, C_in, self.k)
        dxp = np.zeros((N, C_in, L + 2 * self.padding), dtype=dy.dtype)
        L_out = dcols.shape[1]
        for j in range(self.k):  # scatter each kernel tap back onto the padded input
            stop = j + (L_out - 1) * self.stride + 1
            dxp[:, :, j : stop : self.stride] += dcols[:, :, :, j].transpose(0, 2, 1)
        return dxp[:, :, self.padding : self.padding + L]


class ReLU(Layer):
    def forward(self, x, mode):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask


class GlobalAvgPool(Layer):
    """Mean over the length axis: ``(N, C, L)`` -> ``(N, C)``."""

    def forward(self, x, mode):
        self.length = x.shape[2]
        return x.mean(axis=2)

    def backward(self, dy):
        return np.repeat(dy[:, :, None] / self.length, self.length, axis=2)


class Flatten(Layer):
    def forward(self, x, mode):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.shape)


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
