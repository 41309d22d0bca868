"""SGD with momentum and weight decay, and learning-rate schedules."""

import math

import numba
import numpy as np

from .. import config
from .norm import BatchNorm


@numba.njit(cache=config.CACHE)
def _sgd_update(p, g, v, decay, lr, momentum):
    """In place, elementwise: ``v <- momentum v + (g + decay p)``, ``p <- p - lr v``."""
    for i in range(p.size):
        v[i] = momentum * v[i] + (g[i] + decay[i] * p[i])
        p[i] -= lr * v[i]


class SGD:
    """``v <- mu v + (g + wd * p)``; ``p <- p - lr v`` (PyTorch's SGD). Weight decay is
    applied to weights only, not to biases or BN parameters (``decay(layer, name)``).

    The model's parameters, gradients and velocities are moved into three flat buffers
    (each layer's ``params[name]`` and ``grads[name]`` become views of them, with their
    values), so a step is one compiled pass over all of them instead of several NumPy
    calls per parameter. Layers must update them in place (``[...] =``), as they do; an
    array put in ``params[name]`` afterwards (or a second optimizer on the same model)
    is no longer the one this optimizer updates."""

    def __init__(self, model, lr, momentum=0.9, weight_decay=0.0):
        self.model, self.lr, self.momentum, self.weight_decay = model, lr, momentum, weight_decay
        seen, pairs = set(), []
        for layer, name in model.parameters():  # a layer shared twice is updated once
            if id(layer.params[name]) not in seen:
                seen.add(id(layer.params[name]))
                pairs.append((layer, name))
        if not pairs:
            raise ValueError("SGD needs a model with parameters, got none")
        dtypes = {layer.params[name].dtype for layer, name in pairs}
        if len(dtypes) != 1:
            raise TypeError(f"SGD needs parameters of one dtype, got {sorted(map(str, dtypes))}")
        dtype = dtypes.pop()
        sizes = [layer.params[name].size for layer, name in pairs]
        self.params, self.grads = np.empty(sum(sizes), dtype), np.empty(sum(sizes), dtype)
        self.velocity = np.zeros(sum(sizes), dtype)
        self.decay = np.zeros(sum(sizes), dtype)
        start = 0
        for (layer, name), size in zip(pairs, sizes, strict=True):
            flat = slice(start, start + size)
            for buffer, arrays in ((self.params, layer.params), (self.grads, layer.grads)):
                view = buffer[flat].reshape(arrays[name].shape)
                view[...] = arrays[name]
                arrays[name] = view
            self.decay[flat] = weight_decay if self.decays(layer, name) else 0.0
            start += size

    @staticmethod
    def decays(layer, name):
        return name == "weight" and not isinstance(layer, BatchNorm)

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        scalar = self.params.dtype.type  # arithmetic in the parameters' dtype, as NumPy's
        _sgd_update(self.params, self.grads, self.velocity, self.decay, scalar(lr),
                    scalar(self.momentum))  # fmt: skip


def cosine_lr(base_lr, step, total_steps, warmup_steps=0):
    """Linear warm-up then cosine decay to zero; ``step`` counts from 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, t)))
