"""Softmax cross-entropy."""

import numpy as np


def log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of ``logits`` ``(N, classes)`` against integer ``labels``
    ``(N,)``; returns ``(loss, dlogits)``."""
    logp = log_softmax(logits.astype(np.float64))
    n = logits.shape[0]
    loss = -logp[np.arange(n), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1.0
    return float(loss), (grad / n).astype(logits.dtype)
