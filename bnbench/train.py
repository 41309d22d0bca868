"""Train one network; every running estimator rides along; then score them all.

One training run is one (dataset, model, batch size, seed, ...): every estimator and every
EMA momentum rides along on it without changing training, since they only watch the
batch statistics the BN layers compute anyway. After training (weights frozen) the
network is scored by :func:`bnbench.evaluate.evaluate_network`: every running estimate,
PreciseBN, the exact ``population`` statistics, BN on test batches and the test-time
adaptation modes, on the clean test set and on the corrupted test sets the
configuration names, with accuracy, NLL, ECE and the error of the statistics.
"""

import dataclasses
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
    AGGREGATIONS,
    ORDERS,
    evaluate_network,
    observe,
    population_statistics,
    timed,
)
from .nn import (
    MODELS,
    SGD,
    BatchNorm,
    BatchRenorm,
    build,
    check_depth,
    cosine_lr,
    cross_entropy,
    renorm_clip,
)

DEFAULT_MOMENTA = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 0.9)
#: test-time adaptation modes, scored when named in ``estimators``
ADAPTATION = ("adabn", "prior", "online_ema")
#: every name ``TrainConfig.estimators`` accepts
ESTIMATORS = est.NAMES + ADAPTATION
BN_VARIANTS = ("bn", "renorm")
BATCH_ORDERS = ("iid", "non_iid")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run and its evaluation.

    ``lr`` is the learning rate at batch size 64, scaled linearly with ``batch_size``
    (Goyal et al. 2017) up to ``max_lr``; SGD with Nesterov-free momentum ``momentum``,
    ``weight_decay`` on weights, 1 warm-up epoch then cosine decay. ``steps``, if set,
    replaces ``epochs``. ``bn_momenta`` are the EMA momenta tracked at once.
    PreciseBN runs once per (``precise_samples``, ``precise_batch_sizes``) pair, empty
    meaning the whole training set and the training batch size, and is reported with each
    of ``precise_aggregations``: ``"total_variance"`` (mean of batch variances plus
    variance of batch means; current fvcore) and/or ``"mean_of_batch_variances"`` (old
    fvcore, ``torch.optim.swa_utils.update_bn``).

    ``estimators`` may add the adaptation modes (:data:`ADAPTATION`): ``adabn`` (on the
    whole test set and on each of ``adapt_samples`` samples), ``prior`` (each of
    ``prior_strengths``) and ``online_ema`` (each of ``online_momenta``); the modes that
    normalise test batches use ``test_batch_sizes`` x ``test_orders``. ``corruptions``
    (MNIST-1D-C names, :mod:`bnbench.shift`) at ``severities`` add shifted test sets;
    the clean test set is always scored.

    BN variants (Wu & Johnson 2021, section 4; Ioffe 2017): ``bn`` is ``"bn"`` or
    ``"renorm"`` (Batch Renorm, its ``rmax``/``dmax`` warm-up from
    :func:`bnbench.nn.renorm_clip`); ``ghost_batch_size`` normalises groups of that many
    samples (the normalization batch size; plain BN only); ``frozen_fraction`` trains the
    last fraction of the steps with fixed population statistics computed exactly at the
    switch (FrozenBN; scored as estimator ``frozen``); ``batch_order="non_iid"`` draws
    each training batch from ``classes_per_batch`` random classes only.
    ``score_train_set`` also scores every estimator and mode on the training set itself
    (split ``"train"``: e.g. the training error with batch statistics).

    ``depth``: the number of BN layers of the ``resnet`` model (default 8). ``eval_every``:
    score every estimator during training too, every so many steps or at fractions of
    training (e.g. ``(0.05, 0.1, ..., 0.95)``); each evaluation carries its ``step``.
    """

    dataset: str = "mnist1d"
    model: str = "cnn"
    batch_size: int = 64
    epochs: int = 40
    steps: int | None = None
    lr: float = 0.05
    max_lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    num_samples: int | None = None
    bn_momenta: tuple = DEFAULT_MOMENTA
    estimators: tuple = est.NAMES
    unbiased: bool = True
    precise_samples: tuple = ()
    precise_batch_sizes: tuple = ()
    precise_aggregations: tuple = ("total_variance",)
    test_batch_sizes: tuple = (2, 8, 32, 128, 1000)
    test_orders: tuple = ORDERS
    corruptions: tuple = ()
    severities: tuple = (1, 2, 3, 4, 5)
    adapt_samples: tuple = ()
    prior_strengths: tuple = (1, 4, 16, 64, 256)
    online_momenta: tuple = (0.1,)
    depth: int | None = None
    eval_every: int | tuple | None = None
    bn: str = "bn"
    ghost_batch_size: int | None = None
    frozen_fraction: float = 0.0
    batch_order: str = "iid"
    classes_per_batch: int = 2
    score_train_set: bool = False

    def __post_init__(self):
        # tuples, so that configurations hash and serialise the same way
        for name in (
            "bn_momenta",
            "estimators",
            "test_batch_sizes",
            "test_orders",
            "precise_samples",
            "precise_batch_sizes",
            "precise_aggregations",
            "corruptions",
            "severities",
            "adapt_samples",
            "prior_strengths",
            "online_momenta",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.eval_every, (list, tuple)):
            object.__setattr__(self, "eval_every", tuple(self.eval_every))
        self.validate()

    def validate(self):
        def positive_int(name, minimum=1, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        if self.dataset not in datasets.DATASETS:
            raise ValueError(
                f"dataset must be one of {sorted(datasets.DATASETS)}, got {self.dataset!r}"
            )
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        positive_int("batch_size", 2)
        positive_int("epochs")
        positive_int("steps", optional=True)
        positive_int("seed", 0)
        positive_int("num_samples", 10, optional=True)
        if self.depth is not None:
            if self.model != "resnet":
                raise ValueError(f"depth applies to model 'resnet' only, got model {self.model!r}")
            check_depth(self.depth)
        if self.bn not in BN_VARIANTS:
            raise ValueError(f"bn must be one of {BN_VARIANTS}, got {self.bn!r}")
        if self.ghost_batch_size is not None:
            positive_int("ghost_batch_size", 2)
            if self.bn != "bn":
                raise ValueError(f"ghost_batch_size applies to bn='bn' only, got bn={self.bn!r}")
            if self.batch_size % self.ghost_batch_size:
                raise ValueError(
                    f"ghost_batch_size must divide batch_size {self.batch_size}, "
                    f"got {self.ghost_batch_size}"
                )
        if isinstance(self.frozen_fraction, bool) or not 0 <= self.frozen_fraction < 1:
            raise ValueError(f"frozen_fraction must be in [0, 1), got {self.frozen_fraction!r}")
        if self.batch_order not in BATCH_ORDERS:
            raise ValueError(
                f"batch_order must be one of {BATCH_ORDERS}, got {self.batch_order!r}"
            )
        positive_int("classes_per_batch", 1)
        if self.batch_order == "non_iid" and self.batch_size < self.classes_per_batch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least classes_per_batch "
                f"({self.classes_per_batch}) for non_iid batches"
            )
        if isinstance(self.eval_every, tuple):
            if not self.eval_every or any(
                isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1
                for f in self.eval_every
            ):
                raise ValueError(
                    "eval_every must be a step count >= 1 or fractions of training in (0, 1], "
                    f"got {self.eval_every!r}"
                )
        elif self.eval_every is not None:
            positive_int("eval_every")
        for name in ("lr", "max_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum (SGD) must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        est.check_momenta(self.bn_momenta)
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators:
            raise ValueError(
                f"estimators must be a non-empty subset of {ESTIMATORS}, got {self.estimators!r}"
            )
        for name, minimum in (
            ("test_batch_sizes", 1),
            ("precise_samples", 1),
            ("precise_batch_sizes", 2),
            ("adapt_samples", 2),
        ):
            values = getattr(self, name)
            if any(isinstance(v, bool) or int(v) != v or v < minimum for v in values):
                raise ValueError(f"{name} must be integers >= {minimum}, got {values!r}")
        if not self.precise_aggregations or not set(self.precise_aggregations) <= set(
            AGGREGATIONS
        ):
            raise ValueError(
                f"precise_aggregations must be a non-empty subset of {AGGREGATIONS}, "
                f"got {self.precise_aggregations!r}"
            )
        if not set(self.test_orders) <= set(ORDERS):
            raise ValueError(f"test_orders must be a subset of {ORDERS}, got {self.test_orders!r}")
        for strength in self.prior_strengths:
            adaptation.check_strength(strength)
        est.check_momenta(self.online_momenta)
        if self.corruptions:
            from . import shift

            if self.dataset != "mnist1d":
                raise ValueError(
                    f"corruptions are MNIST-1D-C test sets: dataset must be 'mnist1d', "
                    f"got {self.dataset!r}"
                )
            unknown = [c for c in self.corruptions if c not in shift.CORRUPTIONS]
            if unknown:
                raise ValueError(
                    f"corruptions must be names in {sorted(shift.CORRUPTIONS)}, got {unknown!r}"
                )
            if not self.severities or any(
                isinstance(v, bool) or v not in shift.SEVERITIES for v in self.severities
            ):
                raise ValueError(f"severities must be integers in 0-5, got {self.severities!r}")

    def to_dict(self):
        return dataclasses.asdict(self)


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


class _Fixed:
    """Statistics fixed during training (FrozenBN's), read like an estimator's."""

    def __init__(self, mean, var):
        self._mean, self._var = mean, var

    @property
    def mean(self):
        return self._mean.copy()

    @property
    def var(self):
        return self._var.copy()


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
        running["frozen"] = [_Timed(_Fixed(*stats)) for stats in frozen]
        running["frozen"][0].seconds = freeze_seconds  # one pass for every layer
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
    """Test batch sizes, adaptation sample counts and the checkpoint interval fit the
    data (checked before training)."""
    steps = config.steps or config.epochs * (data.x_train.shape[0] // config.batch_size)
    if steps >= 1:
        checkpoint_steps(config, steps)
    n = data.x_test.shape[0]
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
