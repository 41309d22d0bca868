"""Scoring test-time statistics on a trained network: the one evaluation path.

Every study scores statistics through :func:`evaluate_network` and so records the same
columns: accuracy, NLL and ECE (:mod:`bnbench.metrics`), the error of the statistics
against the exact population statistics of the data scored, and the seconds each
estimator costs. A run is scored on the clean test set (``corruption="none"``,
``severity=0``) and on each corrupted test set it names (MNIST-1D-C, :mod:`bnbench.shift`;
MNIST-C, :mod:`bnbench.mnist_c`), with:

* fixed statistics: the running estimates, PreciseBN (:func:`precise_statistics`),
  ``population`` (:func:`population_statistics` over the training set: the *source*
  statistics) and ``adabn`` (the same exact computation over the unlabeled test set, or
  over ``k`` of its samples);
* the adaptation modes of :mod:`bnbench.adaptation` (``test_batch`` = prediction-time BN,
  ``prior``, ``online_ema``, ``robust_bn``), on test batches of exactly ``B`` examples
  (:func:`exact_batches`), iid or sorted by class.

The statistics error (:func:`statistics_error`) is against ``population`` on the clean
test set and against the test set's own exact statistics (``adabn``) on a shifted one,
so on shifted data it measures how far each estimate is from the target.
"""

import time

import numpy as np

from . import adaptation, metrics
from . import estimators as est

ORDERS = ("iid", "sorted")
AGGREGATIONS = ("total_variance", "mean_of_batch_variances")


def check_input(model, x, name="x"):
    """``x`` as the model takes it (``model.input_shape`` per sample and dtype, where the
    model records them, as :func:`bnbench.nn.build` does), or a clear error."""
    shape, dtype = getattr(model, "input_shape", None), getattr(model, "dtype", None)
    if not isinstance(x, np.ndarray) or x.ndim < 1 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty array of samples, got {type(x).__name__}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have samples of shape {tuple(shape)}, got {x.shape[1:]}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have the model's dtype {np.dtype(dtype)}, got {x.dtype}")
    return x


def population_statistics(model, x):
    """Exact per-layer statistics ``[(mean, var_biased), ...]`` of ``model`` over ``x``,
    every upstream BN layer in inference mode with its own statistics over ``x``: one
    pass of plain batch norm (mode ``"stats"``) with the whole set as a single batch
    computes exactly that. Over
    the training set these are the ``population`` (source) statistics; over an unlabeled
    test set, AdaBN's."""
    model.forward(check_input(model, x), "stats")
    return [tuple(np.asarray(s, np.float64) for s in layer.last_batch[:2])
            for layer in model.bn_layers]  # fmt: skip


def observe(model, make):
    """Attach ``make(bn_layer)`` to every BN layer's observers; returns them and a
    function that detaches them."""
    attached = [make(layer) for layer in model.bn_layers]
    for layer, obs in zip(model.bn_layers, attached, strict=True):
        layer.observers.append(obs)

    def detach():
        for layer, obs in zip(model.bn_layers, attached, strict=True):
            layer.observers.remove(obs)

    return attached, detach


def precise_statistics(model, x, samples, batch_size, rng, unbiased=True):
    """PreciseBN: forward ``samples`` inputs of ``x`` in training mode in batches of
    ``batch_size`` (frozen weights) and aggregate each BN layer's batch statistics.

    Only whole batches are forwarded, so ``floor(samples / batch_size) * batch_size``
    samples are used. Returns ``(per-layer BatchAggregate, samples used)``: ``mean`` and
    ``var`` are the total-variance estimate, ``mean_batch_var`` the mean of the batch
    variances."""
    n = x.shape[0]
    samples = min(samples or n, n)
    if samples < batch_size:
        raise ValueError(
            f"precise_samples ({samples}) must be at least the recompute batch size ({batch_size})"
        )
    used = samples // batch_size * batch_size
    idx = rng.permutation(n)[:used]
    aggs, detach = observe(model, lambda layer: est.BatchAggregate(layer.num_features, unbiased))
    try:
        for start in range(0, used, batch_size):
            model.forward(x[idx[start : start + batch_size]], "stats")
    finally:
        detach()
    return aggs, used


def statistics_error(stats, reference, eps):
    """Per-layer ``(mean_error, var_error)`` of ``stats`` against ``reference``:
    RMS over channels of ``(mean - mean_ref) / sqrt(var_ref + eps)`` and of
    ``log((var + eps) / (var_ref + eps))``."""
    errors = []
    for (m, v), (m_ref, v_ref) in zip(stats, reference, strict=True):
        sd = np.sqrt(v_ref + eps)
        mean_err = float(np.sqrt(np.mean(((m - m_ref) / sd) ** 2)))
        var_err = float(np.sqrt(np.mean(np.log((v + eps) / (v_ref + eps)) ** 2)))
        errors.append((mean_err, var_err))
    return errors


