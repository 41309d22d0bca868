"""Test-time adaptation, against hand computations on a tiny network (the evaluation path
itself, population statistics, prediction and exact batches: test_evaluate.py).

The tiny network is Linear(3->4) - BN - ReLU - Linear(4->4) - BN - ReLU - Linear(4->2),
float64; its forward pass is recomputed here layer by layer in NumPy with the statistics
each method should give, so every method is checked against an independent computation,
the upstream layers' adaptation included.
"""

import numpy as np
import pytest

from bnbench import adaptation, evaluate
from bnbench.nn import BatchNorm, Linear, ReLU, Sequential

EPS = 1e-5


@pytest.fixture
def tiny():
    rng = np.random.default_rng(7)
    model = Sequential(
        [
            Linear(3, 4, rng, bias=False, dtype=np.float64),
            BatchNorm(4, eps=EPS, dtype=np.float64),
            ReLU(),
            Linear(4, 4, rng, bias=False, dtype=np.float64),
            BatchNorm(4, eps=EPS, dtype=np.float64),
            ReLU(),
            Linear(4, 2, rng, dtype=np.float64),
        ]
    )
    for bn in model.bn_layers:  # non-trivial affine parameters
        bn.params["weight"][:] = rng.uniform(0.5, 2.0, 4)
        bn.params["bias"][:] = rng.normal(size=4)
    source = rng.normal(size=(64, 3))
    target = rng.normal(1.5, 2.0, size=(24, 3))  # a shifted test set
    return model, source, target


def hand_forward(model, x, stats_of):
    """Logits of ``x``, each BN layer ``i`` normalising with ``stats_of(i, h)`` where
    ``h`` is that layer's input (float64, independent of the library's forward)."""
    h, i = x.astype(np.float64), 0
    for layer in model.layers:
        if isinstance(layer, Linear):
            h = h @ layer.params["weight"].T + layer.params.get("bias", 0.0)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0.0)
        else:
            m, v = stats_of(i, h)
            h = (h - m) / np.sqrt(v + EPS) * layer.params["weight"] + layer.params["bias"]
            i += 1
    return h


def own(h):
    return h.mean(axis=0), h.var(axis=0)


def test_prediction_time_bn_uses_each_batch_own_statistics(tiny):
    model, _, target = tiny
    rng = np.random.default_rng(0)
    batches = evaluate.exact_batches(24, 8, "iid", None, np.random.default_rng(0))
    got = evaluate.predict_batches(model, target, None, 8, "iid", rng,
                                   lambda: adaptation.normalisers("test_batch", [None, None]))  # fmt: skip
    for idx, keep in batches:
        expected = hand_forward(model, target[idx], lambda i, h: own(h))
        np.testing.assert_allclose(got[idx[keep]], expected[keep], rtol=1e-10, atol=1e-12)
    # the same as BN left in training mode on that batch
    idx = batches[0][0]
    np.testing.assert_allclose(got[idx], model.forward(target[idx], "train"), rtol=1e-9)


@pytest.mark.parametrize("strength", [1.0, 16.0, 1e9])
def test_prior_mixes_source_and_batch_statistics(tiny, strength):
    model, source, target = tiny
    src = evaluate.population_statistics(model, source)
    batch = target[:6]
    got = evaluate.predict(model, batch, adaptation.normalisers("prior", src, strength))
    n, N = 6, strength

    def mixed(i, h):  # the batch's unbiased variance, as Schneider et al.'s reference
        m, v = own(h)
        v = v * n / (n - 1)
        return (N * src[i][0] + n * m) / (N + n), (N * src[i][1] + n * v) / (N + n)

    np.testing.assert_allclose(got, hand_forward(model, batch, mixed), rtol=1e-9, atol=1e-12)
    if strength == 1e9:  # a huge prior is the source statistics
        source_only = evaluate.predict(model, batch, src)
        np.testing.assert_allclose(got, source_only, rtol=1e-6, atol=1e-8)


def test_prior_is_undefined_with_one_value_per_channel(tiny):
    """A batch of one (MLP): the unbiased batch variance does not exist, so the prior is
    undefined there (before: the biased variance 0 was mixed in silently)."""
    model, source, target = tiny
    src = evaluate.population_statistics(model, source)
    with pytest.raises(ValueError, match="the prior needs more than one value per channel"):
        evaluate.predict(model, target[:1], adaptation.normalisers("prior", src, 4.0))


@pytest.mark.parametrize("n", [24, 20])  # 20: the last batch overlaps the one before it
def test_online_ema_updates_then_predicts_along_the_stream(tiny, n):
    model, source, target = tiny
    target = target[:n]
    src = evaluate.population_statistics(model, source)
    m = 0.25
    got = evaluate.predict_batches(model, target, None, 8, "iid", np.random.default_rng(1),
                                   lambda: adaptation.normalisers("online_ema", src, m))  # fmt: skip
    running = [(src[i][0].copy(), src[i][1].copy()) for i in range(2)]

    def update(i, h):
        mean, var = own(h)
        unbiased = var * h.shape[0] / (h.shape[0] - 1)
        r_m, r_v = running[i]
        running[i] = ((1 - m) * r_m + m * mean, (1 - m) * r_v + m * unbiased)
        return running[i]  # the batch is predicted after its own update

    for idx, keep in evaluate.exact_batches(n, 8, "iid", None, np.random.default_rng(1)):
        expected = hand_forward(model, target[idx], update)
        np.testing.assert_allclose(got[idx[keep]], expected[keep], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: evaluate.exact_batches(10, 11, "iid", None, None), r"test batch size must be an integer in \[1, 10\]"),
        (lambda: evaluate.exact_batches(10, 0, "iid", None, None), r"test batch size must be an integer in \[1, 10\]"),
        (lambda: evaluate.exact_batches(10, 2, "random", None, None), r"test order must be one of"),
        (lambda: adaptation.prior((0, 1), 0), r"prior strength N must be finite and > 0, got 0"),
        (lambda: adaptation.prior((0, 1), float("inf")), r"prior strength N must be finite and > 0"),
        (lambda: adaptation.OnlineEMA((0, 1), 1.5), r"momenta must be one or more values in \(0, 1\]"),
        (lambda: adaptation.normalisers("tent", [(0, 1)]), r"adaptation mode must be one of"),
        (lambda: adaptation.OnlineEMA((0, 1), [0.1, 0.2]), r"online EMA momentum must be one number"),
    ],
)  # fmt: skip
def test_bad_adaptation_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_prediction_time_bn_of_one_value_per_channel_is_undefined(tiny):
    model, _, target = tiny
    with pytest.raises(ValueError, match="more than one value per channel"):
        evaluate.predict(model, target[:1], adaptation.normalisers("test_batch", [None, None]))
