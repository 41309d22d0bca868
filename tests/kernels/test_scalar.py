"""The scalar math every compiled backend shares, against NumPy in float64."""

import numpy as np
import pytest

from bnbench.kernels import scalar


def test_chan_merge_equals_the_moments_of_the_union(rng):
    a, b = rng.normal(1e4, 1.0, 37), rng.normal(1e4 + 3.0, 2.0, 11)
    n, mean, m2 = scalar.chan_merge(
        a.size,
        a.mean(),
        ((a - a.mean()) ** 2).sum(),
        b.size,
        b.mean(),
        ((b - b.mean()) ** 2).sum(),
    )
    both = np.concatenate([a, b])
    assert n == both.size
    assert mean == pytest.approx(both.mean(), rel=1e-14)
    assert m2 / n == pytest.approx(both.var(), rel=1e-10)
    assert scalar.chan_merge(5, 2.0, 3.0, 0, 0.0, 0.0) == (5, 2.0, 3.0)  # empty partial


def test_ema_step_is_pytorchs_convention():
    assert scalar.ema_step(1.0, 3.0, 0.1) == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def test_shifted_moments_survive_a_large_mean(rng):
    v = rng.normal(1e4, 1.0, 1000)  # mean 10^4 standard deviations
    shift = v[0]
    mean, m2 = scalar.shifted_moments(shift, (v - shift).sum(), ((v - shift) ** 2).sum(), v.size)
    assert mean == pytest.approx(v.mean(), rel=1e-14)
    assert m2 / v.size == pytest.approx(v.var(), rel=1e-8)


def test_affine_coefficients_give_the_batch_norm_map():
    scale, shift, invstd = scalar.affine_coefficients(1.5, 0.25, 2.0, 4.0, 1e-5)
    assert invstd == pytest.approx(1 / np.sqrt(4.0 + 1e-5))
    x = 3.0
    assert x * scale + shift == pytest.approx((x - 2.0) * invstd * 1.5 + 0.25)


def test_relu_keeps_nan_and_its_gradient_masks_by_the_output():
    assert scalar.relu(-2.0) == 0.0 and scalar.relu(3.0) == 3.0
    assert np.isnan(scalar.relu(np.nan))
    assert scalar.relu_grad(5.0, 0.0) == 0.0 and scalar.relu_grad(5.0, 1.0) == 5.0
