"""bnbench.nn layers (Linear, Conv1d, ReLU, Flatten, Reshape): backward against central
finite differences (float64)."""

import numpy as np
import pytest
from helpers import check_layer

from bnbench import nn

F64 = np.float64


@pytest.mark.parametrize("bias", [True, False])
def test_linear(rng, bias):
    check_layer(nn.Linear(5, 3, rng, bias=bias, dtype=F64), rng.normal(size=(4, 5)), rng)


@pytest.mark.parametrize(
    ("k", "stride", "padding", "length"),
    [(5, 2, 1, 40), (3, 2, 1, 19), (3, 1, 0, 7), (3, 2, 1, 10), (2, 3, 2, 9)],
)
def test_conv1d(rng, k, stride, padding, length):
    conv = nn.Conv1d(2, 3, k, rng, stride=stride, padding=padding, dtype=F64)
    x = rng.normal(size=(2, 2, length))
    y = conv.forward(x, "train")
    assert y.shape == (2, 3, (length + 2 * padding - k) // stride + 1)
    # forward against a direct sum over taps
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    W = conv.params["weight"].reshape(3, 2, k)
    direct = (
        np.stack(
            [
                np.einsum("ncj,ocj->no", xp[:, :, t * stride : t * stride + k], W)
                for t in range(y.shape[2])
            ],
            axis=2,
        )
        + conv.params["bias"][None, :, None]
    )
    np.testing.assert_allclose(y, direct, rtol=1e-12)
    check_layer(conv, x, rng)


def test_relu_flatten_reshape(rng):
    x = rng.normal(size=(3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    check_layer(nn.ReLU(), x, rng)
    check_layer(nn.Flatten(), x, rng)
    check_layer(nn.Reshape((2, 10)), x, rng)
