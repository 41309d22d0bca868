"""The sweep job kind ``"torch"``: train a PyTorch model with the estimators tracked,
then score every estimator (the ``torch-estimators`` study).

``params``: ``model`` and ``data`` (``"default"`` or an import path
``package.module:factory``), ``batch_size``, ``epochs``, ``seed``, ``lr`` (``None``:
``0.05 * batch_size / 64`` capped at 0.4, as the NumPy networks), ``momenta`` (tracked
EMAs), ``precise_samples`` (PreciseBN sample counts, ``0`` = the whole training set; whole
shuffled batches of ``batch_size`` only, so the rows record the samples used as
``precise_samples`` and the count asked for as ``precise_request``),
``test_batch_sizes`` (prediction-time BN: the test set predicted in shuffled batches of
exactly that size, :func:`bnbench.evaluate.exact_batches`, seeded by ``seed`` and the
size as the NumPy networks' ``test_batch``). A model factory is called with no argument
after ``torch.manual_seed(seed)`` and returns a ``torch.nn.Module`` taking the data's
inputs and returning logits; a data factory returns ``(x_train, y_train, x_test,
y_test)`` (tensors or arrays, integer labels). The default is a small CNN on MNIST-1D.

``bnbench.sweep.KINDS`` maps the kind to this module, imported (with torch) only when a
torch job runs.

The cache key (:func:`bnbench.sweep.job_key`) covers bnbench's own code, but not a
user's model or data module: :func:`resolve_params` adds a hash of each non-default
factory's source file (``model_source``, ``data_source``), so that editing it runs the
jobs again. Only that file is hashed (and the file defining the factory, if another):
edits to modules it imports in turn are not seen.
"""

import time

import numpy as np
import torch

from .. import evaluate as np_evaluate
from .. import metrics
from ..specs import grid, load_factory, source_hash
from . import evaluation, statistics, tracking

DEFAULTS = {
    "model": "default", "data": "default", "batch_size": 32, "epochs": 6, "seed": 0,
    "lr": None, "momenta": [0.01, 0.1], "precise_samples": [0], "test_batch_sizes": [64],
}  # fmt: skip


def jobs(**params_lists):
    """Jobs of kind ``"torch"``: every combination of ``params_lists`` (name -> list)."""
    return [{"kind": "torch", "params": p} for p in grid(**params_lists)]


