"""Estimator math against closed forms."""

import numpy as np
import pytest

from bnbench import estimators as est
from bnbench import evaluate
from bnbench.nn import BatchNorm, Linear, Sequential


def batches(rng, sizes, C=3, loc=2.0, scale=1.5):
    return [rng.normal(loc, scale, (n, C)) for n in sizes]


def test_ema_matches_closed_form_for_many_momenta(rng):
    momenta = [0.01, 0.1, 0.9]
    e = est.EMA(3, momenta)
    data = batches(rng, [8] * 10)
    for b in data:
        e.update(b.mean(0), b.var(0), len(b))
    for k, m in enumerate(momenta):
        w = [(1 - m) ** 10] + [m * (1 - m) ** (10 - t) for t in range(1, 11)]
        mean = w[0] * 0 + sum(wt * b.mean(0) for wt, b in zip(w[1:], data, strict=True))
        var = w[0] * 1 + sum(wt * b.var(0, ddof=1) for wt, b in zip(w[1:], data, strict=True))
        np.testing.assert_allclose(e.mean[k], mean, rtol=1e-12)
        np.testing.assert_allclose(e.var[k], var, rtol=1e-12)


def test_ema_biased_variance_option(rng):
    e = est.EMA(3, 1.0, unbiased=False)
    (b,) = batches(rng, [5])
    e.update(b.mean(0), b.var(0), 5)
    np.testing.assert_allclose(e.var[0], b.var(0))


def test_debiased_ema_recovers_a_constant_exactly(rng):
    e = est.DebiasedEMA(3, [0.001, 0.1, 0.5])
    assert np.isnan(e.mean).all()
    mean, var = rng.normal(size=3), rng.uniform(1, 2, 3)
    for _ in range(7):
        e.update(mean, var * 9 / 10, 10)  # biased var that Bessel turns back into var
        np.testing.assert_allclose(e.mean, np.broadcast_to(mean, (3, 3)), rtol=1e-12)
        np.testing.assert_allclose(e.var, np.broadcast_to(var, (3, 3)), rtol=1e-12)


def test_cumulative_is_the_arithmetic_mean(rng):
    e = est.CumulativeAverage(3)
    data = batches(rng, [4, 9, 6, 2])
    for b in data:
        e.update(b.mean(0), b.var(0), len(b))
    np.testing.assert_allclose(e.mean, np.mean([b.mean(0) for b in data], axis=0))
    np.testing.assert_allclose(e.var, np.mean([b.var(0, ddof=1) for b in data], axis=0))


@pytest.mark.parametrize("unbiased", [True, False])
def test_batch_aggregate_is_exact_statistics_of_the_union(rng, unbiased):
    """The total variance is the biased variance of the union whatever ``unbiased`` says
    (fvcore's current PreciseBN applies no Bessel correction to the total)."""
    data = batches(rng, [7, 1, 30, 12], loc=1e4, scale=0.5)  # uneven sizes, large mean
    agg = est.BatchAggregate(3, unbiased)
    for b in data:
        agg.update(b.mean(0), b.var(0), len(b))
    union = np.concatenate(data)
    np.testing.assert_allclose(agg.mean, union.mean(0), rtol=1e-14)
    np.testing.assert_allclose(agg.var, union.var(0), rtol=1e-9)
    assert agg.count == len(union)


def fvcore_population_variance(data):
    """fvcore's ``_PopulationVarianceEstimator`` (fvcore/nn/precise_bn.py, 2026 snapshot),
    written out: it is fed each batch's Bessel-corrected variance (what BN's running_var
    takes at momentum 1) and the batch size, undoes the correction and averages
    ``mean^2 + var`` weighted by batch size."""
    tot, pop_mean, pop_sq = 0, 0.0, 0.0
    for b in data:
        n = len(b)
        tot += n
        batch_var = b.var(0, ddof=1)
        square_mean = b.mean(0) ** 2 + batch_var * ((n - 1) / n)
        pop_mean = pop_mean + (b.mean(0) - pop_mean) * (n / tot)
        pop_sq = pop_sq + (square_mean - pop_sq) * (n / tot)
    return pop_mean, pop_sq - pop_mean**2


