"""Running-statistics update against the closed form of an EMA over a batch sequence."""

import numpy as np
import pytest
from helpers import WITH_PEERS

import bnbench as bn


def closed_form(r0, stats, m):
    """r_T = (1-m)^T r0 + sum_t m (1-m)^(T-t) s_t for t = 1..T."""
    T = len(stats)
    return (1 - m) ** T * r0 + sum(m * (1 - m) ** (T - t) * s for t, s in enumerate(stats, 1))


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_matches_closed_form(backend, unbiased, dtype, rng):
    momenta = np.array([0.001, 0.1, 0.5, 1.0])
    C, count = 5, 8
    rm = np.zeros((4, C), dtype)
    rv = np.ones((4, C), dtype)
    means = [rng.standard_normal(C) for _ in range(6)]
    variances = [rng.uniform(0.1, 3.0, C) for _ in range(6)]
    for mu, var in zip(means, variances, strict=True):
        bn.update_running_stats(
            rm,
            rv,
            mean=mu,
            var=var,
            count=count,
            momenta=momenta,
            unbiased=unbiased,
            backend=backend,
        )
    fed = [v * count / (count - 1) for v in variances] if unbiased else variances
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for k, m in enumerate(momenta):
        np.testing.assert_allclose(rm[k], closed_form(np.zeros(C), means, m), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(rv[k], closed_form(np.ones(C), fed, m), rtol=rtol)
    np.testing.assert_allclose(rm[-1], means[-1], rtol=rtol)  # momentum 1 keeps the last batch


def test_update_takes_train_outputs(rng):
    x = rng.standard_normal((32, 3, 10)).astype(np.float32)
    res = bn.batch_norm_train(x)
    rm, rv = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    bn.update_running_stats(rm, rv, mean=res.mean, var=res.var, count=320, momenta=[0.1, 0.01])
    unbiased = x.astype(np.float64).transpose(1, 0, 2).reshape(3, -1).var(axis=1, ddof=1)
    np.testing.assert_allclose(rv[0], 0.9 + 0.1 * unbiased, rtol=1e-6)
