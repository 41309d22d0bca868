"""The float64 oracle, against the textbook formulas written out in NumPy."""

import numpy as np
import pytest

from bnbench.kernels import reference


@pytest.fixture
def x(rng):
    return rng.normal(3.0, 2.0, (8, 3, 5)).astype(np.float32)


def test_forward_train_is_the_textbook_map(x, rng):
    w, b, eps = rng.uniform(0.5, 1.5, 3), rng.normal(size=3), 1e-5
    out = np.empty_like(x)
    mean, var, invstd = reference.forward_train(x, w, b, eps, out)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-12)  # biased
    expected = (x64 - mean[:, None]) / np.sqrt(var[:, None] + eps) * w[:, None] + b[:, None]
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(var + eps))


def test_ghost_groups_take_the_statistics_of_consecutive_samples(x):
    mean, var = reference.moments(x, group_size=4)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean[1], x64[4:].mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var[0], x64[:4].var(axis=(0, 2)), rtol=1e-12)


def test_backward_matches_a_finite_difference(rng):
    x = rng.normal(size=(6, 2, 3))
    w, dy, eps = rng.uniform(0.5, 1.5, 2), rng.normal(size=x.shape), 1e-5

    def loss(xv):
        out = np.empty_like(xv)
        reference.forward_train(xv, w, np.zeros(2), eps, out)
        return float((out * dy).sum())

    out = np.empty_like(x)
    mean, _, invstd = reference.forward_train(x, w, np.zeros(2), eps, out)
    dx = np.empty_like(x)
    reference.backward(dy, x, w, mean, invstd, dx)
    h, i = 1e-6, (2, 1, 0)
    xp, xm = x.copy(), x.copy()
    xp[i] += h
    xm[i] -= h
    assert dx[i] == pytest.approx((loss(xp) - loss(xm)) / (2 * h), rel=1e-5)


def test_update_running_advances_one_row_per_momentum():
    rm, rv = np.zeros((2, 3)), np.ones((2, 3))
    reference.update_running(rm, rv, np.full(3, 2.0), np.full(3, 5.0), [0.1, 0.5])
    np.testing.assert_allclose(rm, [[0.2] * 3, [1.0] * 3])
    np.testing.assert_allclose(rv, [[1.4] * 3, [3.0] * 3])
