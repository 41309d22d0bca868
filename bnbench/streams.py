"""Test streams: a seeded order of test examples cut into batches, as a deployment sees them.

A :class:`Stream` is index arrays into the test sets, never a copy of ``x``: position ``i``
is example ``example[i]`` of set ``sets[set_index[i]]``, a ``(corruption, severity)`` key,
in segment ``segment[i]``, whose key is ``segments[segment[i]]``; accuracy is reported per
segment with :meth:`Stream.segment_means`. Input: a mapping ``{(corruption, severity):
(x, y)}`` over the same underlying examples (same labels in the same order; the clean set
is ``("none", 0)``, and severity 0 of any corruption means it, as in :mod:`bnbench.shift`),
or one ``(x, y)`` for a one-set kind; ``x`` is any array of shape ``(N, ...)``.

Batches hold ``batch_size`` examples. When that does not divide the stream the last batch
is smaller (``drop_last=False``, the default) or dropped with its positions
(``drop_last=True``); a final batch of one leaves batch statistics undefined for an MLP,
which the caller handles. Kinds, by name in :data:`STREAMS`, built by :func:`make_stream`
(each builder's docstring names the source it follows and how ours differs):

- ``iid``: one set, one shuffled pass.
- ``class_correlated``: one set, labels correlated in time by a Dirichlet(``alpha``).
- ``mixed``: every batch mixes several sets.
- ``continual``: the corruptions one after another, each a shuffled full pass.
- ``gradual``: per corruption severities 1,2,3,4,5,4,3,2,1, then the next corruption.

Every argument is checked before any work; a bad one raises ``ValueError`` naming it.
"""

import inspect
from collections.abc import Mapping

import numpy as np

from .data import check_seed

__all__ = ["CLEAN", "STREAMS", "Stream", "make_stream"]

CLEAN = ("none", 0)
GRADUAL = (1, 2, 3, 4, 5, 4, 3, 2, 1)
_MAX_REDRAWS = 1000


