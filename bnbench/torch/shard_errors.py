"""What each way of merging BN statistics across ranks (:data:`~bnbench.torch.distributed.SCHEMES`)
costs as the ranks' shards become uneven: :func:`merging_errors` on the values of one layer
and :func:`model_merging_errors` on a torch or bnbench model, each scheme against the exact
statistics of the union, as tidy tables for a study to plot."""

import numpy as np
import torch

from .. import estimators as est
from . import _core
from . import statistics as st
from .distributed import FRACTIONS, SCHEMES, as_float64, combine, moments_part


def shard_sizes(n, fraction, ranks=2, short_rank=0):
    """Per-rank sample counts: ``n`` on every rank but ``short_rank``, which holds
    ``round(fraction * n)`` (at least 1)."""
    if ranks < 2 or not 0 <= short_rank < ranks or not 0 < fraction <= 1:
        raise ValueError(f"need ranks >= 2, 0 <= short_rank < ranks and 0 < fraction <= 1, "
                         f"got {ranks}, {short_rank}, {fraction}")  # fmt: skip
    return tuple(max(1, round(fraction * n)) if r == short_rank else n for r in range(ranks))


def _shards(x, fraction, ranks, short_rank):
    """Rank ``r`` holds the first ``sizes[r]`` samples of the ``r``-th of ``ranks`` equal
    blocks of ``x``: only the short rank's size changes with ``fraction``, not its data."""
    n = len(x) // ranks
    sizes = shard_sizes(n, fraction, ranks, short_rank)
    return sizes, [x[r * n : r * n + size] for r, size in enumerate(sizes)]


def _rows(statistic, fraction, sizes, by_scheme, reference, eps):
    from ..evaluate import statistics_error  # lazily, as pandas: merging needs neither

    rows = []
    for scheme, stats in by_scheme.items():
        errs = [statistics_error([stats[n]], [reference[n]], eps[n])[0] for n in reference]
        for layer, (m, v) in [*zip(reference, errs, strict=True),
                              ("all", np.mean(errs, axis=0))]:  # fmt: skip
            rows.append({"statistic": statistic, "scheme": scheme, "fraction": fraction,
                         "sizes": ",".join(map(str, sizes)), "layer": layer,
                         "mean_error": float(m), "var_error": float(v)})  # fmt: skip
    return rows


def merging_errors(x, fractions=FRACTIONS, ranks=2, short_rank=0, eps=1e-5):
    """Each scheme's error on the values ``x`` ``(N, C, *spatial)`` of one layer, split
    into ``ranks`` contiguous blocks of ``n = N // ranks``, of which each rank holds the
    first :func:`shard_sizes` samples, for each fraction:
    a tidy DataFrame, one row per scheme x fraction (``layer`` ``"x"`` and ``"all"``), with
    ``mean_error`` and ``var_error`` as :func:`bnbench.evaluate.statistics_error` (RMS
    over channels of the mean error in reference standard deviations, and of ``log((var +
    eps) / (var_ref + eps))``) against NumPy on the union of the shards.

    Shards are slices in the order of ``x``: shuffle it for iid shards, sort it (e.g. by
    label) for ranks that see different data. With the short rank 0, the mean error of
    every scheme but ``size_weighted`` grows as the shards become uneven; the variance
    error need not (rank 0 alone misses the between-rank term ``w0 w1 d^2``, which
    shrinks with rank 0's share ``w0``)."""
    x = as_float64(x)
    rows = []
    for f in fractions:
        sizes, shards = _shards(x, f, ranks, short_rank)
        union = np.concatenate(shards).swapaxes(0, 1).reshape(x.shape[1], -1)
        ref = {"x": (union.mean(axis=1), union.var(axis=1))}
        parts = [moments_part(s) for s in shards]
        by_scheme = {s: {"x": combine(parts, s)} for s in SCHEMES}
        rows += _rows("values", f, sizes, by_scheme, ref, {"x": eps})
    import pandas as pd

    return pd.DataFrame(rows)


