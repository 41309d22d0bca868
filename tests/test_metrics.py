"""Metrics: accuracy, NLL and ECE against slow direct computations and hand cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnbench import metrics


def slow_softmax(z):
    """Row by row, from the definition, in float64 (exp of shifted logits)."""
    out = np.empty(z.shape, dtype=np.float64)
    for i, row in enumerate(np.asarray(z, dtype=np.float64)):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out


def slow_ece(logits, labels, bins=15):
    """ECE by looping over the bins (lo, hi], as in Guo et al.'s reference code."""
    p = slow_softmax(logits)
    confidence, prediction = p.max(axis=1), np.asarray(logits).argmax(axis=1)
    correct = (prediction == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            total += in_bin.mean() * gap
    return total


def slow_nll(logits, labels):
    p = slow_softmax(logits)
    return -np.mean([math.log(p[i, y]) for i, y in enumerate(labels)])


def random_case(rng, n=500, k=10, scale=3.0, dtype=np.float32):
    logits = (rng.standard_normal((n, k)) * scale).astype(dtype)
    labels = rng.integers(0, k, n)
    return logits, labels


@pytest.mark.parametrize("bins", [1, 5, 15, 100])
@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_against_slow_computation(rng, bins, scale):
    logits, labels = random_case(rng, scale=scale)
    assert metrics.ece(logits, labels, bins) == pytest.approx(
        slow_ece(logits, labels, bins), abs=1e-12
    )
    assert metrics.nll(logits, labels) == pytest.approx(slow_nll(logits, labels), rel=1e-12)
    assert metrics.accuracy(logits, labels) == np.mean(logits.argmax(1) == labels)


def test_default_is_15_bins(rng):
    logits, labels = random_case(rng)
    assert metrics.ECE_BINS == 15
    assert metrics.ece(logits, labels) == metrics.ece(logits, labels, 15)
    assert metrics.ece(logits, labels) != metrics.ece(logits, labels, 10)


def test_scores_is_the_three_metrics_as_python_floats(rng):
    logits, labels = random_case(rng)
    s = metrics.scores(logits, labels)
    assert set(s) == {"accuracy", "nll", "ece"}
    assert all(type(v) is float for v in s.values())
    assert s == {
        "accuracy": metrics.accuracy(logits, labels),
        "nll": metrics.nll(logits, labels),
        "ece": metrics.ece(logits, labels),
    }


def test_perfectly_calibrated_toy_example():
    # confidence 0.75 on every row (logits log 3 vs 0) and 3 of 4 rows correct: ECE 0
    logits = np.tile([math.log(3.0), 0.0], (8, 1))
    labels = np.array([0, 0, 0, 1] * 2)
    assert metrics.ece(logits, labels) == pytest.approx(0.0, abs=1e-15)
    assert metrics.accuracy(logits, labels) == 0.75
    assert metrics.nll(logits, labels) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    )
    # two bins, each calibrated on its own: 0.9 with 9 of 10 right, 0.6 with 3 of 5 right
    logits = np.array([[math.log(9.0), 0.0]] * 10 + [[math.log(1.5), 0.0]] * 5)
    labels = np.array([0] * 9 + [1] + [0] * 3 + [1] * 2)
    assert metrics.ece(logits, labels) == pytest.approx(0.0, abs=1e-15)


def test_all_confident_and_wrong_is_ece_one():
    logits = np.tile([50.0, 0.0, 0.0], (20, 1))
    labels = np.full(20, 2)
    assert metrics.accuracy(logits, labels) == 0.0
    assert metrics.ece(logits, labels) == pytest.approx(1.0, abs=1e-15)
    assert metrics.nll(logits, labels) == pytest.approx(50.0)
    # and confident and right: ECE ~ 0, NLL ~ 0
    assert metrics.ece(logits, np.zeros(20, int)) == pytest.approx(0.0, abs=1e-15)
    assert metrics.nll(logits, np.zeros(20, int)) == pytest.approx(0.0, abs=1e-15)