def _install(model, per_layer):
    for layer, s in zip(model.bn_layers, per_layer, strict=True):
        layer.eval_stats = s


def predict(model, x, stats):
    """Logits of ``x`` with every BN layer in inference mode using ``stats`` (per layer:
    ``(mean, var)`` or a normaliser)."""
    _install(model, stats)
    return model.forward(check_input(model, x), "eval")


def exact_batches(n, size, order, labels, rng):
    """Batches of exactly ``size`` of ``n`` examples: ``(indices, predicted)`` pairs where
    ``predicted`` selects the examples this batch predicts. The examples are shuffled
    (``"iid"``) or sorted by label (``"sorted"``); when ``size`` does not divide ``n`` the
    last batch takes the last ``size`` examples and predicts only those not yet predicted,
    so every prediction comes from a batch of exactly ``size``."""
    if isinstance(size, bool) or int(size) != size or not 1 <= size <= n:
        raise ValueError(
            f"test batch size must be an integer in [1, {n}] (the test set), got {size!r}"
        )
    if order not in ORDERS:
        raise ValueError(f"test order must be one of {ORDERS}, got {order!r}")
    size = int(size)
    idx = rng.permutation(n) if order == "iid" else np.argsort(labels, kind="stable")
    out = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        lo = stop - size
        keep = np.arange(size) >= start - lo
        out.append((idx[lo:stop], keep))
    return out


def predict_batches(model, x, labels, size, order, rng, make_stats):
    """Logits of every example of ``x``, predicted in batches of exactly ``size`` (see
    :func:`exact_batches`), BN layers normalising with ``make_stats()`` (per-layer
    normalisers, built once for the whole stream so that stateful ones carry over)."""
    check_input(model, x)
    stats = make_stats()
    logits = None
    for idx, keep in exact_batches(x.shape[0], size, order, labels, rng):
        out = predict(model, x[idx], stats)
        if logits is None:
            logits = np.empty((x.shape[0], out.shape[1]), dtype=out.dtype)
        logits[idx[keep]] = out[keep]
    return logits


def scored(logits, labels):
    """The metric columns of an evaluation: accuracy, NLL and ECE of ``logits``."""
    s = metrics.scores(logits, labels)
    return {"test_accuracy": s["accuracy"], "test_nll": s["nll"], "test_ece": s["ece"]}


