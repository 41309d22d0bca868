"""Train one network; every running estimator rides along; then score them all.

One training run is one (dataset, model, batch size, seed, ...): every estimator and every
EMA momentum rides along on it without changing training, since they only watch the
batch statistics the BN layers compute anyway. After training (weights frozen) the
network is scored by :func:`bnbench.evaluate.evaluate_network`: every running estimate,
PreciseBN, the exact ``population`` statistics, BN on test batches and the test-time
adaptation modes, on the clean test set and on the corrupted test sets the
configuration names, with accuracy, NLL, ECE and the error of the statistics.
"""

import json
import time
from contextlib import ExitStack, contextmanager
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits

from . import adaptation
from . import data as datasets
from . import estimators as est
from .evaluate import (
    evaluate_network,
    observe,
    population_statistics,
    timed,
)
from .nn import (
    SGD,
    BatchNorm,
    BatchRenorm,
    build,
    cosine_lr,
    cross_entropy,
    renorm_clip,
)
from .trainconfig import (  # noqa: F401  (part of this module's API)
    ADAPTATION,
    AGGREGATIONS,
    BATCH_ORDERS,
    BN_VARIANTS,
    DEFAULT_MOMENTA,
    ESTIMATORS,
    ORDERS,
    TrainConfig,
)


@contextmanager
def _attached(model, factories):
    """Attach several estimator families at once; yields name -> per-layer list."""
    with ExitStack() as stack:
        attached = {}
        for name, factory in factories.items():
            attached[name], detach = observe(model, factory)
            stack.callback(detach)
        yield attached


class _Timed:
    """Forwards updates to an estimator and accumulates the seconds they take."""

    def __init__(self, estimator):
        self.estimator, self.seconds = estimator, 0.0

    def update(self, *args):
        t0 = time.perf_counter()
        self.estimator.update(*args)
        self.seconds += time.perf_counter() - t0


def _running_estimators(config):
    """name -> factory(bn_layer) for the estimators that watch training."""
    m, u = config.bn_momenta, config.unbiased
    factories = {
        "ema": lambda layer: _Timed(est.EMA(layer.num_features, m, u)),
        "ema_debiased": lambda layer: _Timed(est.DebiasedEMA(layer.num_features, m, u)),
        "cumulative": lambda layer: _Timed(est.CumulativeAverage(layer.num_features, u)),
    }
    return {name: f for name, f in factories.items() if name in config.estimators}


