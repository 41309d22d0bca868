"""Weight surgery on a trained network, and which BN statistics to use after it.

Surgeries (arrays in, new arrays out; :mod:`bnbench.torch.surgery` uses the same ones):
``average`` (:func:`average_weights`: the uniform mean of every parameter, BN affine
included, of the last K checkpoints, one every ``average_every`` steps, default each of
the last K epoch ends; our cosine-to-zero schedule makes this checkpoint averaging of a
cosine tail, as timm's ``avg_checkpoints.py``, not SWA's constant or cyclic rate);
``prune`` (:func:`prune_weights`: unstructured magnitude pruning of every Linear/Conv
weight, global as ``torch.nn.utils.prune.global_unstructured`` with L1, or per layer);
``quantize`` (:func:`quantize_weights`: per-output-channel symmetric uniform weights,
fake-quantized back to float; activations stay float).

Statistics scored on the post-surgery network (:data:`STATISTICS`): ``stale`` (the
training EMA at momentum 0.1; after ``average``, the last checkpoint's), ``update_bn``
(:func:`update_bn_statistics`), ``precise`` (PreciseBN, fvcore's total variance, at each
sample count), ``population`` (exact: the reference) and ``forget``
(:func:`forget_statistics`, nncf's BN adaptation). Job kind ``"surgery"``: :func:`run_job`
trains once with :func:`bnbench.train.train_network` (checkpoints by its
``at_checkpoint`` callback: training unchanged), then applies each surgery in turn to
the trained weights (restored after each) and scores every statistic.
"""

import contextlib
import dataclasses

import numpy as np
from threadpoolctl import threadpool_limits

from . import data as datasets
from .evaluate import (
    observe,
    population_statistics,
    precise_statistics,
    predict,
    scored,
    statistics_error,
    timed,
)
from .nn import Conv1d, Conv2d, Linear
from .trainconfig import TrainConfig

SURGERIES = ("average", "prune", "quantize")
PRUNE_SCOPES = ("global", "layer")
BITS = tuple(range(2, 9))
STATISTICS = ("stale", "update_bn", "precise", "population", "forget")
#: nncf#46's BN adaptation: 5 batches at momentum 0.9 ("forget"), then 10 at 0.1
FORGET_SCHEDULE = ((5, 0.9), (10, 0.1))
#: the TrainConfig fields a surgery job takes (the others: EMA at 0.1 only, no evaluation)
TRAIN_FIELDS = ("dataset", "model", "batch_size", "epochs", "steps", "lr", "max_lr", "momentum",
                "weight_decay", "seed", "num_samples", "depth", "unbiased")  # fmt: skip
DEFAULTS = {
    "surgeries": list(SURGERIES), "average_last": [5], "average_every": None,
    "sparsities": [0.5, 0.7, 0.9], "prune_scope": "global", "bits": [8, 4],
    "precise_samples": [64, 256, 1024, 4000], "forget_schedule": [list(s) for s in FORGET_SCHEDULE],
}  # fmt: skip


def is_int(v):
    """Whether ``v`` is a Python or NumPy integer (bools are not)."""
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def check_sparsity(sparsity):
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float, np.number))
        or not (0 < sparsity < 1)
    ):
        raise ValueError(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    return float(sparsity)


def check_bits(bits):
    if not is_int(bits) or bits not in BITS:
        raise ValueError(f"bits must be an integer in {BITS[0]}-{BITS[-1]}, got {bits!r}")
    return int(bits)


def average_weights(weight_sets):
    """The uniform mean of ``weight_sets`` (K lists of arrays, one list per checkpoint,
    arrays in the same order), computed in float64, in each array's dtype."""
    if not weight_sets:
        raise ValueError("weight_sets must hold at least one checkpoint")
    return [np.mean(np.stack(ws).astype(np.float64), axis=0).astype(ws[0].dtype)
            for ws in zip(*weight_sets, strict=True)]  # fmt: skip


def prune_weights(weights, sparsity, scope="global"):
    """Copies of ``weights`` (arrays) with ``round(sparsity * n)`` of smallest magnitude
    set to zero, ``n`` counted over every array (``"global"``) or per array (``"layer"``);
    ties are broken by position (a stable sort), so exactly that many are zeroed."""
    sparsity = check_sparsity(sparsity)
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"prune_scope must be one of {PRUNE_SCOPES}, got {scope!r}")
    groups = (
        [list(range(len(weights)))] if scope == "global" else [[i] for i in range(len(weights))]
    )
    out = list(weights)
    for group in groups:
        flat = np.concatenate([np.abs(weights[i]).ravel() for i in group])
        keep = np.ones(flat.size, bool)
        keep[np.argsort(flat, kind="stable")[: int(round(sparsity * flat.size))]] = False
        start = 0
        for i in group:
            w = weights[i]
            out[i] = np.where(keep[start : start + w.size].reshape(w.shape), w, 0).astype(w.dtype)
            start += w.size
    return out