def default_model():
    """A small CNN for MNIST-1D ``(N, 1, 40)``: three conv + BN + ReLU blocks, a linear
    layer with BN, and a linear classifier (10 classes)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def default_data():
    """MNIST-1D (:func:`bnbench.data.mnist1d`) as ``(N, 1, 40)`` signals."""
    from ..data import mnist1d

    d = mnist1d()
    return d.x_train[:, None, :], d.y_train, d.x_test[:, None, :], d.y_test


#: params -> the resolved parameter holding a hash of its factory's source
SOURCES = {"model": "model_source", "data": "data_source"}


def resolve_params(params):
    """``params`` with every default filled in (:data:`DEFAULTS`, the learning rate) and,
    for a model or data factory given by import path, a hash of its source file
    (``model_source``, ``data_source``: see :func:`source_hash`), so that the cache key
    changes when the user's code does. Unknown parameters, and a factory path that does
    not load, are a ``ValueError``."""
    unknown = set(params) - set(DEFAULTS) - set(SOURCES.values())
    if unknown:
        raise ValueError(f"unknown torch job parameter(s) {sorted(unknown)}")
    p = {**DEFAULTS, **params}
    if p["lr"] is None:
        p["lr"] = min(0.4, 0.05 * p["batch_size"] / 64)
    for name, field in SOURCES.items():
        if p[name] == "default":
            p.pop(field, None)
        else:
            p[field] = source_hash(p[name])
    return p


def as_tensors(data):
    """``(x_train, y_train, x_test, y_test)`` of a data factory as float32 / int64 tensors."""
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(np.asarray(a)) for a in data)
    return x_tr.float(), y_tr.long(), x_te.float(), y_te.long()


def loader(x, y, size, generator=None, drop_last=False):
    """``[(x_batch, y_batch), ...]`` of ``size`` (shuffled with ``generator`` if given;
    ``drop_last``: no ragged last batch)."""
    idx = torch.randperm(len(x), generator=generator) if generator is not None else None
    out = []
    for start in range(0, len(x), size):
        sel = slice(start, start + size) if idx is None else idx[start : start + size]
        if drop_last and len(x[sel]) < size:
            break
        out.append((x[sel], y[sel]))
    return out


def train(model, x, y, p, tracker_args):
    """SGD (momentum 0.9, weight decay 5e-4, cosine decay) with the estimators tracked;
    returns ``(tracker, training seconds)``."""
    g = torch.Generator().manual_seed(p["seed"])
    opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=0.9, weight_decay=5e-4)
    steps = p["epochs"] * (len(x) // p["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    t0 = time.perf_counter()
    with tracking.track(model, **tracker_args) as tracker:
        model.train()
        for _ in range(p["epochs"]):
            for xb, yb in loader(x, y, p["batch_size"], g, drop_last=True):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
                sched.step()
    return tracker, time.perf_counter() - t0


def _bn(model):
    from . import _core

    return _core.bn_layers(model)


def _scored(scores):
    return {"test_accuracy": scores["accuracy"], "test_nll": scores["nll"],
            "test_ece": scores["ece"]}  # fmt: skip


def score(model, test, stats, reference):
    """The evaluation row of ``model`` with ``stats``, and their error against ``reference``."""
    row = _scored(evaluation.evaluate(model, test, stats))
    if isinstance(stats, dict):
        row["mean_error"], row["var_error"] = evaluation.statistics_error(
            stats, reference, model=model)  # fmt: skip
    return row


def prediction_time_scores(model, x, y, size, rng):
    """Scores of prediction-time BN with test batches of exactly ``size``, as the NumPy
    networks' ``test_batch`` (:func:`bnbench.evaluate.exact_batches`, ``"iid"``): the
    test set shuffled by ``rng``; when ``size`` does not divide it, the last batch is the
    last ``size`` shuffled examples and predicts only those not yet predicted."""
    split = np_evaluate.exact_batches(len(x), size, "iid", None, rng)
    batches = [(x[torch.from_numpy(idx)], y[torch.from_numpy(idx)]) for idx, _ in split]
    logits, labels = evaluation.predict(model, batches, evaluation.prediction_time())
    keep = np.concatenate([keep for _, keep in split])
    return _scored(metrics.scores(logits[keep], labels[keep]))


def run_job(params):
    p = resolve_params(params)
    import numba

    torch.set_num_threads(numba.get_num_threads())
    data = default_data() if p["data"] == "default" else load_factory(p["data"])()
    x_tr, y_tr, x_te, y_te = as_tensors(data)
    torch.manual_seed(p["seed"])
    model = default_model() if p["model"] == "default" else load_factory(p["model"])()
    tracker, train_s = train(model, x_tr, y_tr, p, {"momenta": p["momenta"]})
    model.train()
    train_batches = loader(x_tr, y_tr, p["batch_size"])
    test = loader(x_te, y_te, 500)  # fixed statistics: the batching changes nothing
    population = statistics.population_statistics(model, train_batches)
    rows = []

    def add(estimator, stats, seconds, **fields):
        rows.append({"estimator": estimator, **fields, "estimator_seconds": seconds,
                     **score(model, test, stats, population)})  # fmt: skip

    per_update = tracker.seconds  # shared by every running estimator and momentum
    for name in ("ema", "ema_debiased"):
        for m in p["momenta"]:
            add(name, tracker.statistics(name, m), per_update, momentum=m)
    add("cumulative", tracker.statistics("cumulative"), per_update)
    own = {n: (m.running_mean.double(), m.running_var.double()) for n, m in _bn(model).items()}
    add("running_buffers", own, 0.0)  # the model's own running_mean/var, as PyTorch left them
    for samples in p["precise_samples"]:
        # whole batches only, as in training: a ragged last batch of one sample has no
        # batch variance (and a BatchNorm1d after a Linear refuses it in training mode)
        shuffle = torch.Generator().manual_seed(p["seed"] + 1)
        t0 = time.perf_counter()
        aggs, devices, used = statistics.precise_aggregates(
            model, loader(x_tr, y_tr, p["batch_size"], shuffle, drop_last=True), samples or None
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        for aggregation in statistics.AGGREGATIONS:
            add("precise", statistics.aggregated(aggs, devices, aggregation), seconds,
                precise_request=samples, precise_samples=used, aggregation=aggregation)  # fmt: skip
    add("population", population, population.seconds, passes=population.passes)
    for size in p["test_batch_sizes"]:
        row = {"estimator": "test_batch", "test_batch_size": size}
        rng = np.random.default_rng([p["seed"], 3, int(size)])  # as bnbench.evaluate's
        t0 = time.perf_counter()
        try:
            row |= prediction_time_scores(model, x_te, y_te, size, rng)
        except ValueError as err:  # a size beyond the test set, one value per channel
            row["error"] = str(err)
        rows.append({**row, "estimator_seconds": time.perf_counter() - t0})
    return {
        "config": p,
        "training": {"train_seconds": train_s, "hook_seconds": tracker.seconds,
                     "hook_updates": tracker.updates,
                     "bn_layers": len(population), "train_size": len(x_tr), "test_size": len(x_te)},
        "evaluations": rows,
    }  # fmt: skip


def result_rows(result):
    base = {k: v for k, v in result["config"].items() if not isinstance(v, (list, tuple))}
    return [{**base, **result["training"], **e} for e in result["evaluations"]]
