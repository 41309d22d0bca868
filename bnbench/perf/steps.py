"""Training-step throughput: milliseconds per SGD step of a bnbench network and of the
same network in PyTorch, timed interleaved in one process (sweep kind ``"step"``).

A step is what training does per batch: forward in training mode, softmax
cross-entropy, backward, and SGD with momentum 0.9 and weight decay 5e-4 (the
bookkeeping of the running estimators is measured with them attached: one EMA of
momentum 0.1 per BN layer, as a run of :func:`bnbench.train.run` has). The PyTorch
network is not in the library: the job imports it from ``peer`` (``module:function``,
called as ``function(model)``; the training-throughput study names its own definition);
a job without a peer times bnbench alone.
Both sides get the job's thread count: Numba's threads for bnbench (with NumPy's BLAS
pinned to one thread, as :func:`bnbench.train.run` does), ``torch.set_num_threads`` for
PyTorch.
"""

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from .. import estimators, nn, specs
from .timing import interleaved_timings

#: model -> the input values per example it is timed with (MNIST-1D signals, MNIST images)
INPUT_FEATURES = {"cnn": 40, "mlp": 40, "resnet": 40, "cnn2d": 784}
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def resolve_params(params):
    """``model`` (a key of :data:`INPUT_FEATURES`), ``batch_size``, optional ``budget_s``
    (1.0, seconds of timed steps per library) and ``peer`` (the PyTorch network's import
    path; None, the default: bnbench alone)."""
    unknown = set(params) - {"model", "batch_size", "budget_s", "peer", "peer_source"}
    if unknown or not {"model", "batch_size"} <= set(params):
        raise ValueError(
            f"step job params must be model, batch_size[, budget_s, peer], got {sorted(params)}"
        )
    if params["model"] not in INPUT_FEATURES:
        raise ValueError(f"model must be one of {sorted(INPUT_FEATURES)}, got {params['model']!r}")
    batch_size = params["batch_size"]
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    peer = params.get("peer")
    peer = None if peer is None else str(peer)
    peer_source = None
    if peer is not None:
        try:  # editing the PyTorch network's file changes the cache key
            peer_source = specs.source_hash(peer)
        except ValueError:  # no torch or no studies package here: bnbench is timed alone
            peer_source = None
    return {
        "model": params["model"],
        "batch_size": int(batch_size),
        "budget_s": float(params.get("budget_s", 1.0)),
        "peer": peer,
        "peer_source": peer_source,
    }


def bnbench_step(model_name, batch_size, seed=0, norm=nn.BatchNorm):
    """A zero-argument callable running one training step of the bnbench network
    (``nn.build(model_name, ..., norm=norm)``, as ``step.model``) on a fixed batch of
    inputs of the model's size (:data:`INPUT_FEATURES`, 10 classes)."""
    rng = np.random.default_rng(seed)
    features = INPUT_FEATURES[model_name]
    model = nn.build(model_name, features, 10, rng, norm=norm)
    model.input_grad = False  # as bnbench.train does
    for layer in model.bn_layers:
        layer.observers = [estimators.EMA(layer.num_features, momenta=(0.1,))]
    opt = nn.SGD(model, LR, MOMENTUM, WEIGHT_DECAY)
    x = rng.standard_normal((batch_size, features)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)

    def step():
        _, grad = nn.cross_entropy(model.forward(x, "train"), y)
        model.backward(grad)
        opt.step()

    step.model = model
    return step


def torch_step(network, batch_size, seed=0, features=40):
    """The same step in PyTorch for ``network`` (a ``torch.nn.Module``)."""
    import torch

    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(network.parameters(), LR, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)  # fmt: skip
    x = torch.from_numpy(rng.standard_normal((batch_size, features)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch_size))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(network(x), y).backward()
        opt.step()

    return step


def run_job(params):
    """Sweep entry point: one (model, batch size), both libraries, interleaved repeats
    of ``max(20, 2000 // batch_size)`` steps each (many steps per repeat: the first steps after
    a switch of library pay for the other library's thread pool still spinning) (at least 5 repeats, more while they fit
    in ``budget_s`` per library)."""
    params = resolve_params(params)
    model, batch_size = params["model"], params["batch_size"]
    threads = numba.get_num_threads()
    ours = bnbench_step(model, batch_size)
    contenders = {"bnbench": ours}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and params["peer_source"] is not None:
        torch.set_num_threads(threads)
        network = specs.load_factory(params["peer"])(model)
        contenders["torch"] = torch_step(network, batch_size, features=INPUT_FEATURES[model])
    steps = max(20, 2000 // batch_size)

    def repeat(fn):
        def run():
            for _ in range(steps):
                fn()

        return run

    with threadpool_limits(1, user_api="blas"):
        timed = {name: repeat(fn) for name, fn in contenders.items()}
        for fn in timed.values():  # compile and warm up
            fn()
        probe = interleaved_timings(timed, 1, warmup=0)
        cost = max(float(t[0]) for t in probe.values())
        repeats = int(np.clip(params["budget_s"] / cost, 5, 200))
        times = interleaved_timings(timed, repeats, warmup=0)
    rows = []
    for library, t in times.items():
        per_step = t / steps * 1e3
        rows.append({
            "model": model, "batch_size": batch_size, "library": library,
            "threads": threads, "repeats": repeats, "steps_per_repeat": steps,
            "median_ms": float(np.median(per_step)),
            "q25_ms": float(np.quantile(per_step, 0.25)),
            "q75_ms": float(np.quantile(per_step, 0.75)),
        })  # fmt: skip
    return {"rows": rows}


def result_rows(result):
    return result["rows"]