def quantize_weights(w, bits):
    """``(fake-quantized copy of w, per-channel scale)``: axis 0 is the output channel;
    ``q = clip(rint(w / s), -L, L)`` with ``L = 2^(bits-1) - 1`` and ``s = max|w_c| / L``
    (narrow range, nncf's weight default; ``rint`` rounds half to even; an all-zero
    channel stays zero), returned as ``q * s`` in ``w``'s dtype."""
    levels = 2 ** (check_bits(bits) - 1) - 1
    rows = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    scale = np.abs(rows).max(axis=1) / levels
    q = np.clip(np.rint(rows / np.where(scale > 0, scale, 1.0)[:, None]), -levels, levels)
    return (q * scale[:, None]).reshape(w.shape).astype(w.dtype), scale


def weight_parameters(model):
    """``(layer, "weight")`` of every Linear/Conv1d/Conv2d layer of a bnbench network."""
    return [(layer, name) for layer, name in model.parameters()
            if name == "weight" and isinstance(layer, (Linear, Conv1d, Conv2d))]  # fmt: skip


def values(pairs):
    return [layer.params[name].copy() for layer, name in pairs]


def _assign(pairs, arrays):
    for (layer, name), a in zip(pairs, arrays, strict=True):
        layer.params[name][...] = a  # in place: the parameters may be views of one buffer


def apply(model, surgery, level, checkpoints=(), scope="global"):
    """Apply ``surgery`` at ``level`` (K checkpoints, a sparsity, bits) to ``model`` in
    place; ``checkpoints``: every parameter's values (:func:`values` of
    ``model.parameters()``) at each checkpoint, oldest first, the last one the model's."""
    if surgery == "average":
        if len(checkpoints) < level:
            raise ValueError(
                f"average_last {level} needs {level} checkpoints, got {len(checkpoints)}"
            )
        _assign(model.parameters(), average_weights(list(checkpoints)[-level:]))
    elif surgery == "prune":
        pairs = weight_parameters(model)
        _assign(pairs, prune_weights(values(pairs), level, scope))
    elif surgery == "quantize":
        pairs = weight_parameters(model)
        _assign(pairs, [quantize_weights(w, level)[0] for w in values(pairs)])
    elif surgery != "none":
        raise ValueError(f"surgery must be one of {('none', *SURGERIES)}, got {surgery!r}")


@contextlib.contextmanager
def applied(model, surgery, level, checkpoints=(), scope="global"):
    """:func:`apply` for the duration; every parameter restored afterwards."""
    saved = values(model.parameters())
    try:
        apply(model, surgery, level, checkpoints, scope)
        yield model
    finally:
        _assign(model.parameters(), saved)


def update_bn_statistics(model, x, batch_size, rng, unbiased=True):
    """What ``torch.optim.swa_utils.update_bn`` computes: one pass over ``x`` (shuffled by
    ``rng``, whole batches of ``batch_size``: a ragged last batch is left out) in
    training mode, each layer's plain mean of the batch means and of the Bessel-corrected
    batch variances (PyTorch's cumulative average, ``momentum=None``; equal batches make
    :class:`~bnbench.estimators.BatchAggregate`'s weighted mean that plain mean).
    Returns ``(per-layer (mean, var), samples used)``."""
    aggs, used = precise_statistics(model, x, x.shape[0], batch_size, rng, unbiased)
    return [(a.mean, a.mean_batch_var) for a in aggs], used


class ScheduledEMA:
    """An EMA started at ``(mean, var)`` whose momentum (PyTorch convention) for update
    ``t`` is ``momenta[t]``; fed the unbiased batch variance unless ``unbiased=False``."""

    def __init__(self, mean, var, momenta, unbiased=True):
        self.mean, self.var = np.array(mean, np.float64), np.array(var, np.float64)
        self.momenta, self.unbiased, self.steps = list(momenta), unbiased, 0

    def update(self, batch_mean, batch_var, count):
        m = self.momenta[self.steps]
        v = np.asarray(batch_var, np.float64) * (count / (count - 1) if self.unbiased else 1.0)
        self.mean = (1 - m) * self.mean + m * np.asarray(batch_mean, np.float64)
        self.var = (1 - m) * self.var + m * v
        self.steps += 1


def check_schedule(schedule):
    if not isinstance(schedule, (list, tuple)) or not schedule or any(
        not isinstance(s, (list, tuple)) or len(s) != 2 or not is_int(s[0]) or s[0] < 1
        or isinstance(s[1], bool) or not isinstance(s[1], (int, float)) or not 0 < s[1] <= 1
        for s in schedule
    ):  # fmt: skip
        raise ValueError("forget_schedule must be a non-empty list of [batches >= 1, momentum in "
                         f"(0, 1]] pairs, got {schedule!r}")  # fmt: skip
    return [(int(k), float(m)) for k, m in schedule]