def _torch_probe(model):

    layers = _core.bn_layers(model)
    _core.check_training(layers, "model_merging_errors")
    device = _core.model_device(model)

    def precise(batches):
        aggs, _, _ = st.precise_aggregates(model, batches)
        return {n: (a.count, a.mean, a.var * a.count) for n, a in aggs.items()}

    def population(batches, done):
        fixed = {n: tuple(_core.as_tensor(s, device) for s in ms) for n, ms in done.items()}
        with _core.preserved(model) as outer, torch.no_grad():
            model.eval()
            guard = _core.PassGuard(model, outer)
            name, agg, _, _ = st.population_pass(model, layers, fixed, guard, batches, device)
        return name, (agg.count, agg.mean, agg.var * agg.count)

    return {n: float(m.eps) for n, m in layers.items()}, precise, population


def _bnbench_probe(model):
    """bnbench networks: every pass in eval mode, a BN layer normalising with the fixed
    statistics of ``done`` or else (a callable ``eval_stats``) its own input's."""
    names = {str(i): layer for i, layer in enumerate(model.bn_layers)}  # forward order

    def run(batches, done, record):
        aggs = {n: est.BatchAggregate(names[n].num_features, unbiased=False) for n in record}

        def own(name):
            def stats(v):
                part = moments_part(v)
                if name in aggs:
                    aggs[name].update(part[1], part[2] / part[0], part[0])
                return part[1], part[2] / part[0]

            return stats

        saved = [layer.eval_stats for layer in names.values()]
        try:
            for n, layer in names.items():
                layer.eval_stats = done[n] if n in done else own(n)
            for b in batches:
                model.forward(b, "eval")
        finally:
            for layer, s in zip(names.values(), saved, strict=True):
                layer.eval_stats = s
        return {n: (a.count, a.mean, a.var * a.count) for n, a in aggs.items()}

    def population(batches, done):
        name = next(n for n in names if n not in done)
        return name, run(batches, done, [name])[name]

    return ({n: float(la.eps) for n, la in names.items()}, lambda b: run(b, {}, list(names)),
            population)  # fmt: skip


def model_merging_errors(model, x, statistic="population", fractions=FRACTIONS, ranks=2,
                         short_rank=0, batch_size=32):  # fmt: skip
    """:func:`merging_errors` for every BN layer of ``model`` (a torch module in training
    mode, or a bnbench network) on synthetic uneven shards of ``x`` (a tensor, or an array
    for a bnbench network), simulated in one process: each rank's shard goes in batches of
    ``batch_size``; ``statistic`` ``"precise"`` merges each rank's PreciseBN aggregate
    (total variance), ``"population"`` merges layer by layer, every upstream layer
    normalising with *that scheme's* merged statistics, as ranks merging that way would.
    The reference is the same computation on one rank holding the union. Rows as
    :func:`merging_errors`, ``layer`` the BN layer names (bnbench: indices) and ``"all"``
    (their mean); the model is left as it was."""
    if statistic not in ("precise", "population"):
        raise ValueError(f'statistic must be "precise" or "population", got {statistic!r}')
    if isinstance(model, torch.nn.Module):
        x, (eps, precise, population) = torch.as_tensor(x), _torch_probe(model)
    elif hasattr(model, "bn_layers"):
        eps, precise, population = _bnbench_probe(model)
    else:
        raise TypeError(f"model must be a torch.nn.Module or a bnbench network, got "
                        f"{type(model).__name__}")  # fmt: skip

    def run(shards, scheme):
        if statistic == "precise":
            parts = [precise(b) for b in shards]
            return {n: combine([p[n] for p in parts], scheme) for n in eps}
        done = {}
        while len(done) < len(eps):
            measured = [population(b, done) for b in shards]
            done[measured[0][0]] = combine([p for _, p in measured], scheme)
        return done

    rows = []
    for f in fractions:
        sizes, shards = _shards(x, f, ranks, short_rank)
        shards = [[s[i : i + batch_size] for i in range(0, len(s), batch_size)] for s in shards]
        ref = run([[b for s in shards for b in s]], "size_weighted")
        ref = {n: ref[n] for n in eps}
        rows += _rows(statistic, f, sizes, {s: run(shards, s) for s in SCHEMES}, ref, eps)
    import pandas as pd

    return pd.DataFrame(rows)