def test_total_variance_is_fvcore_exactly_at_32_samples(rng):
    """The issue's case: 32 samples in batches of 8 (an MLP's PreciseBN at 32 samples).
    Bessel over the total would be 32/31 = 3% off fvcore."""
    data = batches(rng, [8, 8, 8, 8], loc=2.0, scale=1.5)
    agg = est.BatchAggregate(3)
    for b in data:
        agg.update(b.mean(0), b.var(0), len(b))
    mean, var = fvcore_population_variance(data)
    np.testing.assert_allclose(agg.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(agg.var, var, rtol=1e-9)


@pytest.mark.parametrize("unbiased", [True, False])
def test_mean_batch_var_is_the_plain_mean_of_batch_variances(rng, unbiased):
    """Against fvcore's old ``_MeanOfBatchVarianceEstimator`` (and swa_utils.update_bn):
    every batch weighs the same, with var_b the batch's Bessel-corrected variance if
    unbiased (and its biased one otherwise)."""
    sizes = [7, 2, 30, 12]  # uneven: a count-weighted mean would differ
    data = batches(rng, sizes, loc=50.0, scale=3.0)
    agg = est.BatchAggregate(3, unbiased)
    for b in data:
        agg.update(b.mean(0), b.var(0), len(b))
    ddof = int(unbiased)
    per_batch = np.array([b.var(axis=0, ddof=ddof) for b in data])  # (batches, C)
    np.testing.assert_allclose(agg.mean_batch_var, per_batch.mean(axis=0), rtol=1e-12)
    assert not np.allclose(np.average(per_batch, axis=0, weights=sizes),
                           per_batch.mean(axis=0), rtol=1e-3)  # fmt: skip


def test_mean_batch_var_edge_cases():
    agg = est.BatchAggregate(2)
    assert np.isnan(agg.mean_batch_var).all()  # nothing seen yet
    agg.update(np.zeros(2), np.ones(2), 1)
    assert np.isnan(agg.mean_batch_var).all()  # no unbiased variance from one value
    biased = est.BatchAggregate(2, unbiased=False)
    biased.update(np.zeros(2), np.ones(2), 1)
    np.testing.assert_array_equal(biased.mean_batch_var, [1.0, 1.0])


def test_mean_of_batch_variances_alone_underestimates(rng):
    """What the 'variance of means' term adds: batches drawn from shifted clusters."""
    data = [rng.normal(c, 1.0, (50, 1)) for c in (-3.0, 0.0, 3.0)]
    agg = est.BatchAggregate(1, unbiased=False)
    for b in data:
        agg.update(b.mean(0), b.var(0), len(b))
    mean_of_vars = np.mean([b.var(0) for b in data])
    assert agg.var[0] > mean_of_vars + 5  # var of means is 6 here


def test_precise_on_a_linear_model_equals_known_population(rng):
    """BN after a linear map: its population statistics are x_mean @ W.T and diag(W S W.T)."""
    lin = Linear(4, 3, rng, bias=False, dtype=np.float64)
    model = Sequential([lin, BatchNorm(3, dtype=np.float64)])
    x = rng.normal(size=(600, 4)) @ rng.normal(size=(4, 4)) + 5.0
    W = lin.params["weight"]
    mean = x.mean(0) @ W.T
    cov = np.cov(x, rowvar=False, bias=True)
    var = np.einsum("ij,jk,ik->i", W, cov, W)
    (got,), used = evaluate.precise_statistics(model, x, None, 50, np.random.default_rng(0), False)
    assert used == 600
    np.testing.assert_allclose(got.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(got.var, var, rtol=1e-10)
    (pop,) = evaluate.population_statistics(model, x)
    np.testing.assert_allclose(pop[1], var, rtol=1e-10)


@pytest.mark.parametrize("momenta", [0.0, -0.1, 1.5, [], [0.1, 2.0], np.nan])
def test_bad_momenta(momenta):
    with pytest.raises(ValueError, match=r"momenta must be one or more values in \(0, 1\]"):
        est.EMA(3, momenta)


@pytest.mark.parametrize("make", [lambda: est.EMA(3, [0.1, 0.5]), lambda: est.DebiasedEMA(3),
                                  lambda: est.CumulativeAverage(3), lambda: est.BatchAggregate(3)])  # fmt: skip
def test_batch_statistics_of_the_wrong_shape_are_refused(make):
    e = make()
    with pytest.raises(
        ValueError,
        match=r"batch_mean must have shape \(3,\) \(one value per channel\), got \(4,\)",
    ):
        e.update(np.zeros(4), np.ones(3), 8)
    with pytest.raises(ValueError, match=r"batch_var must have shape \(3,\)"):
        e.update(np.zeros(3), np.ones((3, 1)), 8)


def test_unbiased_update_needs_two_values_per_channel():
    with pytest.raises(ValueError, match="count must be >= 2 for an unbiased variance, got 1"):
        est.EMA(3).update(np.zeros(3), np.ones(3), count=1)


ESTIMATORS = [lambda: est.EMA(3, [0.1, 0.5]), lambda: est.DebiasedEMA(3, [0.1, 0.5]),
              lambda: est.CumulativeAverage(3), lambda: est.BatchAggregate(3)]  # fmt: skip


@pytest.mark.parametrize("make", ESTIMATORS, ids=["ema", "ema_debiased", "cumulative", "precise"])
def test_estimates_are_fresh_copies(make, rng):
    """Mutating a returned estimate leaves the estimator alone, before and after updates."""
    e = make()
    for _ in range(3):
        for name in ("mean", "var"):
            a, b = getattr(e, name), getattr(e, name)
            assert a is not b and not np.shares_memory(a, b), name
            before = a.copy()
            a += 100.0
            np.testing.assert_array_equal(getattr(e, name), before, err_msg=name)
        (b,) = batches(rng, [6])
        e.update(batch_mean=b.mean(0), batch_var=b.var(0), count=len(b))