def timed(fn, *args):
    """``(fn(*args), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def evaluation_entry(**values):
    """One evaluation entry: every key present, ``None`` where it does not apply."""
    return dict.fromkeys(EVALUATION_KEYS) | values


EVALUATION_KEYS = (
    "step", "estimator", "split", "corruption", "severity", "momentum", "precise_samples",
    "precise_samples_used", "precise_batch_size", "aggregation", "adapt_samples",
    "prior_strength", "test_batch_size", "test_order", "test_accuracy", "test_nll",
    "test_ece", "mean_error", "var_error", "layer_mean_error", "layer_var_error",
    "estimator_seconds", "error", "stream", "stream_split", "tent_lr", "tent_mode",
    "segment_accuracy", "seconds_per_example", "forward_passes", "backward_passes",
)  # fmt: skip


def _running_candidates(config, running):
    """``(fields, per-layer stats, seconds)`` of every running estimate (per momentum)."""
    out = []
    for name, per_layer in running.items():
        seconds = sum(t.seconds for t in per_layer)
        means, variances = (
            [t.estimator.mean for t in per_layer],
            [t.estimator.var for t in per_layer],
        )
        if means[0].ndim == 1:  # one estimate (cumulative, FrozenBN's fixed statistics)
            out.append(({"estimator": name}, list(zip(means, variances, strict=True)), seconds))
            continue
        for k, m in enumerate(config.bn_momenta):
            stats = [(mean[k], var[k]) for mean, var in zip(means, variances, strict=True)]
            out.append(({"estimator": name, "momentum": m}, stats, seconds))
    return out


def _precise_candidates(model, data, config):
    """``(fields, stats, seconds)`` of every PreciseBN setting, and error entries for the
    settings that cannot run (fewer samples than the recompute batch)."""
    out, errors = [], []
    n_train = data.x_train.shape[0]
    for samples in config.precise_samples or (n_train,):
        for bs in config.precise_batch_sizes or (config.batch_size,):
            setting = {"estimator": "precise", "precise_samples": min(samples, n_train),
                       "precise_batch_size": bs}  # fmt: skip
            if min(samples, n_train) < bs:  # part of a grid that cannot run: say so
                for aggregation in config.precise_aggregations:
                    errors.append(evaluation_entry(**setting, aggregation=aggregation, split="test",
                        corruption="none", severity=0, error=f"precise_samples ({samples}) < recompute batch size ({bs})"))  # fmt: skip
                continue
            rng = np.random.default_rng([config.seed, 2])
            (aggs, used), seconds = timed(
                precise_statistics, model, data.x_train, samples, bs, rng, config.unbiased
            )
            for aggregation in config.precise_aggregations:
                var = "var" if aggregation == "total_variance" else "mean_batch_var"
                stats = [(a.mean, getattr(a, var)) for a in aggs]
                fields = {**setting, "precise_samples_used": used, "aggregation": aggregation}
                out.append((fields, stats, seconds))
    return out, errors


def test_sets(data, config):
    """``(split, corruption, severity, x, y)``: the clean test set, every corruption x
    severity of the configuration (MNIST-1D-C), and the training set itself when
    ``config.score_train_set`` (split ``"train"``: e.g. training error with batch
    statistics)."""
    yield "test", "none", 0, data.x_test, data.y_test
    if config.corruptions:
        from .corrupted import corrupted_test_set

        for corruption in config.corruptions:
            for severity in config.severities:
                x, y = corrupted_test_set(config.dataset, corruption, severity,
                                          config.num_samples)  # fmt: skip
                yield "test", corruption, severity, x, y
    if config.score_train_set:
        yield "train", "none", 0, data.x_train, data.y_train


def evaluate_network(model, data, config, running):
    """Score every estimator and adaptation mode of ``config`` on the trained ``model``,
    on every test set (:func:`test_sets`); returns the evaluation entries
    (:data:`EVALUATION_KEYS`). ``running``: estimator name -> per-layer timed running
    estimators, as training left them."""
    eps = model.bn_layers[0].eps
    population, population_seconds = timed(population_statistics, model, data.x_train)
    fixed = _running_candidates(config, running)
    evaluations = []
    if "precise" in config.estimators:
        precise, evaluations = _precise_candidates(model, data, config)
        fixed += precise
    if "population" in config.estimators:
        fixed.append(({"estimator": "population"}, population, population_seconds))

    for split, corruption, severity, x, y in test_sets(data, config):
        if x.shape[1:] != data.x_train.shape[1:] or x.dtype != data.x_train.dtype:
            raise ValueError(
                f"test set {corruption!r} (severity {severity}) must have the training data's "
                f"sample shape {data.x_train.shape[1:]} and dtype {data.x_train.dtype}, got "
                f"{x.shape[1:]} {x.dtype}"
            )
        where = {"split": split, "corruption": corruption, "severity": int(severity)}
        target, target_seconds = timed(population_statistics, model, x)
        # clean data (severity 0 of any corruption is the clean set): the training set's
        reference = population if severity == 0 else target
        adabn = []
        if "adabn" in config.estimators:
            adabn.append(
                ({"estimator": "adabn", "adapt_samples": x.shape[0]}, target, target_seconds)
            )
            for k in config.adapt_samples:
                idx = np.random.default_rng([config.seed, 4, k]).permutation(x.shape[0])[:k]
                stats, seconds = timed(population_statistics, model, x[idx])
                adabn.append(({"estimator": "adabn", "adapt_samples": k}, stats, seconds))
        for fields, stats, seconds in fixed + adabn:
            logits = predict(model, x, stats)
            errs = np.array(statistics_error(stats, reference, eps))
            evaluations.append(evaluation_entry(
                **where, **fields, **scored(logits, y), estimator_seconds=seconds,
                mean_error=float(errs[:, 0].mean()), var_error=float(errs[:, 1].mean()),
                layer_mean_error=errs[:, 0].tolist(), layer_var_error=errs[:, 1].tolist(),
            ))  # fmt: skip
        evaluations += _batch_mode_evaluations(model, x, y, config, population, where)
    return evaluations


def _batch_mode_evaluations(model, x, y, config, source, where):
    """Entries of the modes that normalise each test batch, for every test batch size,
    order and mode parameter; every mode sees the same batches."""
    params = {"test_batch": [None], "prior": config.prior_strengths,
              "online_ema": config.online_momenta,
              "robust_bn": [adaptation.ROBUST_BN_MOMENTUM]}  # fmt: skip
    out = []
    for mode, param_name in adaptation.BATCH_MODES.items():
        if mode not in config.estimators:
            continue
        for size in config.test_batch_sizes:
            for order in config.test_orders:
                for param in params[mode]:
                    entry = {**where, "estimator": mode, "test_batch_size": int(size),
                              "test_order": order}  # fmt: skip
                    if param_name:
                        entry[param_name] = param
                    rng = np.random.default_rng([config.seed, 3, int(size)])
                    t0 = time.perf_counter()
                    try:
                        logits = predict_batches(model, x, y, int(size), order, rng,
                                                 lambda m=mode, p=param: adaptation.normalisers(m, source, p))  # fmt: skip
                        entry |= scored(logits, y)
                    except ValueError as err:  # e.g. one value per channel (MLP, batch of 1)
                        entry["error"] = str(err)
                    entry["estimator_seconds"] = time.perf_counter() - t0
                    out.append(evaluation_entry(**entry))
    return out
