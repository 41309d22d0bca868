"""Softmax cross-entropy: its gradient, its values against log-softmax, bad labels."""

import numpy as np
import pytest
from helpers import numeric_grad

from bnbench import nn

F64 = np.float64


def test_cross_entropy_gradient(rng):
    logits = rng.normal(size=(5, 4))
    labels = rng.integers(0, 4, 5)
    loss, grad = nn.cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(5), labels]).mean())
    np.testing.assert_allclose(
        grad, numeric_grad(lambda: nn.cross_entropy(logits, labels)[0], logits), atol=1e-8
    )


def test_cross_entropy_matches_log_softmax_and_refuses_bad_labels(rng):
    for dtype in (np.float32, F64):
        logits = (rng.normal(size=(7, 4)) * 5).astype(dtype)
        labels = rng.integers(0, 4, 7)
        z = logits.astype(F64) - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss, grad = nn.cross_entropy(logits, labels)
        assert loss == pytest.approx(-logp[np.arange(7), labels].mean(), rel=1e-12)
        expected = np.exp(logp)
        expected[np.arange(7), labels] -= 1
        assert grad.dtype == dtype
        np.testing.assert_allclose(grad, expected / 7, rtol=1e-6 if dtype == np.float32 else 1e-12)
    with pytest.raises(ValueError, match="labels must lie in"):
        nn.cross_entropy(logits, np.full(7, 4))
    with pytest.raises(ValueError, match="labels must be integers"):
        nn.cross_entropy(logits, np.zeros(6, int))