def _batches(n, batch_size, rng=None):
    """Index arrays of ``batch_size`` (the ragged remainder is dropped), shuffled if rng."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def _non_iid_batches(labels, batch_size, classes, rng):
    """One epoch of ``len(labels) // batch_size`` batches, each drawn (without
    replacement within the batch) from the examples of ``classes`` random classes, as in
    Ioffe's (2017) non-iid experiment."""
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    if classes > len(by_class):
        raise ValueError(
            f"classes_per_batch must be at most the number of classes {len(by_class)}, "
            f"got {classes}"
        )
    out = []
    for _ in range(len(labels) // batch_size):
        pool = np.concatenate(
            [by_class[c] for c in rng.choice(len(by_class), classes, replace=False)]
        )
        out.append(rng.choice(pool, batch_size, replace=len(pool) < batch_size))
    return out


def _norm_layer(config):
    """The BN layer factory of the configuration's variant."""
    if config.bn == "renorm":
        return BatchRenorm
    return partial(BatchNorm, ghost_batch_size=config.ghost_batch_size)


def checkpoint_steps(config, total):
    """The steps (1..total-1) after which a checkpoint is scored: every ``eval_every``
    steps, or at each fraction of ``total`` in ``eval_every``; the end of training is
    scored anyway. A step count beyond the training length is an error."""
    every = config.eval_every
    if every is None:
        return []
    if isinstance(every, tuple):
        steps = {max(1, round(f * total)) for f in every}
    else:
        if every > total:
            raise ValueError(
                f"eval_every must be at most the training length ({total} steps), got {every}"
            )
        steps = set(range(every, total + 1, every))
    return sorted(s for s in steps if s < total)


@contextmanager
def _observers_paused(model):
    """Detach every BN layer's observers for the duration (a checkpoint evaluation
    forwards data in training mode and must not feed the running estimators)."""
    saved = [layer.observers for layer in model.bn_layers]
    for layer in model.bn_layers:
        layer.observers = []
    try:
        yield
    finally:
        for layer, observers in zip(model.bn_layers, saved, strict=True):
            layer.observers = observers


def train_network(config, data, progress=None, at_checkpoint=None):
    """Train the model of ``config`` on ``data``; running estimators ride along.

    ``at_checkpoint(step, model, running)`` is called after each step of
    :func:`checkpoint_steps`, with the running estimators detached, and its time is kept
    out of the training time. Returns ``(model, running, timing)``: ``running`` maps
    estimator name -> list (one per BN layer) of timed estimators.
    """
    init_rng, shuffle_rng = (np.random.default_rng([config.seed, i]) for i in range(2))
    model = build(config.model, data.num_features, data.num_classes, init_rng,
                  depth=config.depth, norm=_norm_layer(config))  # fmt: skip
    model.input_grad = False  # training never uses the gradient of the inputs
    n = data.x_train.shape[0]
    if config.batch_size > n:
        raise ValueError(
            f"batch_size must be at most the training set size {n}, got {config.batch_size}"
        )
    steps_per_epoch = n // config.batch_size
    total = config.steps or config.epochs * steps_per_epoch
    checkpoints = set(checkpoint_steps(config, total)) if at_checkpoint else set()
    freeze_at = total - round(config.frozen_fraction * total) if config.frozen_fraction else None
    frozen = None
    lr = min(config.lr * config.batch_size / 64, config.max_lr)
    opt = SGD(model, lr, config.momentum, config.weight_decay)
    with _attached(model, _running_estimators(config)) as running:
        step, losses, checkpoint_seconds = 0, [], 0.0
        t0 = time.perf_counter()
        while step < total:
            if config.batch_order == "non_iid":
                epoch = _non_iid_batches(data.y_train, config.batch_size,
                                         config.classes_per_batch, shuffle_rng)  # fmt: skip
            else:
                epoch = _batches(n, config.batch_size, shuffle_rng)
            for idx in epoch:
                if step == total:
                    break
                if step == freeze_at:  # FrozenBN: exact population statistics at the switch
                    with _observers_paused(model):
                        frozen, freeze_seconds = timed(population_statistics, model, data.x_train)
                    for layer, stats in zip(model.bn_layers, frozen, strict=True):
                        layer.freeze(stats)
                if config.bn == "renorm":
                    clip = renorm_clip(step / total)
                    for layer in model.bn_layers:
                        layer.rmax, layer.dmax = clip
                logits = model.forward(data.x_train[idx], "train")
                loss, grad = cross_entropy(logits, data.y_train[idx])
                model.backward(grad)
                opt.step(cosine_lr(lr, step, total, warmup_steps=steps_per_epoch))
                losses.append(loss)
                step += 1
                if step in checkpoints:
                    t_check = time.perf_counter()
                    with _observers_paused(model):
                        at_checkpoint(step, model, running)
                    checkpoint_seconds += time.perf_counter() - t_check
                if progress:
                    progress(step, total, loss)
        seconds = time.perf_counter() - t0 - checkpoint_seconds
    timing = {
        "train_seconds": seconds,
        "steps": total,
        "seconds_per_step": seconds / total,
        "final_train_loss": float(np.mean(losses[-steps_per_epoch:])),
        "checkpoint_seconds": checkpoint_seconds,
    }
    if frozen is not None:  # scored like an estimator: the statistics the last phase used
        for layer in model.bn_layers:
            layer.freeze(None)
        running["frozen"] = [_Timed(est.FixedStatistics(*stats)) for stats in frozen]
        running["frozen"][0].seconds = freeze_seconds  # one pass for every layer
    if config.bn == "renorm":  # Ioffe's inference: each layer's own moving mu and sigma
        running["renorm"] = [_Timed(est.FixedStatistics(*layer.statistics))
                             for layer in model.bn_layers]  # fmt: skip
    return model, running, timing


def run(config, progress=None):
    """Train one configuration and evaluate every estimator; returns a JSON-ready dict.

    ``result["evaluations"]`` has one entry per (test set, estimator or adaptation mode,
    setting) with the keys of :data:`bnbench.evaluate.EVALUATION_KEYS`: test accuracy,
    NLL and ECE, the statistics error where defined (mean over BN layers, and per
    layer) and the estimator's extra seconds; ``result["training"]`` has the training
    time.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig(**config)
    # The matmuls here are tiny: BLAS threads only spin and starve the parallel BN
    # kernels (a CNN step took 6 ms with OpenBLAS on 2 threads, 1.5 ms on 1).
    with threadpool_limits(1, user_api="blas"):
        return _run(config, progress)


def _check_sizes(config, data):
    """Test batch sizes, adaptation sample counts, the checkpoint interval, the FrozenBN
    phase and the classes per non-iid batch fit the data (checked before training)."""
    steps = config.steps or config.epochs * (data.x_train.shape[0] // config.batch_size)
    if steps >= 1:
        checkpoint_steps(config, steps)
    frozen = round(config.frozen_fraction * steps)
    if config.frozen_fraction and not 1 <= frozen < steps:
        raise ValueError(
            f"frozen_fraction {config.frozen_fraction} of {steps} training steps freezes "
            f"{frozen}: it must freeze at least one step and leave at least one unfrozen"
        )
    classes = data.num_classes
    if config.batch_order == "non_iid" and config.classes_per_batch > classes:
        raise ValueError(
            f"classes_per_batch must be at most the number of classes {classes}, "
            f"got {config.classes_per_batch}"
        )
    n = data.x_test.shape[0]
    if config.streams and config.stream_examples > n:
        raise ValueError(
            f"stream_examples must be at most the test set size {n}, got {config.stream_examples}"
        )
    for name in ("test_batch_sizes", "adapt_samples"):
        too_big = [v for v in getattr(config, name) if v > n]
        if too_big:
            raise ValueError(f"{name} must be at most the test set size {n}, got {too_big}")


def _run(config, progress):
    data = datasets.load(config.dataset, config.num_samples)
    _check_sizes(config, data)
    evaluations = []

    def at_checkpoint(step, model, running):
        for e in evaluate_network(model, data, config, running):
            evaluations.append({**e, "step": step})

    model, running, timing = train_network(config, data, progress, at_checkpoint)
    for e in evaluate_network(model, data, config, running):
        evaluations.append({**e, "step": timing["steps"]})
    if config.streams:
        from .stream_eval import stream_evaluations

        source = population_statistics(model, data.x_train)
        for e in stream_evaluations(model, config, source):
            evaluations.append({**e, "step": timing["steps"]})
    return {
        "config": config.to_dict(),
        "dataset": {"train": int(data.x_train.shape[0]), "test": int(data.x_test.shape[0])},
        "training": timing,
        "evaluations": evaluations,
    }


def costs(result):
    """Extra seconds per estimator at the end of training, on the clean test set, of one
    run's result: a
    computation shared by several evaluations (the running estimators' updates by every
    momentum, a PreciseBN pass by both aggregations) counts once; evaluation passes of
    the modes that normalise test batches add up."""
    out, seen = {}, set()
    final = result["training"]["steps"]
    for e in result["evaluations"]:
        if (e.get("corruption", "none"), e.get("split", "test"), e.get("step", final)) != (
            "none", "test", final,
        ):  # fmt: skip
            continue
        name = e["estimator"]
        shared = (name, e["precise_samples"], e["precise_batch_size"], e.get("adapt_samples"))
        if name not in adaptation.BATCH_MODES:
            if shared in seen:
                continue
            seen.add(shared)
        out[name] = out.get(name, 0.0) + (e["estimator_seconds"] or 0.0)
    return out


def resolve_params(params):
    """Every TrainConfig field of a job, defaults filled in (the sweep's cache key)."""
    return TrainConfig(**params).to_dict()


def run_job(params):
    """Sweep entry point (kind ``"train"``): ``params`` are TrainConfig fields."""
    return run(TrainConfig(**params))


def result_rows(result):
    """Tidy rows of one run: its scalar configuration, training timings and the sizes
    of its training and test sets (``train_size``, ``test_size``), repeated on each
    evaluation (per-layer errors as JSON lists)."""
    config = {k: v for k, v in result["config"].items() if not isinstance(v, (list, tuple))}
    sizes = {f"{split}_size": n for split, n in result["dataset"].items()}
    base = {**config, **result["training"], **sizes}
    rows = []
    for e in result["evaluations"]:
        row = {**base, **e}
        for key in ("layer_mean_error", "layer_var_error"):
            row[key] = None if e[key] is None else json.dumps(e[key])
        rows.append(row)
    return rows
