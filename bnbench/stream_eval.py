"""Test-time methods on test streams: every method through one evaluation path.

A method sees the stream's batches in order (:mod:`bnbench.streams`) and predicts each
batch before the next arrives; stateful methods carry their state along the stream and
start over from the source model on every new stream. Methods (:data:`METHODS`, with the
name of their parameter):

* ``population``: the source statistics (exact statistics of the training set);
* ``adabn``: the exact statistics of the whole stream's inputs (Li et al. 2016), an
  *offline* reference: it needs every test example before the first prediction;
* ``test_batch`` (prediction-time BN), ``prior`` (Schneider et al. 2020), ``online_ema``,
  ``robust_bn`` (RoTTA's RBN): the normalisers of :mod:`bnbench.adaptation`;
* ``tent``: :class:`bnbench.tent.Tent` (Wang et al. 2021), ``mode`` continual or episodic.

Each evaluation records accuracy, NLL and ECE over the stream, the accuracy of each
segment (a (corruption, severity) part of the stream), the seconds per test example and
the passes it costs (forward passes per example, backward passes per batch). A method
that cannot run on the stream (a batch with one value per channel) or that diverges
(TENT's loss non-finite) is recorded with its reason, never a crash.
"""

import json
import time

import numpy as np

from . import adaptation
from .evaluate import evaluation_entry, population_statistics, predict, scored
from .tent import Diverged, Tent

#: method -> the name of its parameter (``None``: none)
METHODS = {"population": None, "adabn": None, "test_batch": None,
           "prior": "prior_strength", "online_ema": "momentum", "robust_bn": "momentum",
           "tent": "tent_lr"}  # fmt: skip


def predict_stream(model, stream, method, source, param=None, tent_mode="continual"):
    """Logits ``(len(stream), K)`` of ``method`` on ``stream`` and its cost:
    ``(logits, {"seconds", "forward_passes", "backward_passes"})``. ``source``: the
    network's source statistics ``[(mean, var), ...]``; ``param``: the method's
    parameter. The model is left as it was (TENT's parameters restored)."""
    if method not in METHODS:
        raise ValueError(f"stream method must be one of {sorted(METHODS)}, got {method!r}")
    t0 = time.perf_counter()
    forward, backward = 1, 0
    if method == "population":
        per_batch = lambda xb: predict(model, xb, source)  # noqa: E731
    elif method == "adabn":  # offline: the statistics of the whole stream first
        x_all = np.concatenate([xb for xb, _ in stream.batches()])
        stats = population_statistics(model, x_all)
        forward += 1
        per_batch = lambda xb: predict(model, xb, stats)  # noqa: E731
    elif method == "tent":
        tent = Tent(model, param, tent_mode)
        per_batch = tent
    else:
        norms = adaptation.normalisers(method, source, param)
        per_batch = lambda xb: predict(model, xb, norms)  # noqa: E731
    out = []
    try:
        for xb, _ in stream.batches():
            out.append(per_batch(xb))
    finally:
        if method == "tent":
            backward = tent.steps
            tent.restore()
    return np.concatenate(out), {"seconds": time.perf_counter() - t0,
                                 "forward_passes": forward, "backward_passes": backward}  # fmt: skip


def score_streams(model, streams, method, source, param=None, tent_mode="continual"):
    """One evaluation entry's fields for ``method`` on ``streams`` (one stream, or several,
    e.g. one per test set for the one-set kinds, each starting from the source model):
    accuracy, NLL and ECE over every example (``test_*``), ``segment_accuracy`` (JSON
    ``[[corruption, severity, n, accuracy], ...]``), ``seconds_per_example``,
    ``forward_passes`` per example and ``backward_passes`` (TENT's optimiser steps); or
    ``error`` with the reason it could not run or diverged."""
    logits, labels, segments = [], [], []
    seconds = backward = forward = 0
    for stream in streams:
        try:
            out, cost = predict_stream(model, stream, method, source, param, tent_mode)
        except Diverged as err:
            return {"error": f"diverged: {err}"}
        except ValueError as err:  # e.g. one value per channel in a batch of one
            return {"error": str(err)}
        correct = (out.argmax(axis=1) == stream.labels).astype(np.float64)
        segments += [[c, int(s), n, m] for _, c, s, n, m in stream.segment_means(correct)]
        logits.append(out)
        labels.append(stream.labels)
        seconds += cost["seconds"]
        backward += cost["backward_passes"]
        forward = cost["forward_passes"]
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return {**scored(logits, labels), "segment_accuracy": json.dumps(segments),
            "seconds_per_example": seconds / len(labels), "forward_passes": forward,
            "backward_passes": backward}  # fmt: skip