class Stream:
    """A test stream, built by :func:`make_stream`. Per position (arrays of ``len(stream)``):
    ``set_index`` (into ``sets``), ``example`` (into that set), ``segment`` (into
    ``segments``, whose entries are ``(corruption, severity)`` keys), ``corruption``,
    ``severity``, ``position`` and ``labels``. :meth:`batch_indices` yields each batch's
    ``(set_index, example)``, :meth:`batches` its gathered ``(x, y)``: ``x`` is never copied
    but one batch at a time. ``dropped`` counts the positions ``drop_last`` removed."""

    def __init__(self, kind, arrays, sets, set_index, example, segments, segment, batch_size,
                 drop_last, seed, params):  # fmt: skip
        keep = len(example) - len(example) % batch_size if drop_last else len(example)
        self.kind, self.seed, self.params = kind, seed, dict(params)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.dropped = len(example) - keep  # positions dropped from the end
        self.sets, self.segments = tuple(sets), tuple(segments)
        self._arrays = [arrays[k] for k in self.sets]  # references, not copies
        self.set_index = np.asarray(set_index, dtype=np.intp)[:keep]
        self.example = np.asarray(example, dtype=np.intp)[:keep]
        self.segment = np.asarray(segment, dtype=np.intp)[:keep]
        self.position = np.arange(keep)
        self.severity = np.array([s for _, s in self.sets], dtype=np.int64)[self.set_index]

    @property
    def corruption(self):
        """The corruption name of every position (``"none"`` for the clean set)."""
        return np.array([c for c, _ in self.sets])[self.set_index]

    @property
    def labels(self):
        """The label of every position (all sets share the labels)."""
        return np.asarray(self._arrays[0][1])[self.example]

    def __len__(self):
        return len(self.example)

    @property
    def num_batches(self):
        return -(-len(self) // self.batch_size)

    def batch_indices(self):
        """``(set_index, example)`` views, batch after batch, in stream order."""
        for start in range(0, len(self), self.batch_size):
            stop = start + self.batch_size
            yield self.set_index[start:stop], self.example[start:stop]

    def batches(self):
        """``(x_batch, y_batch)`` gathered lazily, batch after batch (one copy of each)."""
        for sidx, ex in self.batch_indices():
            first = int(sidx[0])
            x0, y0 = self._arrays[first]
            y = np.asarray(y0)[ex]
            if np.all(sidx == first):
                yield x0[ex], y
                continue
            x = np.empty((len(ex),) + x0.shape[1:], dtype=x0.dtype)
            for k in np.unique(sidx):
                mask = sidx == k
                x[mask] = self._arrays[k][0][ex[mask]]
            yield x, y

    def segment_means(self, values):
        """Per segment: ``(segment, corruption, severity, count, mean of values)`` of a
        per-position array (e.g. 1.0 where a prediction is correct)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(self),):
            raise ValueError(f"values must have shape ({len(self)},), got {values.shape}")
        count = np.bincount(self.segment, minlength=len(self.segments))
        total = np.bincount(self.segment, values, minlength=len(self.segments))
        rows = zip(self.segments, count, total, strict=True)
        return [(i, c, s, int(n), t / n if n else float("nan"))
                for i, ((c, s), n, t) in enumerate(rows)]  # fmt: skip

    def describe(self):
        last = len(self) - (self.num_batches - 1) * self.batch_size
        tail = f"dropped {self.dropped}" if self.drop_last else f"last batch {last}"
        segs = ", ".join(f"{c}/{s}" for c, s in self.segments[:6])
        more = f" (+{len(self.segments) - 6})" if len(self.segments) > 6 else ""
        opts = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return (f"{self.kind} stream: {len(self)} examples in {self.num_batches} batches of "
                f"{self.batch_size} ({tail}), seed {self.seed}{opts}; "
                f"{len(self.segments)} segments: {segs}{more}")  # fmt: skip

    __repr__ = describe


def _pair(xy, name):
    if not (isinstance(xy, tuple | list) and len(xy) == 2):
        raise ValueError(f"{name} must be an (x, y) pair of arrays, got {type(xy).__name__}")
    x, y = xy
    y = np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{name} must have y of shape (N,) and x of shape (N, ...), "
                         f"got {len(x)} and {y.shape}")  # fmt: skip
    if len(y) == 0:
        raise ValueError(f"{name} is an empty test set")
    return x, y


def _sets(test_sets):
    """``{key: (x, y)}`` checked: keys ``(str, int)``, pairs valid, the same N."""
    if not isinstance(test_sets, Mapping) or not test_sets:
        got = type(test_sets).__name__ if not isinstance(test_sets, Mapping) else "{}"
        raise ValueError(f"test_sets must be a non-empty mapping {{(corruption, severity): "
                         f"(x, y)}}, got {got}")  # fmt: skip
    out = {}
    for key, xy in test_sets.items():
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
            raise ValueError(f"test_sets keys must be (corruption, severity), got {key!r}")
        out[key] = _pair(xy, f"test_sets[{key!r}]")
    sizes = {len(y) for _, y in out.values()}
    if len(sizes) > 1:
        raise ValueError(f"test_sets must all hold the same examples, got sizes {sorted(sizes)}")
    return out


def _number(v, kind):
    types = int | np.integer if kind is int else int | float | np.integer | np.floating
    return not isinstance(v, bool | np.bool_) and isinstance(v, types)


def _same_labels(sets, keys):
    """The sets of ``keys`` hold the same examples: equal labels, x of one shape and dtype."""
    x0, y0 = sets[keys[0]]
    for k in keys[1:]:
        x, y = sets[k]
        if not np.array_equal(y, y0):
            raise ValueError(f"test_sets labels disagree: {k!r} differs from {keys[0]!r}")
        if x.shape != x0.shape or x.dtype != x0.dtype:
            raise ValueError(f"test_sets x differ: {k!r} is {x.shape} {x.dtype}, "
                             f"{keys[0]!r} is {x0.shape} {x0.dtype}")  # fmt: skip


def _one(test_sets, test_set):
    """A one-set kind: ``(arrays, key)`` from an ``(x, y)`` or a mapping and ``test_set``."""
    if isinstance(test_sets, Mapping):
        sets = _sets(test_sets)
        if test_set not in sets:
            raise ValueError(f"test_sets has no set {test_set!r} (test_set); it has {list(sets)}")
        return sets, test_set
    return {test_set: _pair(test_sets, "test_sets")}, test_set


def _corruptions(sets, corruptions):
    known = list(dict.fromkeys(c for c, _ in sets if c != CLEAN[0]))
    if corruptions is None:
        if not known:
            raise ValueError("test_sets has no corrupted set (corruptions)")
        return known
    if isinstance(corruptions, str) or not corruptions:
        raise ValueError(f"corruptions must be a non-empty sequence, got {corruptions!r}")
    bad = [c for c in corruptions if c not in known]
    if bad:
        raise ValueError(f"corruptions {bad} not in test_sets (it has {known})")
    return list(corruptions)


def _key(sets, corruption, severity, name):
    key = CLEAN if severity == 0 else (corruption, severity)
    if key not in sets:
        what = "the clean set ('none', 0)" if key == CLEAN else repr(key)
        raise ValueError(f"{name}: test_sets has no {what}")
    return key


def _sequence(sets, keys, rng):
    """One shuffled full pass per key, in order: ``(sets, set_index, example, segments,
    segment)``, one segment per key."""
    n = len(next(iter(sets.values()))[1])
    uniq = list(dict.fromkeys(keys))
    set_index = np.repeat([uniq.index(k) for k in keys], n)
    example = np.concatenate([rng.permutation(n) for _ in keys])
    return uniq, set_index, example, keys, np.repeat(np.arange(len(keys)), n)


def _dirichlet_order(y, alpha, rng, min_chunk, shuffle_within):
    """``sort_by_dirichlet`` (see the module docstring) on labels ``y``: an order of indices."""
    classes, y = np.unique(y, return_inverse=True)
    n, k = len(y), len(classes)
    for _ in range(_MAX_REDRAWS):
        chunks = [[] for _ in range(k)]  # chunk -> [indices of one class, ...]
        sizes = np.zeros(k, dtype=np.int64)
        for c in range(k):
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(k, alpha)) * (sizes < n / k)
            p = p / p.sum() if p.sum() > 0 else (sizes < n / k) / np.sum(sizes < n / k)
            for j, part in enumerate(np.split(idx, (np.cumsum(p) * len(idx)).astype(int)[:-1])):
                chunks[j].append(part)
                sizes[j] += len(part)
        if sizes.min() >= min_chunk:
            break
    else:
        raise ValueError(f"alpha={alpha}: no Dirichlet draw gave every chunk {min_chunk} "
                         f"examples in {_MAX_REDRAWS} tries; lower min_chunk")  # fmt: skip
    order = []
    for parts in chunks:
        chunk = np.concatenate([parts[c] for c in rng.permutation(k)])
        order.append(rng.permutation(chunk) if shuffle_within else chunk)
    return np.concatenate(order)


def iid(test_sets, rng, *, test_set=CLEAN):
    """One set (``test_set`` of a mapping, default the clean set), one shuffled pass: the
    default order of both mariodoebler/test-time-adaptation (``random.shuffle`` of the
    samples in ``classification/datasets/data_loading.py``, ``get_test_loader``) and
    LINs-lab/ttab (``intra_domain_shuffle``, ``ttab/loads/define_dataset.py``)."""
    sets, key = _one(test_sets, test_set)
    return sets, lambda: _sequence(sets, [key], rng), len(sets[key][1])


def class_correlated(test_sets, rng, *, alpha=None, test_set=CLEAN, min_chunk=None,
                     shuffle_within=False):  # fmt: skip
    """One set, label-correlated order: ``sort_by_dirichlet`` of mariodoebler/
    test-time-adaptation (``classification/datasets/data_loading.py``, the "correlated"
    setting, adapted there from NOTE, Gong et al. 2022), the same construction as ttab's
    ``_intra_non_iid_shift`` (LINs-lab/ttab ``ttab/loads/define_dataset.py``,
    ``non_iid_ness``). K = #classes chunks; each class, shuffled, is split over the chunks
    by proportions ~ Dirichlet(``alpha``), the chunks already holding N/K examples masked
    out; all redrawn until every chunk holds ``min_chunk`` (theirs 10, ttab 5; here 10 at
    most N / (2K)); then chunk after chunk, its classes in a random order, each class's part
    contiguous. Small alpha: long runs of one class; large alpha: every chunk (a window of
    about N/K) holds every class in proportion, like an iid window, but class-sorted inside.

    Our variant ("dirichlet-chunks"): a seeded generator instead of the global one, at most
    1000 redraws instead of a 120 s timer (then ``ValueError``), uniform proportions over
    the open chunks where every drawn proportion falls on full ones (theirs divides 0 by
    0), and ``shuffle_within=True`` (not theirs) shuffles each chunk, so large alpha
    approaches iid in order as well."""
    if not _number(alpha, float) or not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    sets, key = _one(test_sets, test_set)
    y = sets[key][1]
    most = len(y) // len(np.unique(y))
    if min_chunk is None:
        min_chunk = min(10, most // 2)
    if not _number(min_chunk, int) or not 0 <= min_chunk <= most:
        raise ValueError(f"min_chunk must be an integer in [0, {most}] (N / #classes), "
                         f"got {min_chunk!r}")  # fmt: skip

    def build():
        order = _dirichlet_order(y, float(alpha), rng, min_chunk, shuffle_within)
        zeros = np.zeros(len(y), np.intp)
        return [key], zeros, order, [key], zeros

    return sets, build, len(y)


def mixed(test_sets, rng, *, sets=None, weights=None, each_set=False):
    """Every batch mixes ``sets`` (default: every corrupted set, in the mapping's order).

    Default, our variant ("mixed-one-pass"): one shuffled pass over the N underlying
    examples, each position's set drawn i.i.d. from ``weights`` (uniform by default), so
    every example is used once. ``each_set=True`` follows mariodoebler's ``mixed_domains``
    (every domain's full set concatenated, ``create_cifarc_dataset`` in
    ``classification/datasets/corruptions_datasets.py``, then shuffled in
    ``get_test_loader``) and ttab's ``CrossMixture`` (``MergeMultiTestDatasets.merge``):
    every (set, example) pair once, shuffled together, K N positions. The segments are the
    sets, interleaved."""
    arrays = _sets(test_sets)
    keys = [k for k in arrays if k[0] != CLEAN[0]] if sets is None else list(sets)
    bad = [k for k in keys if k not in arrays]
    if bad or len(keys) < 2 or len(set(keys)) != len(keys):
        raise ValueError(f"sets must be two or more distinct keys of test_sets, got {keys!r}"
                         + (f" ({bad} not in test_sets)" if bad else ""))  # fmt: skip
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        ok = w.shape == (len(keys),) and np.all(np.isfinite(w) & (w >= 0)) and w.sum() > 0
        if each_set or not ok:
            raise ValueError(f"weights must be {len(keys)} finite numbers >= 0, not all 0 "
                             f"(and not with each_set), got {weights!r}")  # fmt: skip
        weights = w / w.sum()
    _same_labels(arrays, keys)
    n = len(arrays[keys[0]][1])

    def build():
        if each_set:
            flat = rng.permutation(len(keys) * n)
            set_index, example = flat // n, flat % n
        else:
            example = rng.permutation(n)
            set_index = rng.choice(len(keys), size=n, p=weights)
        return keys, set_index, example, keys, set_index

    return arrays, build, n * len(keys) if each_set else n


def continual(test_sets, rng, *, corruptions=None, severity=None):
    """The ``corruptions`` one after another (default: all, in the mapping's order), no
    reset, each segment a shuffled full pass: with ``severity`` one segment per corruption
    at it, else every set of each corruption in the mapping's order. As mariodoebler's
    ``continual`` setting (``classification/test_time.py``, one loader per domain) and
    ttab's ``HomogeneousNoMixture`` with ``intra_domain_shuffle``. Theirs re-seeds every
    loader, so each segment repeats one permutation; ours draws a fresh one per segment."""
    arrays = _sets(test_sets)
    cs = _corruptions(arrays, corruptions)
    if severity is None:
        keys = [k for c in cs for k in arrays if k[0] == c]
    else:
        keys = [_key(arrays, c, severity, "severity") for c in cs]
    _same_labels(arrays, keys)
    return arrays, lambda: _sequence(arrays, keys, rng), len(keys) * len(arrays[keys[0]][1])


def gradual(test_sets, rng, *, corruptions=None, severities=GRADUAL):
    """Per corruption the ``severities`` in order (0 means the clean set), each step a
    shuffled full pass and a segment, then the next corruption, no reset: mariodoebler's
    ``gradual`` setting (``classification/test_time.py``: severities 1,2,3,4,5,4,3,2,1 for
    each domain of the sequence in turn), fresh permutations as in :func:`continual`."""
    arrays = _sets(test_sets)
    cs = _corruptions(arrays, corruptions)
    if isinstance(severities, str) or not hasattr(severities, "__len__") or not severities:
        raise ValueError(f"severities must be a non-empty sequence, got {severities!r}")
    keys = [_key(arrays, c, s, "severities") for c in cs for s in severities]
    _same_labels(arrays, keys)
    return arrays, lambda: _sequence(arrays, keys, rng), len(keys) * len(arrays[keys[0]][1])


#: stream kind -> builder ``(test_sets, rng, **params) -> (arrays, build, length)``
STREAMS = {f.__name__: f for f in (iid, class_correlated, mixed, continual, gradual)}


def make_stream(kind, test_sets, batch_size, seed=0, *, drop_last=False, **params):
    """The :class:`Stream` of ``kind`` (a key of :data:`STREAMS`) over ``test_sets``, in
    batches of ``batch_size`` (1 to the stream's length), a deterministic function of the
    arguments (``seed`` in [0, 2**32)). Every argument is checked before any work."""
    if not isinstance(kind, str) or kind not in STREAMS:
        raise ValueError(f"kind must be one of {sorted(STREAMS)}, got {kind!r}")
    if not _number(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seed = check_seed(seed, "seed")
    if not isinstance(drop_last, bool | np.bool_):
        raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
    takes = [
        p for p in inspect.signature(STREAMS[kind]).parameters if p not in ("test_sets", "rng")
    ]
    if set(params) - set(takes):
        raise ValueError(f"{kind} stream takes {takes}, got {sorted(set(params) - set(takes))}")
    rng = np.random.default_rng(seed)
    arrays, build, length = STREAMS[kind](test_sets, rng, **params)
    if batch_size > length:
        raise ValueError(f"batch_size must be at most the stream's length {length}, "
                         f"got {batch_size}")  # fmt: skip
    keys, set_index, example, segments, segment = build()
    return Stream(kind, arrays, keys, set_index, example, segments, segment, int(batch_size),
                  bool(drop_last), seed, params)  # fmt: skip
