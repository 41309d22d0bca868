"""bnbench.evaluate, the evaluation path against hand computations on the tiny network of
test_adaptation.py: the exact population statistics layer by layer, prediction with fixed
statistics, test batches of exactly the stated size, the statistics error measure, and
test sets of the wrong shape or dtype refused by name."""

import numpy as np
import pytest
from test_adaptation import hand_forward, own, tiny  # noqa: F401

from bnbench import evaluate, nn


def test_population_statistics_are_exact_layer_by_layer(tiny):  # noqa: F811 (the fixture)
    model, source, target = tiny
    for x in (source, target):  # source: the population; target: AdaBN on the test set
        got = evaluate.population_statistics(model, x)
        expected = []
        hand_forward(model, x, lambda i, h, seen=expected: seen.append(own(h)) or seen[-1])
        for (gm, gv), (em, ev) in zip(got, expected, strict=True):
            np.testing.assert_allclose(gm, em, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(gv, ev, rtol=1e-10, atol=1e-12)


def test_source_and_adabn_predictions(tiny):  # noqa: F811 (the fixture)
    model, source, target = tiny
    for stats_x in (source, target):  # source statistics, then AdaBN's
        stats = evaluate.population_statistics(model, stats_x)
        got = evaluate.predict(model, target, stats)
        np.testing.assert_allclose(got, hand_forward(model, target, lambda i, h, s=stats: s[i]),
                                   rtol=1e-10, atol=1e-12)  # fmt: skip


def test_exact_batches_have_exactly_the_stated_size():
    for n, size in [(10, 3), (10, 10), (10, 1), (1000, 64), (1000, 512), (7, 4)]:
        batches = evaluate.exact_batches(n, size, "iid", None, np.random.default_rng(0))
        predicted = np.concatenate([idx[keep] for idx, keep in batches])
        assert all(len(idx) == size for idx, _ in batches)
        assert sorted(predicted.tolist()) == list(range(n))  # every example exactly once
    labels = np.repeat(np.arange(5), 4)
    (first, _), *_ = evaluate.exact_batches(20, 4, "sorted", labels, np.random.default_rng(0))
    assert len(set(labels[first])) == 1  # a sorted batch holds one class here


def test_statistics_error_against_a_direct_computation():
    ref = [(np.array([0.0, 1.0]), np.array([1.0, 4.0]))]
    est = [(np.array([0.5, 1.0]), np.array([1.0, 1.0]))]
    (mean_err, var_err), = evaluate.statistics_error(est, ref, eps=0.0)  # fmt: skip
    assert mean_err == pytest.approx(np.sqrt((0.5**2 + 0.0) / 2))
    assert var_err == pytest.approx(np.sqrt((0.0 + np.log(1 / 4) ** 2) / 2))


def test_test_sets_of_the_wrong_shape_or_dtype_are_refused_by_name():
    model = nn.build("mlp", 40, 10, np.random.default_rng(0))
    stats = evaluate.population_statistics(model, np.ones((8, 40), np.float32))
    for call in (lambda x: evaluate.population_statistics(model, x),
                 lambda x: evaluate.predict(model, x, stats)):  # fmt: skip
        with pytest.raises(ValueError, match=r"x must have samples of shape \(40,\), got \(41,\)"):
            call(np.ones((8, 41), np.float32))
        with pytest.raises(
            ValueError, match=r"x must have the model's dtype float32, got float64"
        ):
            call(np.ones((8, 40)))
