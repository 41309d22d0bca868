"""Statistics that need extra passes over data after training, and installing a chosen
estimate into a model.

* :func:`precise_statistics`: PreciseBN (Wu & Johnson 2021, section 3; fvcore's
  ``update_bn_stats``): frozen weights, BN layers in training mode, each layer's batch
  statistics aggregated by :class:`bnbench.estimators.BatchAggregate`. One pass over
  ``num_samples`` samples.
* :func:`population_statistics`: the exact statistics of the final network, layer by
  layer, every upstream BN layer in inference mode with its own population statistics:
  **one pass over the data per BN layer** (``L`` layers cost ``L`` passes).
* :func:`load_statistics`: write statistics into the layers' running buffers.

Both passes take ``process_group=`` (``"world"`` or a ``torch.distributed`` group): each
rank aggregates its own batches and the ranks merge exactly, size-weighted
(:mod:`bnbench.torch.distributed`), so every rank returns the statistics of the union of
all ranks' data.

Every function leaves the model as it found it, after an error too: buffers bit for bit,
train/eval flags, no hooks.
"""

import time

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .. import estimators as est
from . import _core
from . import distributed as dist_

#: PreciseBN's two aggregations of the same pass
AGGREGATIONS = ("total_variance", "mean_of_batch_variances")


class Statistics(dict):
    """``{layer name: (mean, var)}`` (float64 tensors on the data's device), with what it
    cost: ``samples`` (per pass), ``passes`` over the data and ``seconds``."""

    samples = None
    passes = None
    seconds = None


def _stats(items, samples, passes, t0):
    out = Statistics(items)
    out.samples, out.passes, out.seconds = samples, passes, time.perf_counter() - t0
    return out


def _device(model, device):
    return _core.check_device(_core.model_device(model) if device is None else device)


def precise_aggregates(model, batches, num_samples=None, device=None, merging=False):
    """PreciseBN's pass: ``({layer: BatchAggregate}, {layer: device}, samples used)``.

    Batches are forwarded (under ``torch.no_grad``) until at least ``num_samples``
    samples were seen (``None``: every batch), whole batches only. Batches that run out
    first are not an error here (``samples used`` says how many were seen; the torch
    jobs record it): :func:`precise_statistics` raises. ``merging``: the aggregates are
    this rank's, to be merged across ranks; SyncBatchNorm layers then normalise with this
    rank's batch alone (no collective per batch, so uneven batch counts cannot hang)."""
    layers = _core.bn_layers(model, merged=merging)
    _core.check_training(layers, "precise_statistics")
    if num_samples is not None and (isinstance(num_samples, bool) or int(num_samples) < 1):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
    device = _device(model, device)
    aggs = {n: est.BatchAggregate(m.num_features, unbiased=True) for n, m in layers.items()}
    devices = {}
    used = 0
    with _core.preserved(model) as hooks, torch.no_grad():
        guard = _core.PassGuard(model, hooks)

        def make_hook(name):
            def hook(module, args):
                guard.check(name)
                mean, var, count = _core.batch_moments(args[0])
                aggs[name].update(mean, var, count)
                devices[name] = args[0].device

            return hook

        for name, layer in layers.items():
            hooks.pre(layer, make_hook(name))
            if merging and isinstance(layer, torch.nn.SyncBatchNorm):
                hooks.override(layer, lambda x, layer=layer: _BatchNorm.forward(layer, x))
        for x, _ in _core.iterate(batches, device, "precise_statistics"):
            model(x)
            used += x.shape[0]
            if num_samples is not None and used >= num_samples:
                break
    missing = [n for n, a in aggs.items() if a.count == 0]
    if missing:
        raise ValueError(f"BN layer(s) {missing} never ran in the forward passes")
    return aggs, devices, used