def test_bin_edge_goes_to_the_lower_bin():
    # 2 classes, 2 bins: confidence exactly 0.5 lies on the edge between (0, .5] and (.5, 1]
    edge = np.array([[0.0, 0.0]])  # confidence 0.5, predicts class 0
    high = np.array([[math.log(3.0), 0.0]])  # confidence 0.75, predicts class 0
    logits = np.concatenate([edge, edge, high, high])
    labels = np.array([0, 0, 0, 1])
    # edge rows alone in the lower bin: |1 - .5| * 2/4 + |.5 - .75| * 2/4 = 0.375
    assert metrics.ece(logits, labels, bins=2) == pytest.approx(0.375)
    # had the edge rows joined the upper bin: |.75 - .625| = 0.125
    assert metrics.ece(logits, labels, bins=2) == pytest.approx(slow_ece(logits, labels, 2))


def test_tied_rows_on_a_bin_edge():
    # 6 tied classes: confidence 1/6, the first edge of 6 bins, so the lowest bin (0, 1/6]
    logits = np.array([[-1.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 0]])
    labels = np.array([0, 0])
    assert metrics.ece(logits, labels, bins=6) == pytest.approx(
        slow_ece(logits, labels, 6), abs=1e-15
    )


def test_large_logits_do_not_overflow():
    logits = np.array([[1e300, -1e300], [-1e4, 1e4]])
    labels = np.array([1, 1])
    assert metrics.nll(logits, labels) == pytest.approx(1e300, rel=1e-12)
    assert metrics.accuracy(logits, labels) == 0.5
    assert metrics.ece(logits, labels) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_give_nan_everywhere(rng, bad):
    logits, labels = random_case(rng, n=50)
    logits[7, 3] = bad
    assert math.isnan(metrics.accuracy(logits, labels))
    assert math.isnan(metrics.nll(logits, labels))
    assert math.isnan(metrics.ece(logits, labels))
    assert all(math.isnan(v) for v in metrics.scores(logits, labels).values())


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.zeros(4), np.zeros(4, int), "logits must be 2-D"),
        (np.zeros((2, 2, 2)), np.zeros(2, int), "logits must be 2-D"),
        (np.zeros((0, 3)), np.zeros(0, int), "logits must have at least one row"),
        (np.zeros((3, 0)), np.zeros(3, int), "logits must have at least one row and one class"),
        (np.array([["a", "b"]]), np.zeros(1, int), "logits must be a real-valued array"),
        (np.zeros((2, 2), bool), np.zeros(2, int), "logits must be a real-valued array"),
        (np.zeros((3, 2)), np.zeros(4, int), r"labels must have one entry per row of logits \(3\), got 4"),
        (np.zeros((3, 2)), np.zeros((3, 1), int), "labels must be 1-D"),
        (np.zeros((3, 2)), np.zeros(3), "labels must be an integer array"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), r"labels must lie in \[0, 2\) for 2 classes, got values in \[0, 2\]"),
        (np.zeros((3, 2)), np.array([0, -1, 1]), r"labels must lie in \[0, 2\)"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(logits, labels, message):
    for fn in (metrics.accuracy, metrics.nll, metrics.ece, metrics.scores):
        with pytest.raises(ValueError, match=message):
            fn(logits, labels)


@pytest.mark.parametrize("bins", [0, -1, 2.5, True, "15"])
def test_bad_bins(bins):
    with pytest.raises(ValueError, match="bins must be an integer >= 1"):
        metrics.ece(np.zeros((2, 2)), np.zeros(2, int), bins)


def test_integer_logits_and_labels_of_any_integer_dtype():
    logits = np.array([[2, 0], [0, 2]], dtype=np.int32)
    labels = np.array([0, 0], dtype=np.uint8)
    assert metrics.accuracy(logits, labels) == 0.5
    assert metrics.nll(logits, labels) == pytest.approx(slow_nll(logits, labels))


cases = st.integers(1, 40).flatmap(
    lambda n: st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            hnp.arrays(np.float64, (n, k), elements=st.floats(-30, 30)),
            hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)),
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(case=cases, bins=st.integers(1, 20))
def test_property_matches_slow_and_in_range(case, bins):
    logits, labels = case
    e = metrics.ece(logits, labels, bins)
    assert 0.0 <= e <= 1.0
    assert e == pytest.approx(slow_ece(logits, labels, bins), abs=1e-12)
    assert metrics.nll(logits, labels) >= 0.0
    assert metrics.nll(logits, labels) == pytest.approx(
        slow_nll(logits, labels), rel=1e-9, abs=1e-12
    )
    assert 0.0 <= metrics.accuracy(logits, labels) <= 1.0