def _stream_seed(*parts):
    import zlib

    return zlib.crc32("-".join(map(str, parts)).encode())


def test_sets_for(config, split):
    """``({(corruption, severity): (x, y)}, corruptions)`` of the streams of ``split``:
    ``"test"`` scores the dataset's corruptions other than its held-out ones (and the
    clean set), ``"heldout"`` the held-out ones, on which hyperparameters are chosen. Each
    set is cut to the same ``config.stream_examples`` examples (a seeded subset)."""
    from . import corrupted
    from . import data as datasets

    registry = corrupted.corruptions(config.dataset)
    held = config.heldout_corruptions or registry.HELDOUT
    names = [c for c in registry.CORRUPTIONS if (c in held) == (split == "heldout")]
    severities = sorted({config.stream_severity, *range(1, 6)}) if "gradual" in config.streams \
        else [config.stream_severity]  # fmt: skip
    clean = datasets.load(config.dataset, config.num_samples)
    idx = np.random.default_rng([config.seed, 6]).permutation(len(clean.y_test))
    idx = np.sort(idx[: config.stream_examples])
    sets = {("none", 0): (clean.x_test[idx], clean.y_test[idx])}
    for c in names:
        for s in severities:
            x, y = corrupted.corrupted_test_set(config.dataset, c, s, config.num_samples)
            sets[(c, s)] = (x[idx], y[idx])
    return sets, names


def build_streams(kind, sets, corruptions, config, batch_size, split):
    """The streams one evaluation of ``kind`` runs: one per test set for the one-set
    kinds (``iid`` and ``class_correlated``: each corruption at ``stream_severity``, and
    the clean set for the test split), one stream otherwise (``mixed``: every corruption
    x example pair once, shuffled together, as mariodoebler's ``mixed_domains``)."""
    from .streams import make_stream

    sev = config.stream_severity
    seed = _stream_seed(config.seed, kind, batch_size, split)
    if kind in ("iid", "class_correlated"):
        keys = ([("none", 0)] if split == "test" else []) + [(c, sev) for c in corruptions]
        extra = {"alpha": config.dirichlet_alpha} if kind == "class_correlated" else {}
        return [make_stream(kind, sets, batch_size, seed, test_set=k, **extra) for k in keys]
    if kind == "mixed":  # every (corruption, example) pair once, shuffled together
        return [make_stream("mixed", sets, batch_size, seed, each_set=True,
                            sets=[(c, sev) for c in corruptions])]  # fmt: skip
    if kind == "continual":
        return [make_stream("continual", sets, batch_size, seed, corruptions=corruptions,
                            severity=sev)]  # fmt: skip
    return [make_stream("gradual", sets, batch_size, seed,
                        corruptions=corruptions[: config.gradual_corruptions])]  # fmt: skip


def stream_evaluations(model, config, source):
    """The entries (``bnbench.evaluate.EVALUATION_KEYS``) of every stream kind x split x
    batch size x method x parameter of ``config`` on the trained ``model`` with source
    statistics ``source``."""
    grid = {"population": [None], "adabn": [None], "test_batch": [None],
            "prior": config.prior_strengths, "online_ema": config.online_momenta,
            "robust_bn": [adaptation.ROBUST_BN_MOMENTUM], "tent": config.tent_lrs}  # fmt: skip
    methods = [m for m in METHODS if m in config.estimators]
    out = []
    for split in ("test", "heldout"):
        sets, corruptions = test_sets_for(config, split)
        for kind in config.streams:
            for size in config.stream_batch_sizes:
                streams = build_streams(kind, sets, corruptions, config, int(size), split)
                for method in methods:
                    modes = config.tent_modes if method == "tent" else [None]
                    for param in grid[method]:
                        for mode in modes:
                            entry = {"split": "test", "stream": kind, "stream_split": split,
                                     "estimator": method, "test_batch_size": int(size),
                                     "tent_mode": mode}  # fmt: skip
                            if METHODS[method]:
                                entry[METHODS[method]] = param
                            entry |= score_streams(model, streams, method, source, param,
                                                   mode or "continual")  # fmt: skip
                            out.append(evaluation_entry(**entry))
    return out