def forget_statistics(model, x, start, batch_size, rng, schedule=FORGET_SCHEDULE, unbiased=True):
    """nncf's BN adaptation: from ``start`` (per layer ``(mean, var)``, the stale
    buffers), for each ``(batches, momentum)`` of ``schedule`` that many batches of
    ``batch_size`` distinct training samples (shuffled by ``rng``) forwarded through the
    frozen network in training mode, each layer's running statistics updated with that
    momentum. Returns ``(per-layer (mean, var), samples used)``."""
    momenta = [m for k, m in check_schedule(schedule) for _ in range(k)]
    used = len(momenta) * batch_size
    if used > x.shape[0]:
        raise ValueError(
            f"forget_schedule needs {used} samples, the training set has {x.shape[0]}"
        )
    emas = iter([ScheduledEMA(m, v, momenta, unbiased) for m, v in start])
    attached, detach = observe(model, lambda layer: next(emas))
    idx = rng.permutation(x.shape[0])[:used]
    try:
        for s in range(0, used, batch_size):
            model.forward(x[idx[s : s + batch_size]], "stats")
    finally:
        detach()
    return [(e.mean, e.var) for e in attached], used


def _listed(p, name, ok, what):
    v = p[name]
    if not isinstance(v, (list, tuple)) or not v or not all(ok(x) for x in v):
        raise ValueError(f"{name} must be a non-empty list of {what}, got {v!r}")
    return v


def check_grid(p):
    """The surgery fields of job parameters ``p`` (see :data:`DEFAULTS`), or a ValueError
    naming the parameter; ``p["batch_size"]`` bounds the PreciseBN sample counts."""
    names = _listed(p, "surgeries", lambda v: v in SURGERIES, f"distinct names in {SURGERIES}")
    if len(set(names)) != len(names):
        raise ValueError(f"surgeries must be distinct names in {SURGERIES}, got {names!r}")
    _listed(p, "average_last", lambda k: is_int(k) and k >= 2, "integers >= 2 (checkpoints)")
    every = p.get("average_every")
    if every is not None and (not is_int(every) or every < 1):
        raise ValueError(f"average_every must be None or an integer >= 1, got {every!r}")
    for v in _listed(p, "sparsities", lambda v: True, "sparsities"):
        check_sparsity(v)
    if p["prune_scope"] not in PRUNE_SCOPES:
        raise ValueError(f"prune_scope must be one of {PRUNE_SCOPES}, got {p['prune_scope']!r}")
    for b in _listed(p, "bits", lambda v: True, "bits"):
        check_bits(b)
    bs = p["batch_size"]
    _listed(p, "precise_samples", lambda k: is_int(k) and (k == 0 or k >= bs),
            f"integers >= batch_size ({bs}) or 0 (all)")  # fmt: skip
    check_schedule(p["forget_schedule"])


def levels(p):
    """``[(surgery, level), ...]`` of the grid: ``("none", None)`` first."""
    grid = {"average": p["average_last"], "prune": p["sparsities"], "quantize": p["bits"]}
    return [("none", None)] + [(s, v) for s in SURGERIES if s in p["surgeries"] for v in grid[s]]


def label(surgery, level):
    """``"none"``, ``"average 5"``, ``"prune 0.9"``, ``"quantize 4-bit"``."""
    if surgery == "none":
        return "none"
    return {"average": f"average {level}", "prune": f"prune {level:g}",
            "quantize": f"quantize {level}-bit"}[surgery]  # fmt: skip


def _config(p, **extra):
    fields = {k: p[k] for k in TRAIN_FIELDS if k in p}
    return TrainConfig(**fields, bn_momenta=(0.1,), estimators=("ema",), **extra)


def resolve_params(params):
    """Every parameter of a surgery job, defaults filled in (the cache key); unknown or
    invalid parameters are a ValueError naming them."""
    unknown = set(params) - set(TRAIN_FIELDS) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown surgery job parameter(s) {sorted(unknown)}; known: "
                         f"{sorted([*TRAIN_FIELDS, *DEFAULTS])}")  # fmt: skip
    config = _config(params).to_dict()
    p = {**{k: config[k] for k in TRAIN_FIELDS}, **DEFAULTS, **{k: v for k, v in params.items()
                                                               if k in DEFAULTS}}  # fmt: skip
    check_grid(p)
    return p


