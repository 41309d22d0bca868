"""The weight surgeries of :mod:`bnbench.surgery` on a PyTorch model, with PyTorch's own
tools: ``torch.optim.swa_utils.AveragedModel`` averages the checkpoints,
``torch.optim.swa_utils.update_bn`` re-estimates the statistics, the BN layers' own
running update (momentum set per phase) runs nncf's forgetting schedule, and
:func:`bnbench.torch.precise_statistics` / :func:`~bnbench.torch.population_statistics`
give PreciseBN and the exact target. Pruning and quantization use the same array
functions as the NumPy networks (:func:`bnbench.surgery.prune_weights`,
:func:`~bnbench.surgery.quantize_weights`) on every ``nn.Linear`` and ``nn.Conv1d/2d/3d``
weight.

Every surgery and statistic function returns a new model or new statistics: the model
it is given is left as it was (parameters, buffers, train/eval flags).

The job kind ``"torch_surgery"`` trains :func:`bnbench.torch.jobs.default_model` (or a
model by import path) on MNIST-1D with the same loop as the ``"torch"`` kind (SGD
momentum 0.9, weight decay 5e-4, cosine decay), keeping a copy of the model at the end
of each of the last K epochs, and scores every statistic after every surgery.
"""

import copy
import time

import numpy as np
import torch
from torch.optim import swa_utils

from .. import surgery as np_surgery
from . import _core, statistics
from . import jobs as torch_jobs

WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
DEFAULTS = {
    "model": "default", "data": "default", "batch_size": 32, "epochs": 6, "seed": 0, "lr": None,
    **{k: v for k, v in np_surgery.DEFAULTS.items() if k != "average_every"},
}  # fmt: skip


def weight_modules(model):
    """``[(name, module)]`` of every Linear/Conv layer with a weight."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED)]


def average(models):
    """The uniform average of ``models``' parameters (oldest first): the ``.module`` of a
    ``swa_utils.AveragedModel`` built from the first and updated with each; its buffers
    are the first model's (``use_buffers=False``, as AveragedModel keeps them)."""
    averaged = swa_utils.AveragedModel(models[0])
    for m in models:
        averaged.update_parameters(m)
    return averaged.module


def _with_weights(model, change):
    out = copy.deepcopy(model)
    mods = weight_modules(out)
    new = change([m.weight.detach().cpu().numpy() for _, m in mods])
    with torch.no_grad():
        for (_, m), w in zip(mods, new, strict=True):
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return out


def prune(model, sparsity, scope="global"):
    """A copy of ``model`` with its Linear/Conv weights magnitude-pruned
    (:func:`bnbench.surgery.prune_weights`)."""
    return _with_weights(model, lambda ws: np_surgery.prune_weights(ws, sparsity, scope))


def quantize(model, bits):
    """A copy of ``model`` with its Linear/Conv weights fake-quantized per output channel
    (:func:`bnbench.surgery.quantize_weights`)."""
    return _with_weights(model, lambda ws: [np_surgery.quantize_weights(w, bits)[0] for w in ws])


def _buffers(model):
    return {n: (m.running_mean.detach().double().clone(), m.running_var.detach().double().clone())
            for n, m in _core.bn_layers(model).items()}  # fmt: skip


def update_bn(model, loader):
    """The statistics ``torch.optim.swa_utils.update_bn(loader, model)`` computes, run on a
    copy: ``{layer: (running_mean, running_var)}`` float64."""
    work = copy.deepcopy(model)
    swa_utils.update_bn(loader, work)
    return _buffers(work)


def forget(model, batches, schedule=np_surgery.FORGET_SCHEDULE):
    """nncf's BN adaptation on a copy: from the model's own running buffers, for each
    ``(k, momentum)`` of ``schedule``, every BN layer's momentum set to ``momentum`` and
    ``k`` batches of ``batches`` forwarded in training mode without gradients."""
    schedule = np_surgery.check_schedule(schedule)
    work = copy.deepcopy(model).train()
    layers = _core.bn_layers(work)
    stream = iter(batches)
    with torch.no_grad():
        for k, m in schedule:
            for layer in layers.values():
                layer.momentum = m
            for _ in range(k):
                batch = next(stream, None)
                if batch is None:
                    raise ValueError(f"forget_schedule needs {sum(k for k, _ in schedule)} "
                                     "batches, the loader has fewer")  # fmt: skip
                work(_core.split_batch(batch, 0)[0])
    return _buffers(work)


def apply(model, surgery, level, checkpoints=(), scope="global"):
    """A new model: ``model`` after ``surgery`` at ``level`` (``"average"``: of the last
    ``level`` of ``checkpoints``, models oldest first)."""
    if surgery == "average":
        if len(checkpoints) < level:
            raise ValueError(
                f"average_last {level} needs {level} checkpoints, got {len(checkpoints)}"
            )
        return average(list(checkpoints)[-level:])
    if surgery == "prune":
        return prune(model, level, scope)
    if surgery == "quantize":
        return quantize(model, level)
    if surgery == "none":
        return copy.deepcopy(model)
    raise ValueError(f"surgery must be one of {('none', *np_surgery.SURGERIES)}, got {surgery!r}")


