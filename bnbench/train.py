"""Train one network and evaluate every test-time statistics estimator on it.

One training run is one (dataset, model, batch size, seed, ...): every estimator and every
EMA momentum rides along on it without changing training, since they only watch the
batch statistics the BN layers compute anyway. After training (weights frozen):

* ``population``: exact statistics of the final network over the whole training set,
  every upstream BN already in inference mode with its own population statistics. A
  training-mode forward pass of the whole training set as *one* batch computes exactly
  that, layer by layer.
* ``precise``: PreciseBN, K training samples forwarded in training mode in batches,
  per-batch statistics aggregated (:class:`~bnbench.estimators.BatchAggregate`).
* ``test_batch``: BN left in training mode on test batches of each size, iid or sorted
  by class.

Each estimator's statistics are scored by test accuracy and loss, and by their error
against ``population`` per BN layer: ``mean_error`` = RMS over channels of
``(mean - mean_pop) / sqrt(var_pop + eps)`` (in population standard deviations) and
``var_error`` = RMS over channels of ``log((var + eps) / (var_pop + eps))``.
"""

import dataclasses
import json
import time
from contextlib import ExitStack, contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

from . import data as datasets
from . import estimators as est
from .nn import MODELS, SGD, build, cosine_lr, cross_entropy

