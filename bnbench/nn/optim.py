"""SGD with momentum and weight decay, and learning-rate schedules."""

import math

import numpy as np

from .norm import BatchNorm


class SGD:
    """``v <- mu v + (g + wd * p)``; ``p <- p - lr v`` (PyTorch's SGD). Weight decay is
    applied to weights only, not to biases or BN parameters (``decay(layer, name)``)."""

    def __init__(self, model, lr, momentum=0.9, weight_decay=0.0):
        self.model, self.lr, self.momentum, self.weight_decay = model, lr, momentum, weight_decay
        self.velocity = {
            (id(layer), name): np.zeros_like(layer.params[name])
            for layer, name in model.parameters()
        }

    @staticmethod
    def decays(layer, name):
        return name == "weight" and not isinstance(layer, BatchNorm)

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        for layer, name in self.model.parameters():
            p, g = layer.params[name], layer.grads[name]
            v = self.velocity[(id(layer), name)]
            if self.weight_decay and self.decays(layer, name):
                g = g + self.weight_decay * p
            v *= self.momentum
            v += g
            p -= lr * v


def cosine_lr(base_lr, step, total_steps, warmup_steps=0):
    """Linear warm-up then cosine decay to zero; ``step`` counts from 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, t)))
