"""Test streams: composition, segment labels, batch sizes, label correlation, bad input."""

import numpy as np
import pytest

from bnbench import streams
from bnbench.streams import CLEAN, make_stream

N = 60
CORRUPTIONS = ("gauss", "shear", "blur")
LABELS = np.random.default_rng(7).integers(0, 5, N)


def make_sets(n=N, corruptions=CORRUPTIONS, severities=range(1, 6), clean=True):
    """Sets whose x says where it came from: ``x[i] = (set code, i)``, float32."""
    keys = ([CLEAN] if clean else []) + [(c, s) for c in corruptions for s in severities]
    y = LABELS if n == N else np.arange(n) % 5
    ex = np.arange(n, dtype=np.float32)
    return {k: (np.stack([np.full(n, code, np.float32), ex], 1), y) for code, k in enumerate(keys)}


SETS = make_sets()
CODE = {k: code for code, k in enumerate(SETS)}
KINDS = {
    "iid": {},
    "class_correlated": {"alpha": 0.1},
    "mixed": {},
    "continual": {"severity": 5},
    "gradual": {},
}


def stream(kind, batch_size=8, seed=0, data=SETS, **params):
    return make_stream(kind, data, batch_size, seed, **(KINDS[kind] | params))


def gathered(s):
    xs, ys = zip(*s.batches(), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def runs(labels):
    """Mean length of the runs of one label."""
    return len(labels) / (1 + np.count_nonzero(np.diff(labels)))


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_stream_other_seed_another(kind):
    a, b, c = stream(kind, seed=3), stream(kind, seed=3), stream(kind, seed=4)
    for name in ("set_index", "example", "segment"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert [k for k in a.segments] == [k for k in b.segments]
    assert not np.array_equal(a.example, c.example) or not np.array_equal(a.set_index, c.set_index)


@pytest.mark.parametrize("kind", KINDS)
def test_segment_labels_and_gathered_batches_name_every_example(kind):
    s = stream(kind, batch_size=7)
    x, y = gathered(s)
    assert len(x) == len(y) == len(s) == len(s.example)
    for i in range(len(s)):
        key = s.sets[s.set_index[i]]
        assert s.segments[s.segment[i]] == key == (s.corruption[i], s.severity[i])
        assert (x[i, 0], x[i, 1]) == (CODE[key], s.example[i])  # the right set, the right example
    assert np.array_equal(y, LABELS[s.example]) and np.array_equal(s.labels, y)
    assert np.array_equal(s.position, np.arange(len(s)))
    correct = (s.example % 2 == 0).astype(float)
    for seg, c, sev, n, mean in s.segment_means(correct):
        mask = s.segment == seg
        assert (c, sev) == s.segments[seg] and n == mask.sum()
        assert mean == pytest.approx(correct[mask].mean())


@pytest.mark.parametrize("kind", ["iid", "class_correlated"])
def test_one_set_kinds_are_permutations_of_one_set(kind):
    s = make_stream(kind, SETS[("gauss", 3)], 8, 0, **KINDS[kind])
    assert np.array_equal(np.sort(s.example), np.arange(N)) and len(s.segments) == 1
    m = stream(kind, test_set=("shear", 2))
    assert set(m.sets) == {("shear", 2)} and np.array_equal(np.sort(m.example), np.arange(N))
    assert not np.array_equal(stream("iid").example, np.arange(N))  # shuffled


def test_continual_segments_in_order_each_a_permutation():
    order = ["blur", "gauss", "shear"]
    s = stream("continual", corruptions=order, severity=4)
    assert s.segments == tuple((c, 4) for c in order)
    for j in range(3):
        seg = s.example[j * N : (j + 1) * N]
        assert np.array_equal(np.sort(seg), np.arange(N))
        assert np.all(s.segment[j * N : (j + 1) * N] == j)
    assert not np.array_equal(s.example[:N], s.example[N : 2 * N])  # a fresh shuffle each
    every = stream("continual", severity=None, corruptions=["shear"])
    assert every.segments == tuple(("shear", k) for k in range(1, 6)) and len(every) == 5 * N


def test_gradual_severities_rise_then_fall_per_corruption():
    s = stream("gradual", corruptions=["shear", "gauss"])
    up_down = [1, 2, 3, 4, 5, 4, 3, 2, 1]
    assert [sev for _, sev in s.segments] == up_down * 2
    assert [c for c, _ in s.segments] == ["shear"] * 9 + ["gauss"] * 9
    assert np.array_equal(s.severity, np.repeat(up_down * 2, N))
    for j in range(18):
        assert np.array_equal(np.sort(s.example[j * N : (j + 1) * N]), np.arange(N))
    from_clean = stream("gradual", corruptions=["blur"], severities=(0, 3, 5, 3, 0))
    assert from_clean.segments == (CLEAN, ("blur", 3), ("blur", 5), ("blur", 3), CLEAN)


def test_mixed_batches_mix_sets_each_example_once():
    s = stream("mixed", batch_size=10)
    assert np.array_equal(np.sort(s.example), np.arange(N))
    assert CLEAN not in s.sets and len(s.sets) == 15  # every corrupted set by default
    mixes = [len(np.unique(sidx)) for sidx, _ in s.batch_indices()]
    assert min(mixes) >= 3
    two = stream("mixed", batch_size=10, sets=[CLEAN, ("blur", 5)], weights=[3, 1])
    share = np.mean(two.set_index == 0)
    assert 0.6 < share < 0.9 and set(two.segments) == {CLEAN, ("blur", 5)}
    only = stream("mixed", sets=[CLEAN, ("blur", 5)], weights=[0, 1])
    assert np.all(only.set_index == 1) and np.isnan(only.segment_means(np.ones(N))[0][4])
    every = stream("mixed", sets=[CLEAN, ("blur", 5), ("gauss", 1)], each_set=True)
    pairs = every.set_index * N + every.example
    assert len(every) == 3 * N and np.array_equal(np.sort(pairs), np.arange(3 * N))


@pytest.mark.parametrize("kind", KINDS)
def test_batch_sizes_one_all_and_ragged(kind):
    s = stream(kind, batch_size=1)
    assert s.num_batches == len(s) and all(len(x) == 1 for x, _ in s.batches())
    full = stream(kind, batch_size=len(s))
    assert full.num_batches == 1 and len(next(full.batches())[0]) == len(s)
    ragged = stream(kind, batch_size=7)
    sizes = [len(y) for _, y in ragged.batches()]
    assert sizes[:-1] == [7] * (len(sizes) - 1) and sizes[-1] == len(s) % 7 != 0
    assert f"last batch {len(s) % 7}" in ragged.describe()
    dropped = stream(kind, batch_size=7, drop_last=True)
    assert [len(y) for _, y in dropped.batches()] == [7] * (len(s) // 7)
    assert len(dropped) == len(dropped.segment) == len(dropped.severity) == len(s) // 7 * 7
    assert dropped.dropped == len(s) % 7 and np.array_equal(
        dropped.example, ragged.example[: len(dropped)]
    )
    assert repr(dropped) == dropped.describe() and f"dropped {len(s) % 7}" in repr(dropped)


def test_class_correlated_runs_grow_as_alpha_shrinks():
    y = np.repeat(np.arange(10), 100)
    one = (np.zeros((1000, 1), np.float32), y)
    alphas = (0.01, 0.1, 1, 100)
    labels = [make_stream("class_correlated", one, 10, 0, alpha=a).labels for a in alphas]
    mean_runs = [runs(lab) for lab in labels]
    assert all(a > b for a, b in zip(mean_runs, mean_runs[1:], strict=False)), mean_runs
    assert mean_runs[0] > 3 * mean_runs[-1]
    for lab in labels:
        assert np.array_equal(np.sort(lab), y)  # a permutation: every example once


def window_skew(labels, k=10):
    """Mean total-variation distance from uniform of the label mix in windows of N/k."""
    w = labels.reshape(k, -1)
    return np.mean(
        [0.5 * np.abs(np.bincount(r, minlength=k) / w.shape[1] - 1 / k).sum() for r in w]
    )


def test_class_correlated_large_alpha_approaches_iid():
    y = np.repeat(np.arange(10), 100)
    one = (np.zeros((1000, 1), np.float32), y)
    iid = make_stream("iid", one, 10, 0).labels
    big = make_stream("class_correlated", one, 10, 0, alpha=1e4).labels
    small = make_stream("class_correlated", one, 10, 0, alpha=0.01).labels
    assert window_skew(big) <= window_skew(iid) + 0.02 < 0.3 < window_skew(small)  # iid mixes
    within = make_stream("class_correlated", one, 10, 0, alpha=1e4, shuffle_within=True).labels
    assert runs(within) == pytest.approx(runs(iid), rel=0.1) and runs(big) > 5 * runs(iid)


def bad_labels():
    sets = make_sets()
    x, y = sets[("gauss", 2)]
    sets[("gauss", 2)] = (x, np.roll(y, 1))
    return sets


EMPTY = (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
NO_CLEAN = make_sets(clean=False)
BAD = [
    ("iid", EMPTY, 1, {}, "test_sets"),
    ("mixed", {CLEAN: EMPTY, ("gauss", 1): EMPTY}, 1, {}, "test_sets"),
    ("iid", SETS, 0, {}, "batch_size"),
    ("iid", SETS, -2, {}, "batch_size"),
    ("iid", SETS, 2.0, {}, "batch_size"),
    ("iid", SETS, True, {}, "batch_size"),
    ("iid", SETS, N + 1, {}, "batch_size"),
    ("continual", SETS, 3 * N + 1, {"severity": 1}, "batch_size"),
    ("class_correlated", SETS, 4, {"alpha": 0}, "alpha"),
    ("class_correlated", SETS, 4, {"alpha": -1.0}, "alpha"),
    ("class_correlated", SETS, 4, {"alpha": float("nan")}, "alpha"),
    ("class_correlated", SETS, 4, {"alpha": float("inf")}, "alpha"),
    ("class_correlated", SETS, 4, {}, "alpha"),
    ("class_correlated", SETS, 4, {"alpha": 1.0, "min_chunk": N}, "min_chunk"),
    ("dirichlet", SETS, 4, {}, "kind must be one of .*class_correlated.*continual.*iid"),
    ("mixed", bad_labels(), 4, {}, "labels disagree"),
    ("continual", bad_labels(), 4, {"severity": 2}, "labels disagree"),
    ("gradual", bad_labels(), 4, {}, "labels disagree"),
    ("iid", NO_CLEAN, 4, {}, "test_set"),
    ("class_correlated", NO_CLEAN, 4, {"alpha": 1.0}, "test_set"),
    ("gradual", NO_CLEAN, 4, {"severities": (0, 1)}, "severities.*clean set"),
    ("continual", SETS, 4, {"severity": 7}, "severity"),
    ("gradual", SETS, 4, {"severities": (1, 9)}, "severities"),
    ("gradual", SETS, 4, {"severities": ()}, "severities"),
    ("gradual", SETS, 4, {"severities": 5}, "severities"),
    (["iid"], SETS, 4, {}, "kind"),
    ("continual", SETS, 4, {"corruptions": ["fog"]}, "corruptions"),
    ("gradual", SETS, 4, {"corruptions": "gauss"}, "corruptions"),
    ("mixed", SETS, 4, {"sets": [CLEAN, ("fog", 1)]}, "sets"),
    ("mixed", SETS, 4, {"sets": [CLEAN]}, "sets"),
    ("mixed", SETS, 4, {"sets": [CLEAN, ("gauss", 1)], "weights": [1, -1]}, "weights"),
    ("mixed", SETS, 4, {"sets": [CLEAN, ("gauss", 1)], "weights": [0, 0]}, "weights"),
    ("mixed", SETS, 4, {"sets": [CLEAN, ("gauss", 1)], "weights": [1]}, "weights"),
    ("iid", SETS, 4, {"alpha": 1.0}, "alpha"),
    ("iid", {"clean": SETS[CLEAN]}, 4, {}, "test_sets"),
    ("iid", (SETS[CLEAN][0], LABELS[:-1]), 4, {}, "test_sets"),
]


@pytest.mark.parametrize("kind, sets, batch_size, params, match", BAD)
def test_bad_input_raises_naming_the_argument_before_any_work(
    kind, sets, batch_size, params, match, monkeypatch
):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(streams, "_sequence", no_work)
    monkeypatch.setattr(streams, "_dirichlet_order", no_work)
    monkeypatch.setattr(streams.Stream, "__init__", no_work)
    with pytest.raises(ValueError, match=match):
        make_stream(kind, sets, batch_size, 0, **params)


@pytest.mark.parametrize("seed, drop_last, match", [(-1, False, "seed"), (0, "yes", "drop_last")])
def test_bad_seed_or_drop_last(seed, drop_last, match):
    with pytest.raises(ValueError, match=match):
        make_stream("iid", SETS, 4, seed, drop_last=drop_last)


def test_registry_and_describe():
    assert sorted(streams.STREAMS) == sorted(KINDS)
    text = stream("gradual", batch_size=16).describe()
    assert "gradual" in text and "18 segments" not in text and "27 segments" in text
    assert f"{27 * N} examples" in text and "seed 0" in text