DEFAULT_MOMENTA = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 0.9)
ORDERS = ("iid", "sorted")
AGGREGATIONS = ("total_variance", "mean_of_batch_variances")


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
    variance of batch means) and/or ``"mean_of_batch_variances"`` (fvcore's).
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
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
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
        for name in ("lr", "max_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum (SGD) must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        est.check_momenta(self.bn_momenta)
        unknown = [e for e in self.estimators if e not in est.NAMES]
        if unknown or not self.estimators:
            raise ValueError(
                f"estimators must be a non-empty subset of {est.NAMES}, got {self.estimators!r}"
            )
        for name, minimum in (
            ("test_batch_sizes", 1),
            ("precise_samples", 1),
            ("precise_batch_sizes", 2),
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

    def to_dict(self):
        return dataclasses.asdict(self)


@contextmanager
def _observers(model, make):
    """Attach ``make(bn_layer)`` to every BN layer for the duration; yields them."""
    attached = [make(layer) for layer in model.bn_layers]
    for layer, obs in zip(model.bn_layers, attached, strict=True):
        layer.observers.append(obs)
    try:
        yield attached
    finally:
        for layer, obs in zip(model.bn_layers, attached, strict=True):
            layer.observers.remove(obs)


@contextmanager
def _attached(model, factories):
    """Attach several estimator families at once; yields name -> per-layer list."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(_observers(model, f)) for name, f in factories.items()}


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


def train_network(config, data, progress=None):
    """Train the model of ``config`` on ``data``; running estimators ride along.

    Returns ``(model, running, timing)``: ``running`` maps estimator name -> list (one per
    BN layer) of timed estimators.
    """
    init_rng, shuffle_rng = (np.random.default_rng([config.seed, i]) for i in range(2))
    model = build(config.model, data.num_features, data.num_classes, init_rng)
    n = data.x_train.shape[0]
    if config.batch_size > n:
        raise ValueError(
            f"batch_size must be at most the training set size {n}, got {config.batch_size}"
        )
    steps_per_epoch = n // config.batch_size
    total = config.steps or config.epochs * steps_per_epoch
    lr = min(config.lr * config.batch_size / 64, config.max_lr)
    opt = SGD(model, lr, config.momentum, config.weight_decay)
    with _attached(model, _running_estimators(config)) as running:
        step, losses = 0, []
        t0 = time.perf_counter()
        while step < total:
            for idx in _batches(n, config.batch_size, shuffle_rng):
                if step == total:
                    break
                logits = model.forward(data.x_train[idx], "train")
                loss, grad = cross_entropy(logits, data.y_train[idx])
                model.backward(grad)
                opt.step(cosine_lr(lr, step, total, warmup_steps=steps_per_epoch))
                losses.append(loss)
                step += 1
                if progress:
                    progress(step, total, loss)
        seconds = time.perf_counter() - t0
    timing = {
        "train_seconds": seconds,
        "steps": total,
        "seconds_per_step": seconds / total,
        "final_train_loss": float(np.mean(losses[-steps_per_epoch:])),
    }
    return model, running, timing


def population_statistics(model, x_train):
    """Exact per-layer population statistics ``[(mean, var_biased), ...]`` of ``model``
    over ``x_train``: one training-mode pass with the whole set as a single batch."""
    model.forward(x_train, "train")
    return [(layer.last_batch[0].astype(np.float64), layer.last_batch[1].astype(np.float64))
            for layer in model.bn_layers]  # fmt: skip


def precise_statistics(model, x_train, samples, batch_size, rng, unbiased=True):
    """PreciseBN: forward ``samples`` training inputs in training mode in batches of
    ``batch_size`` (frozen weights) and aggregate each BN layer's batch statistics.

    Returns per-layer :class:`~bnbench.estimators.BatchAggregate` objects: ``mean`` and
    ``var`` are the total-variance estimate, ``mean_batch_var`` fvcore's.
    """
    n = x_train.shape[0]
    samples = min(samples or n, n)
    if samples < batch_size:
        raise ValueError(
            f"precise_samples ({samples}) must be at least the recompute batch size ({batch_size})"
        )
    idx = rng.permutation(n)[:samples]
    with _observers(model, lambda layer: est.BatchAggregate(layer.num_features, unbiased)) as aggs:
        for b in _batches(samples, batch_size):
            model.forward(x_train[idx[b]], "train")
    return aggs


def evaluate(model, x, y, stats):
    """Test accuracy and loss with each BN layer in inference mode using ``stats``."""
    for layer, s in zip(model.bn_layers, stats, strict=True):
        layer.eval_stats = s
    logits = model.forward(x, "eval")
    loss, _ = cross_entropy(logits, y)
    return float((logits.argmax(axis=1) == y).mean()), loss


def evaluate_test_batches(model, x, y, batch_size, order, rng):
    """BN in training mode on test batches: accuracy and loss over the whole test set.

    ``order="iid"`` shuffles the test set; ``"sorted"`` sorts it by class, so each batch
    holds one or two classes and a prediction depends on the batch's other examples.
    Batches are ``array_split`` pieces of the (shuffled or sorted) set, sizes differing
    by at most one.
    """
    n = x.shape[0]
    idx = rng.permutation(n) if order == "iid" else np.argsort(y, kind="stable")
    logits = np.empty((n, int(y.max()) + 1), dtype=x.dtype)
    for part in np.array_split(idx, max(1, n // batch_size)):
        logits[part] = model.forward(x[part], "train")
    loss, _ = cross_entropy(logits, y)
    return float((logits.argmax(axis=1) == y).mean()), loss


def statistics_error(stats, reference, eps):
    """Per-layer ``(mean_error, var_error)`` of ``stats`` against ``reference``."""
    errors = []
    for (m, v), (m_ref, v_ref) in zip(stats, reference, strict=True):
        sd = np.sqrt(v_ref + eps)
        mean_err = float(np.sqrt(np.mean(((m - m_ref) / sd) ** 2)))
        var_err = float(np.sqrt(np.mean(np.log((v + eps) / (v_ref + eps)) ** 2)))
        errors.append((mean_err, var_err))
    return errors


def run(config, progress=None):
    """Train one configuration and evaluate every estimator; returns a JSON-ready dict.

    ``result["evaluations"]`` has one entry per (estimator, momentum / test batch size,
    PreciseBN setting, order) with test accuracy and loss, the statistics error against
    ``population`` where defined (mean over BN layers, and per layer) and the
    estimator's extra seconds; ``result["training"]`` has the training time.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig(**config)
    # The matmuls here are tiny: BLAS threads only spin and starve the parallel BN
    # kernels (a CNN step took 6 ms with OpenBLAS on 2 threads, 1.5 ms on 1).
    with threadpool_limits(1, user_api="blas"):
        return _run(config, progress)


_EVALUATION_KEYS = (
    "estimator", "momentum", "precise_samples", "precise_batch_size", "aggregation",
    "test_batch_size", "test_order", "test_accuracy", "test_loss", "mean_error",
    "var_error", "layer_mean_error", "layer_var_error", "estimator_seconds", "error",
)  # fmt: skip


def _evaluation(**fields):
    """One evaluation entry: every key present, ``None`` where it does not apply."""
    return dict.fromkeys(_EVALUATION_KEYS) | fields


def _run(config, progress):
    data = datasets.load(config.dataset, config.num_samples)
    model, running, timing = train_network(config, data, progress)
    eps = model.bn_layers[0].eps
    x_test, y_test = data.x_test, data.y_test

    t0 = time.perf_counter()
    population = population_statistics(model, data.x_train)
    population_seconds = time.perf_counter() - t0
    candidates = []  # (per-layer stats, evaluation fields)
    evaluations = []
    for name, per_layer in running.items():
        seconds = sum(t.seconds for t in per_layer)
        estimators = [t.estimator for t in per_layer]
        if name == "cumulative":
            stats = [(e.mean, e.var) for e in estimators]
            candidates.append((stats, {"estimator": name, "estimator_seconds": seconds}))
            continue
        for k, m in enumerate(config.bn_momenta):
            stats = [(e.mean[k], e.var[k]) for e in estimators]
            fields = {"estimator": name, "momentum": m, "estimator_seconds": seconds}
            candidates.append((stats, fields))
    if "precise" in config.estimators:
        n_train = data.x_train.shape[0]
        for samples in config.precise_samples or (n_train,):
            for bs in config.precise_batch_sizes or (config.batch_size,):
                setting = {"estimator": "precise", "precise_samples": min(samples, n_train),
                           "precise_batch_size": bs}  # fmt: skip
                if min(samples, n_train) < bs:  # part of a grid that cannot run: say so
                    for aggregation in config.precise_aggregations:
                        evaluations.append(_evaluation(**setting, aggregation=aggregation,
                            error=f"precise_samples ({samples}) < recompute batch size ({bs})"))  # fmt: skip
                    continue
                t0 = time.perf_counter()
                rng = np.random.default_rng([config.seed, 2])
                aggs = precise_statistics(model, data.x_train, samples, bs, rng, config.unbiased)
                seconds = time.perf_counter() - t0
                for aggregation in config.precise_aggregations:
                    var = "var" if aggregation == "total_variance" else "mean_batch_var"
                    stats = [(a.mean, getattr(a, var)) for a in aggs]
                    fields = {**setting, "aggregation": aggregation, "estimator_seconds": seconds}
                    candidates.append((stats, fields))
    if "population" in config.estimators:
        fields = {"estimator": "population", "estimator_seconds": population_seconds}
        candidates.append((population, fields))

    for stats, fields in candidates:
        acc, loss = evaluate(model, x_test, y_test, stats)
        errs = np.array(statistics_error(stats, population, eps))
        evaluations.append(
            _evaluation(
                **fields,
                test_accuracy=acc,
                test_loss=loss,
                mean_error=float(errs[:, 0].mean()),
                var_error=float(errs[:, 1].mean()),
                layer_mean_error=errs[:, 0].tolist(),
                layer_var_error=errs[:, 1].tolist(),
            )
        )
    if "test_batch" in config.estimators:
        rng = np.random.default_rng([config.seed, 3])
        for size in config.test_batch_sizes:
            for order in config.test_orders:
                t0 = time.perf_counter()
                fields = {
                    "estimator": "test_batch",
                    "test_batch_size": int(size),
                    "test_order": order,
                }
                try:
                    acc, loss = evaluate_test_batches(model, x_test, y_test, int(size), order, rng)
                    fields |= {"test_accuracy": acc, "test_loss": loss}
                except ValueError as err:  # e.g. one value per channel (MLP, batch of 1)
                    fields["error"] = str(err)
                fields["estimator_seconds"] = time.perf_counter() - t0
                evaluations.append(_evaluation(**fields))
    return {
        "config": config.to_dict(),
        "dataset": {"train": int(data.x_train.shape[0]), "test": int(x_test.shape[0])},
        "training": timing,
        "evaluations": evaluations,
    }


def costs(result):
    """Extra seconds per estimator in one run's result (summed over its evaluations,
    except the running estimators, whose update time is shared by all momenta)."""
    out = {}
    for e in result["evaluations"]:
        name, sec = e["estimator"], e["estimator_seconds"] or 0.0
        shared = name in ("ema", "ema_debiased")
        out[name] = sec if shared else out.get(name, 0.0) + sec
    return out


def run_job(params):
    """Sweep entry point (kind ``"train"``): ``params`` are TrainConfig fields."""
    return run(TrainConfig(**params))


def result_rows(result):
    """Tidy rows of one run: its scalar configuration and training timings, repeated
    on each evaluation (per-layer errors as JSON lists)."""
    config = {k: v for k, v in result["config"].items() if not isinstance(v, (list, tuple))}
    base = {**config, **result["training"]}
    rows = []
    for e in result["evaluations"]:
        row = {**base, **e}
        for key in ("layer_mean_error", "layer_var_error"):
            row[key] = None if e[key] is None else json.dumps(e[key])
        rows.append(row)
    return rows