def aggregated(aggs, devices, aggregation):
    """Statistics of PreciseBN aggregates: ``"total_variance"`` is fvcore's current
    ``_PopulationVarianceEstimator`` (count-weighted mean; biased variance of the union
    of the batches: mean of batch variances plus variance of batch means, no Bessel over
    the total); ``"mean_of_batch_variances"`` is old fvcore's
    ``_MeanOfBatchVarianceEstimator`` and ``torch.optim.swa_utils.update_bn`` (mean of
    the Bessel-corrected batch variances, every batch weighing the same), both as
    :class:`bnbench.estimators.BatchAggregate` computes them."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    out = {}
    for name, a in aggs.items():
        var = a.var if aggregation == "total_variance" else a.mean_batch_var
        out[name] = (_core.as_tensor(a.mean, devices[name]), _core.as_tensor(var, devices[name]))
    return out


def _check_used(num_samples, used):
    if num_samples is not None and used < num_samples:  # fvcore's update_bn_stats raises too
        raise ValueError(
            f"precise_statistics needs num_samples={num_samples} samples, but the batches "
            f"gave only {used}: pass more batches, or a smaller num_samples (None: all)"
        )


def _check_merge(model, aggregation=None):
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError("pass the DistributedDataParallel's .module: its forward broadcasts "
                        "buffers, a collective per batch")  # fmt: skip
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    return _core.bn_layers(model, merged=True)


def precise_statistics(model, batches, num_samples=None, aggregation="total_variance",
                       device=None, process_group=None):  # fmt: skip
    """PreciseBN statistics of ``model`` (BN layers in training mode, weights frozen)
    over the first ``num_samples`` samples of ``batches`` (at least that many, whole
    batches, and a ``ValueError`` if ``batches`` has fewer; ``None``: all); see
    :func:`aggregated` for ``aggregation``. Inputs are moved to ``device`` (default: the
    model's). Returns :class:`Statistics`.

    ``process_group`` (``"world"`` or a ``torch.distributed`` group; ``None``: this
    process alone): every rank of the group calls this with its own ``batches``
    (``num_samples`` per rank) and all return the same statistics, those of every batch
    of every rank: counts, means and ``M2`` merged size-weighted (Chan), the mean of batch
    variances over all batches; ``samples`` is the total. One ``all_gather`` of the
    layer fingerprints, one of the aggregates. Each batch is normalised with its own
    statistics, SyncBatchNorm layers included (with this rank's batch alone). An error
    on any rank, or ranks with different BN layers, raises on every rank."""
    t0 = time.perf_counter()
    group = dist_.resolve_group(process_group)
    if group is not None:
        return _precise_merged(model, batches, num_samples, aggregation, device, group, t0)
    aggs, devices, used = precise_aggregates(model, batches, num_samples, device)
    _check_used(num_samples, used)
    return _stats(aggregated(aggs, devices, aggregation), used, 1, t0)


def _precise_merged(model, batches, num_samples, aggregation, device, group, t0):
    what = "precise_statistics"
    layers, error = {}, None
    try:
        layers = _check_merge(model, aggregation)
    except Exception as e:  # every rank must reach the collective, to raise together
        error = e
    spec = dist_.agree_layers(group, layers, error, what)
    row, error = None, None
    try:
        aggs, devices, used = precise_aggregates(model, batches, num_samples, device, True)
        _check_used(num_samples, used)
        # per layer: count, batches, mean, M2, sum of the batch variances
        row = np.hstack([used, *(x for n, _ in spec for x in (
            aggs[n].count, aggs[n].batches, aggs[n].mean, aggs[n].var * aggs[n].count,
            aggs[n].mean_batch_var * aggs[n].batches))])  # fmt: skip
    except Exception as e:
        error = e
    rows = dist_.gather_rows(group, row, 1 + sum(2 + 3 * c for _, c in spec), error, what)
    out, k = {}, 1
    for n, c in spec:
        b, k = rows[:, k : k + 2 + 3 * c], k + 2 + 3 * c
        count, mean, m2 = dist_.merge([(r[0], r[2 : 2 + c], r[2 + c : 2 + 2 * c]) for r in b])
        var = m2 / count
        if aggregation != "total_variance":
            var = b[:, 2 + 2 * c :].sum(0) / b[:, 1].sum()
        out[n] = (_core.as_tensor(mean, devices[n]), _core.as_tensor(var, devices[n]))
    return _stats(out, int(rows[:, 0].sum()), 1, t0)


def population_statistics(model, batches, device=None, process_group=None):
    """Exact population statistics: each BN layer's mean and biased variance over every
    sample of ``batches``, with the model in eval mode (dropout off) and every upstream BN
    layer normalising with its own population statistics, as at test time.

    Layer by layer, in the order the forward pass calls them: pass ``j`` normalises the
    ``j`` layers already done with their statistics, skips the rest (identity) and
    aggregates layer ``j``'s input. **It costs one pass over ``batches`` per BN layer**,
    so ``batches`` must be re-iterable (a list or a ``DataLoader``) and give the same
    samples each time. Over the training set these are the ``population`` statistics;
    over unlabeled test data, AdaBN's (Li et al. 2016). Returns :class:`Statistics`.

    ``process_group`` (``"world"`` or a ``torch.distributed`` group; ``None``: this
    process alone): every rank calls this with its own ``batches``; pass ``j`` on each
    rank aggregates layer ``j`` over its batches, one ``all_gather`` per layer merges the
    ranks exactly (size-weighted), and every rank normalises with the *merged* statistics
    in the passes after: all return the population statistics of the union of the ranks'
    data (``samples``: the total). An error on any rank, or ranks with different BN
    layers (checked first) or calling them in different orders, raises on every rank."""
    t0 = time.perf_counter()
    group = dist_.resolve_group(process_group)
    layers, error = {}, None
    try:
        layers = _check_merge(model) if group is not None else _core.bn_layers(model)
        _core.check_training(layers, "population_statistics")
        if iter(batches) is batches:
            raise TypeError(
                "population_statistics makes one pass over batches per BN layer: pass a "
                "re-iterable (a list or a DataLoader), not an iterator or generator"
            )
        device = _device(model, device)
    except Exception as e:
        if group is None:
            raise
        error = e
    if group is not None:
        spec = dist_.agree_layers(group, layers, error, "population_statistics")
    done, samples = {}, 0
    with _core.preserved(model) as outer, torch.no_grad():
        model.eval()
        guard = _core.PassGuard(model, outer)
        while len(done) < len(layers):
            if group is None:
                name, agg, dev, samples = population_pass(model, layers, done, guard,
                                                           batches, device)  # fmt: skip
                stats = (agg.mean, agg.var)
            else:
                name, stats, dev, samples = _merged_pass(model, layers, done, guard, batches,
                                                         device, group, spec)  # fmt: skip
            done[name] = tuple(_core.as_tensor(s, dev) for s in stats)
    return _stats({n: done[n] for n in layers}, samples, len(layers), t0)


def _merged_pass(model, layers, done, guard, batches, device, group, spec):
    """:func:`population_pass` on every rank, merged by one ``all_gather`` of ``(layer
    index, samples, count, mean, M2)``: ``(name, (mean, var), device, total samples)``."""
    names, width = [n for n, _ in spec], max(c for _, c in spec)
    row, error, dev = None, None, None
    try:
        name, agg, dev, samples = population_pass(model, layers, done, guard, batches, device)
        pad = [0.0] * (width - len(agg.mean))
        row = np.hstack(
            [names.index(name), samples, agg.count, agg.mean, pad, agg.var * agg.count, pad]
        )
    except Exception as e:
        error = e
    rows = dist_.gather_rows(group, row, 3 + 2 * width, error, "population_statistics")
    if (rows[:, 0] != rows[0, 0]).any():
        measured = [names[int(i)] for i in rows[:, 0]]
        raise ValueError(
            f"population_statistics: pass {len(done) + 1} measured different BN layers on "
            f"the ranks ({measured}): their forward passes call the BN layers in different orders"
        )
    name = names[int(rows[0, 0])]
    c = dict(spec)[name]
    count, mean, m2 = dist_.merge(
        [(r[2], r[3 : 3 + c], r[3 + width : 3 + width + c]) for r in rows]
    )
    return name, (mean, m2 / count), dev, int(rows[:, 1].sum())


def population_pass(model, layers, done, guard, batches, device):
    """One pass of :func:`population_statistics`: the layers of ``done`` normalise with
    their statistics, the others are skipped, and the first of them to run is measured.
    Returns ``(its name, its BatchAggregate (biased), its input's device, samples)``."""
    aggs, devices = {}, {}

    def make_hook(name):
        def hook(module, args):
            guard.check(name)
            if name in done or (aggs and name not in aggs):
                return  # one layer per pass: the first one not done
            mean, var, count = _core.batch_moments(args[0])
            agg = aggs.setdefault(name, est.BatchAggregate(len(mean), unbiased=False))
            agg.update(mean, var, count)
            devices[name] = args[0].device

        return hook

    samples = 0
    with _core.preserved(model) as hooks:
        for name, layer in layers.items():
            hooks.pre(layer, make_hook(name))
            forward = _core.fixed_forward(layer, *done[name]) if name in done else (lambda x: x)
            hooks.override(layer, forward)
        for x, _ in _core.iterate(batches, device, "population_statistics"):
            model(x)
            samples += x.shape[0]
    if not aggs:
        missing = [n for n in layers if n not in done]
        raise ValueError(f"BN layer(s) {missing} never ran in the forward passes")
    ((name, agg),) = aggs.items()
    return name, agg, devices[name], samples


def load_statistics(model, statistics):
    """Copy ``statistics`` ``{layer: (mean, var)}`` into the layers' ``running_mean`` and
    ``running_var`` (cast to their dtype and device), so that the model in eval mode
    normalises with them. Every layer must be named, and everything is checked before
    anything is written."""
    layers = _core.bn_layers(model)
    if not isinstance(statistics, dict):
        raise TypeError(f"statistics must be a dict {{layer: (mean, var)}}, got {statistics!r}")
    if set(statistics) != set(layers):
        raise ValueError(
            f"statistics must name every BN layer of the model: missing "
            f"{sorted(set(layers) - set(statistics))}, unknown {sorted(set(statistics) - set(layers))}"
        )
    for name, layer in layers.items():
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"BN layer {name!r} has no running buffers (track_running_stats=False)"
            )
        for what, s in zip(("mean", "var"), statistics[name], strict=True):
            if tuple(s.shape) != (layer.num_features,):
                raise ValueError(
                    f"statistics[{name!r}] {what} must have shape ({layer.num_features},), "
                    f"got {tuple(s.shape)}"
                )
    with torch.no_grad():
        for name, layer in layers.items():
            mean, var = statistics[name]
            layer.running_mean.copy_(torch.as_tensor(mean))
            layer.running_var.copy_(torch.as_tensor(var))
