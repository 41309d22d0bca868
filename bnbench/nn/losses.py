"""Softmax cross-entropy."""

import numba
import numpy as np

from .. import config


@numba.njit(cache=config.CACHE)
def _cross_entropy(logits, labels, grad):
    """Mean loss over rows, in float64; ``grad`` (logits' dtype) gets its gradient."""
    n, k = logits.shape
    total = 0.0
    e = np.empty(k)
    for i in range(n):
        top = np.float64(logits[i, 0])
        for j in range(1, k):
            top = max(top, np.float64(logits[i, j]))
        s = 0.0
        for j in range(k):
            e[j] = np.exp(np.float64(logits[i, j]) - top)
            s += e[j]
        total -= np.float64(logits[i, labels[i]]) - top - np.log(s)
        for j in range(k):
            grad[i, j] = (e[j] / s - (1.0 if j == labels[i] else 0.0)) / n
    return total / n


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of ``logits`` ``(N, classes)`` against integer ``labels``
    ``(N,)`` in ``[0, classes)``; returns ``(loss, dlogits)``, computed in float64."""
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N >= 1, classes), got {logits.shape}")
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integers of shape ({logits.shape[0]},), got {labels.dtype} "
            f"{labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {labels.min()}-"
                         f"{labels.max()}")  # fmt: skip
    grad = np.empty_like(logits)
    loss = _cross_entropy(np.ascontiguousarray(logits), labels, grad)
    return float(loss), grad