@settings(max_examples=150, deadline=None)
@given(case=cases, shift=st.floats(-1e3, 1e3), data=st.data())
def test_property_shift_invariance(case, shift, data):
    """Adding a constant to all logits, or a different constant to each row, changes
    nothing (up to the rounding of the shifted logits themselves)."""
    logits, labels = case
    row_shift = data.draw(hnp.arrays(np.float64, (len(labels), 1), elements=st.floats(-1e3, 1e3)))
    s = metrics.scores(logits, labels)
    for shifted in (logits + shift, logits + row_shift):
        t = metrics.scores(shifted, labels)
        assert t["accuracy"] == s["accuracy"] or _near_tie(logits)
        assert t["nll"] == pytest.approx(s["nll"], rel=1e-9, abs=1e-9)
        assert (
            t["ece"] == pytest.approx(s["ece"], abs=1e-9)
            or _near_tie(logits)
            or _near_edge(logits)
        )


def _near_tie(logits):
    """Rounding after a shift may flip the argmax of two logits within an ulp or so of
    each other (or move a confidence across a bin edge): such cases are exempt."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return logits.shape[1] > 1 and bool(np.any(top2[:, 1] - top2[:, 0] < 1e-9))


def _near_edge(logits, bins=metrics.ECE_BINS):
    """A confidence within rounding of a bin edge may cross it after a shift."""
    confidence = slow_softmax(logits).max(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return bool(np.any(np.abs(confidence[:, None] - edges[None, :]) < 1e-9))


def test_shift_invariance_on_a_real_sized_case(rng):
    logits, labels = random_case(rng, n=1000, dtype=np.float64)
    s = metrics.scores(logits, labels)
    t = metrics.scores(logits + 1e3, labels)
    assert t["accuracy"] == s["accuracy"]
    assert t["nll"] == pytest.approx(s["nll"], rel=1e-10)
    assert t["ece"] == pytest.approx(s["ece"], abs=1e-10)


@settings(max_examples=100, deadline=None)
@given(case=cases, data=st.data())
def test_property_class_permutation_invariance(case, data):
    """Relabelling the classes (permuting logit columns and labels alike) changes nothing
    except how argmax ties are broken, so cases without ties only."""
    logits, labels = case
    k = logits.shape[1]
    perm = np.array(data.draw(st.permutations(range(k))))
    if _near_tie(logits):
        return
    inverse = np.argsort(perm)
    s, t = metrics.scores(logits, labels), metrics.scores(logits[:, perm], inverse[labels])
    assert t["accuracy"] == s["accuracy"]
    assert t["nll"] == pytest.approx(s["nll"], rel=1e-12, abs=1e-15)
    assert t["ece"] == pytest.approx(s["ece"], abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(case=cases)
def test_property_one_bin_is_accuracy_minus_mean_confidence(case):
    logits, labels = case
    confidence = slow_softmax(logits).max(axis=1).mean()
    expected = abs(metrics.accuracy(logits, labels) - confidence)
    assert metrics.ece(logits, labels, bins=1) == pytest.approx(expected, abs=1e-12)