def evaluate_statistics(net, train, test, stale, p):
    """Every statistic of :data:`bnbench.surgery.STATISTICS` on ``net`` (training mode),
    scored on ``test``: entries as :func:`bnbench.surgery.evaluate_statistics`'. ``stale``
    is loaded into ``net``'s buffers (the forgetting schedule starts from them): pass a
    post-surgery copy (:func:`apply`), never the user's model."""
    x, y = train
    bs, seed = p["batch_size"], p["seed"]

    def shuffled(offset, drop_last=True):
        g = torch.Generator().manual_seed(seed + offset)
        return torch_jobs.loader(x, y, bs, g, drop_last=drop_last)

    t0 = time.perf_counter()
    population = statistics.population_statistics(net, torch_jobs.loader(x, y, 500))
    pop_seconds = time.perf_counter() - t0
    out = []

    def add(statistic, stats, samples, seconds, **extra):
        out.append({"statistic": statistic, "samples": int(samples), "precise_samples": None,
                    **extra, "statistic_seconds": seconds,
                    **torch_jobs.score(net, test, stats, population)})  # fmt: skip

    add("stale", stale, 0, 0.0)
    loader = shuffled(5)
    t0 = time.perf_counter()
    add("update_bn", update_bn(net, loader), len(loader) * bs, time.perf_counter() - t0)
    for k in p["precise_samples"]:
        t0 = time.perf_counter()
        aggs, devices, used = statistics.precise_aggregates(
            net, shuffled(1), min(k or len(x), len(x))
        )
        stats = statistics.aggregated(aggs, devices, "total_variance")
        add("precise", stats, used, time.perf_counter() - t0, precise_samples=k)
    add("population", population, len(x), pop_seconds)
    schedule = np_surgery.check_schedule(p["forget_schedule"])
    t0 = time.perf_counter()
    with torch.no_grad():
        statistics.load_statistics(net, stale)  # forgetting starts from the stale buffers
    add("forget", forget(net, shuffled(6), schedule), sum(k for k, _ in schedule) * bs,
        time.perf_counter() - t0)  # fmt: skip
    return out


def train(model, x, y, p, keep):
    """:func:`bnbench.torch.jobs.train`'s loop without the tracking hooks; a copy of the
    model after each epoch in ``keep`` (1-based). Returns ``({epoch: copy}, seconds)``."""
    g = torch.Generator().manual_seed(p["seed"])
    opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=0.9, weight_decay=5e-4)
    steps = p["epochs"] * (len(x) // p["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    kept, t0 = {}, time.perf_counter()
    model.train()
    for epoch in range(1, p["epochs"] + 1):
        for xb, yb in torch_jobs.loader(x, y, p["batch_size"], g, drop_last=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
        if epoch in keep:
            kept[epoch] = copy.deepcopy(model)
    return kept, time.perf_counter() - t0


def resolve_params(params):
    """``params`` with every default filled in (:data:`DEFAULTS`; the learning rate and
    source hashes as the ``"torch"`` kind); invalid ones are a ValueError naming them."""
    unknown = set(params) - set(DEFAULTS) - set(torch_jobs.SOURCES.values())
    if unknown:
        raise ValueError(f"unknown torch_surgery job parameter(s) {sorted(unknown)}")
    p = {**DEFAULTS, **params}
    for name in ("batch_size", "epochs"):
        if not np_surgery.is_int(p[name]) or p[name] < (2 if name == "batch_size" else 1):
            raise ValueError(f"{name} must be an integer >= {2 if name == 'batch_size' else 1}, "
                             f"got {p[name]!r}")  # fmt: skip
    np_surgery.check_grid(p)
    if "average" in p["surgeries"] and max(p["average_last"]) > p["epochs"]:
        raise ValueError(f"average_last {max(p['average_last'])} needs at least that many epochs "
                         f"(one checkpoint per epoch), got epochs={p['epochs']}")  # fmt: skip
    if p["lr"] is None:
        p["lr"] = min(0.4, 0.05 * p["batch_size"] / 64)
    for name, field in torch_jobs.SOURCES.items():
        if p[name] == "default":
            p.pop(field, None)
        else:
            p[field] = torch_jobs.source_hash(p[name])
    return p


def run_job(params):
    """Sweep entry point (kind ``"torch_surgery"``)."""
    p = resolve_params(params)
    import numba

    torch.set_num_threads(numba.get_num_threads())
    data = (torch_jobs.default_data() if p["data"] == "default"
            else torch_jobs.load_factory(p["data"])())  # fmt: skip
    x_tr, y_tr, x_te, y_te = torch_jobs.as_tensors(data)
    torch.manual_seed(p["seed"])
    model = (torch_jobs.default_model() if p["model"] == "default"
             else torch_jobs.load_factory(p["model"])())  # fmt: skip
    ks = p["average_last"] if "average" in p["surgeries"] else []
    keep = {p["epochs"] - j for k in ks for j in range(k)}
    kept, train_s = train(model, x_tr, y_tr, p, keep)
    checkpoints = [kept[e] for e in sorted(kept)]
    model.train()
    stale = _buffers(model)  # PyTorch's own running buffers (momentum 0.1)
    test = torch_jobs.loader(x_te, y_te, 500)
    trained = [m.weight.detach().double().clone() for _, m in weight_modules(model)]
    rows = []
    for surgery, level in np_surgery.levels(p):
        net = apply(model, surgery, level, checkpoints, p["prune_scope"]).train()
        now = [m.weight.detach().double() for _, m in weight_modules(net)]
        change = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(now, trained, strict=True))
                                  / sum((b**2).sum() for b in trained)))  # fmt: skip
        for e in evaluate_statistics(net, (x_tr, y_tr), test, stale, p):
            rows.append({"surgery": surgery, "level": level, "surgery_label":
                         np_surgery.label(surgery, level), "weight_change": change, **e})  # fmt: skip
    return {"config": p, "framework": "torch", "training": {"train_seconds": train_s},
            "dataset": {"train": len(x_tr), "test": len(x_te)}, "evaluations": rows}  # fmt: skip


def result_rows(result):
    return np_surgery.result_rows(result)