def _checkpoint_steps(p, n):
    """``(total steps, checkpoint steps before the end)`` for the averages, checked."""
    total = p["steps"] or p["epochs"] * (n // p["batch_size"])
    every = p["average_every"] or n // p["batch_size"]
    ks = p["average_last"] if "average" in p["surgeries"] else []
    steps = sorted({total - j * every for k in ks for j in range(1, k)})
    if steps and steps[0] < 1:
        raise ValueError(f"average_last {max(ks)} checkpoints every {every} steps need more than "
                         f"{(max(ks) - 1) * every} training steps, got {total}")  # fmt: skip
    return total, steps


def _weight_change(model, trained):
    now = values(weight_parameters(model))
    num = sum(
        float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(now, trained, strict=True)
    )
    return float(np.sqrt(num / sum(float(np.sum(b.astype(np.float64) ** 2)) for b in trained)))


def evaluate_statistics(model, data, stale, p):
    """Score every statistic on the (post-surgery) ``model``: entries with ``statistic``,
    ``samples`` (training samples forwarded), ``precise_samples`` (asked), seconds, test
    accuracy/NLL/ECE and the statistics error against ``population``."""
    x, bs, u, seed = data.x_train, p["batch_size"], p["unbiased"], p["seed"]
    eps = model.bn_layers[0].eps
    population, pop_seconds = timed(population_statistics, model, x)
    out = []

    def add(statistic, stats, samples, seconds, **extra):
        errs = np.array(statistics_error(stats, population, eps))
        out.append({"statistic": statistic, "samples": int(samples), "precise_samples": None,
                    **extra, "statistic_seconds": seconds,
                    **scored(predict(model, data.x_test, stats), data.y_test),
                    "mean_error": float(errs[:, 0].mean()), "var_error": float(errs[:, 1].mean())})  # fmt: skip

    add("stale", stale, 0, 0.0)
    (ub, used), s = timed(update_bn_statistics, model, x, bs, np.random.default_rng([seed, 5]), u)
    add("update_bn", ub, used, s)
    for k in p["precise_samples"]:
        (aggs, used), s = timed(precise_statistics, model, x, min(k or x.shape[0], x.shape[0]), bs,
                                np.random.default_rng([seed, 2]), u)  # fmt: skip
        add("precise", [(a.mean, a.var) for a in aggs], used, s, precise_samples=k)
    add("population", population, x.shape[0], pop_seconds)
    (fg, used), s = timed(forget_statistics, model, x, stale, bs, np.random.default_rng([seed, 6]),
                          p["forget_schedule"], u)  # fmt: skip
    add("forget", fg, used, s)
    return out


def run_job(params):
    """Sweep entry point (kind ``"surgery"``)."""
    p = resolve_params(params)
    with threadpool_limits(1, user_api="blas"):
        return _run(p)


def _run(p):
    from .train import train_network

    config = _config(p)
    data = datasets.load(config.dataset, config.num_samples)
    total, steps = _checkpoint_steps(p, data.x_train.shape[0])
    if steps:  # checkpoints through train_network's own callback: training is unchanged
        config = dataclasses.replace(config, eval_every=tuple(s / total for s in steps))
    forget = sum(k for k, _ in p["forget_schedule"]) * p["batch_size"]
    if forget > data.x_train.shape[0]:
        raise ValueError(f"forget_schedule needs {forget} samples, the training set has "
                         f"{data.x_train.shape[0]}")  # fmt: skip
    saved = {}
    model, running, timing = train_network(
        config, data, at_checkpoint=lambda step, m, r: saved.update({step: values(m.parameters())})
    )
    if set(steps) - set(saved):
        raise RuntimeError(f"checkpoints {sorted(set(steps) - set(saved))} were not taken")
    checkpoints = [saved[s] for s in steps] + [values(model.parameters())]
    stale = [(t.estimator.mean[0], t.estimator.var[0]) for t in running["ema"]]
    trained = values(weight_parameters(model))
    evaluations = []
    for surgery, level in levels(p):
        with applied(model, surgery, level, checkpoints, p["prune_scope"]):
            change = _weight_change(model, trained)
            for e in evaluate_statistics(model, data, stale, p):
                evaluations.append({"surgery": surgery, "level": level, "surgery_label":
                                    label(surgery, level), "weight_change": change, **e})  # fmt: skip
    return {"config": p, "framework": "bnbench", "training": timing,
            "dataset": {"train": int(data.x_train.shape[0]), "test": int(data.x_test.shape[0])},
            "evaluations": evaluations}  # fmt: skip


def result_rows(result):
    """One row per (surgery, statistic): the scalar configuration, training timings, set
    sizes and the evaluation."""
    base = {k: v for k, v in result["config"].items() if not isinstance(v, (list, tuple))}
    base |= {"framework": result["framework"], **result["training"]}
    base |= {f"{split}_size": n for split, n in result["dataset"].items()}
    return [{**base, **e} for e in result["evaluations"]]
