"""Kernel timings: every backend and peer, timed through the public API (sweep kind
``"kernel"``).

For each shape and operation, every contender (:mod:`bnbench.perf.contenders`) is
validated against the float64 reference, warmed up, then timed interleaved
(:mod:`bnbench.perf.timing`). Each runs as its library runs it: PyTorch has no in-place
or out= backward, so its backward is timed only without ``out=``, allocating its own
``dx`` (no copy into a preallocated array). Effective bandwidth uses the stated byte
model (:data:`~bnbench.perf.contenders.BYTE_MODEL`). The machine's memory bandwidth is
measured in the same run by a STREAM triad.

Ghost batch norm and Batch Renorm (:func:`measure_variants`) are timed against plain
batch norm of the same backend on the same input, and against PyTorch's plain batch norm
(PyTorch has neither kernel), all in one interleaving: their rows carry those times as
columns (``plain_ms``, ``torch_plain_ms``). A job (:func:`run_job`) adds the margin rows
of :mod:`bnbench.perf.margins`. Measurement only: the kernel-throughput study renders
the report from these rows.
"""

import numba
import numpy as np
import pandas as pd

from .. import functional as F
from .. import registry
from ..registry import backends_supporting
from .contenders import (
    BYTE_MODEL,
    api_call,
    ghost_batch_size,
    inputs,
    running,
    variant_call,
)
from .margins import measure_margins
from .timing import (
    OUT_OF_CACHE_BYTES,
    aligned_empty,
    interleaved_timings,
    repeats_within,
    timing_row,
    triad,
    triad_bandwidth,
    validate,
)

SHAPES = [
    (256, 1024),
    (4096, 1024),
    (128, 32, 40),
    (1024, 64, 40),
    (32, 64, 56, 56),
    (64, 256, 14, 14),
    (16, 64, 224, 224),
]


def _out_modes(op, backend):
    """``preallocated_out`` values timed for ``op`` on ``backend``: the reference and a
    backward with no out= form (a peer's ``backward_fresh``) run only without ``out=``."""
    if backend == "reference":
        return [False]
    if op == "backward" and hasattr(registry.get_backend(backend), "backward_fresh"):
        return [False]
    return [False, True]


def on_gpu(label):
    """Whether a row's ``backend`` label ran on the GPU."""
    return label.startswith("cuda") or label == "torch (cuda)"


def _on_device(data):
    """The inputs (and reference statistics) as CUDA device arrays."""
    from numba import cuda

    x, dy, weight, bias, ref = data
    stats = F.TrainResult(*(cuda.to_device(np.ascontiguousarray(a)) for a in ref))
    return (*(cuda.to_device(a) for a in (x, dy, weight, bias)), stats)


def _synchronized(fn):
    """``fn`` followed by a device synchronisation, so that timing covers the kernels."""
    from numba import cuda

    def call():
        result = fn()
        cuda.synchronize()
        return result

    return call


def _device_copy(nbytes):
    """A device-to-device copy of ``nbytes``: the GPU's bandwidth, measured like the
    triad; returns ``(fn, bytes moved)`` (read plus write)."""
    from numba import cuda

    src = cuda.device_array(nbytes, np.uint8)
    dst = cuda.device_array(nbytes, np.uint8)
    return _synchronized(lambda: dst.copy_to_device(src)), 2 * nbytes


def _torch_cuda(backends):
    if "torch" not in backends:
        return False
    import torch

    return torch.cuda.is_available()


def measure(shapes=SHAPES, dtype=np.float32, budget_s=1.0, seed=0, progress=None):
    """Time every operation x shape x contender; returns the tidy results DataFrame.

    Contenders are every available backend and peer, called with a fresh output
    (``preallocated_out=False``) and, except the reference and PyTorch's backward (no
    out= form), with ``out=``. With a GPU,
    ``cuda`` runs on device arrays (kernel time: each call ends with a device
    synchronisation) and ``cuda (host arrays)`` on host arrays, transfers included;
    their peak is a device-to-device copy timed alongside. ``budget_s`` bounds the time
    spent per (shape, operation) on repeats (at least 5).
    """
    backends = registry.available(peers=True)
    threads = numba.get_num_threads()
    if "torch" in backends:
        import torch

        torch.set_num_threads(threads)
    triad_before = triad_bandwidth()
    rows = []
    for shape in shapes:
        data = inputs(shape, dtype, seed)
        nbytes = data[0].nbytes
        gpu = _on_device(data) if "cuda" in backends else None
        for op, factor in BYTE_MODEL.items():
            expected = api_call(op, "reference", data, None)()
            contenders = {}
            for backend in backends:
                for prealloc in _out_modes(op, backend):
                    if backend == "cuda":
                        from numba import cuda

                        out = cuda.device_array(shape, dtype) if prealloc else None
                        fn = _synchronized(api_call(op, backend, gpu, out))
                    else:
                        out = aligned_empty(shape, dtype) if prealloc else None
                        fn = api_call(op, backend, data, out)
                    validate(f"{backend} {op} {shape}", fn(), expected)
                    contenders[(backend, prealloc)] = fn
            if gpu is not None:
                fn = _synchronized(api_call(op, "cuda", data, None))
                validate(f"cuda (host arrays) {op} {shape}", fn(), expected)
                contenders[("cuda (host arrays)", False)] = fn
                if _torch_cuda(backends):
                    from numba import cuda

                    for prealloc in _out_modes(op, "torch"):
                        out = cuda.device_array(shape, dtype) if prealloc else None
                        fn = _synchronized(api_call(op, "torch", gpu, out))
                        validate(f"torch (cuda) {op} {shape}", fn(), expected)
                        contenders[("torch (cuda)", prealloc)] = fn
                contenders[("device copy", False)], copy_bytes = _device_copy(nbytes)
            # The oracle is 10-50x slower than the rest: it gets its own few repeats so
            # that the contenders that matter get many within the budget.
            oracle = {("reference", False): contenders.pop(("reference", False))}
            if nbytes >= OUT_OF_CACHE_BYTES:
                contenders[("triad", False)], triad_bytes = triad(data[0].size)
            repeats = repeats_within(budget_s, contenders)
            times = interleaved_timings(contenders, repeats, warmup=1, seed=seed)
            times |= interleaved_timings(oracle, 3, warmup=0)
            triad_times = times.pop(("triad", False), None)
            local_triad = (
                None if triad_times is None else triad_bytes / np.median(triad_times) / 1e9
            )
            copy_times = times.pop(("device copy", False), None)
            device_gbps = None if copy_times is None else copy_bytes / np.median(copy_times) / 1e9
            for (backend, prealloc), t in times.items():
                rows.append(
                    {
                        **timing_row(shape, op, backend, prealloc, dtype, threads, t, factor),
                        "triad_gbps": local_triad,
                        "device_copy_gbps": device_gbps if on_gpu(backend) else None,
                    }
                )
            if progress:
                progress(f"{op:>13} {str(shape):>20}: {repeats} interleaved repeats")
    df = pd.DataFrame(rows)
    df["triad_interleaved"] = df["triad_gbps"].notna()
    df["triad_gbps"] = df["triad_gbps"].fillna((triad_before + triad_bandwidth()) / 2)
    df["pct_of_triad"] = 100 * df["gbps"] / df["triad_gbps"]
    df["pct_of_device_copy"] = 100 * df["gbps"] / df["device_copy_gbps"]
    return df


#: Batch-norm variants timed against plain batch norm: op names of their rows.
VARIANT_OPS = {
    ("ghost", "forward_train"): "ghost_forward_train",
    ("renorm", "forward_train"): "renorm_forward_train",
    ("ghost", "backward"): "ghost_backward",
    ("renorm", "backward"): "renorm_backward",
}


def measure_variants(shapes=SHAPES, dtype=np.float32, budget_s=1.0, seed=0, progress=None):
    """Time ghost batch norm and Batch Renorm against plain batch norm; tidy rows.

    Per shape and direction (forward-train, backward), one interleaving holds, for every
    bnbench backend but the reference (CUDA on device arrays where there is a GPU), plain
    batch norm, ghost batch norm with
    :func:`~bnbench.perf.contenders.ghost_batch_size` and Batch Renorm
    (:data:`~bnbench.perf.contenders.RENORM_CLIP`), all with ``out=``, and PyTorch's plain batch norm when
    installed (forward with ``out=``; backward as PyTorch runs it). Each contender is
    validated against the reference's same variant first. One row per (variant,
    backend) with ``op`` from :data:`VARIANT_OPS`, ``plain_ms`` (the same backend's
    plain batch norm), ``torch_plain_ms`` and the ratios ``vs_plain`` (time / plain
    time) and ``speedup_vs_torch_plain``.
    """
    own = [b for b in registry.available() if b != "reference"]
    variant_ok = {v: set(backends_supporting(v)) for v in ("ghost", "renorm")}
    torch_peer = "torch" in registry.available(peers=True)
    threads = numba.get_num_threads()
    rows = []
    for shape in shapes:
        G = ghost_batch_size(shape[0])
        data = inputs(shape, dtype, seed)
        estimates = running(data)
        gpu = _on_device(data) if "cuda" in own else None
        dev_running = None
        if gpu is not None:
            from numba import cuda

            dev_running = tuple(cuda.to_device(a) for a in estimates)
        for direction in ("forward_train", "backward"):
            contenders = {}
            for backend in own:
                for variant in ("plain", "ghost", "renorm"):
                    if variant != "plain" and backend not in variant_ok[variant]:
                        continue
                    if variant == "ghost" and G is None:
                        continue
                    expected = variant_call(
                        variant, direction, "reference", data, None, G, estimates
                    )()
                    if backend == "cuda":
                        from numba import cuda

                        out = cuda.device_array(shape, dtype)
                        fn = _synchronized(
                            variant_call(variant, direction, backend, gpu, out, G, dev_running)
                        )
                    else:
                        out = aligned_empty(shape, dtype)
                        fn = variant_call(variant, direction, backend, data, out, G, estimates)
                    validate(f"{backend} {variant} {direction} {shape}", fn(), expected)
                    contenders[(variant, backend)] = fn
            if torch_peer:
                prealloc = direction == "forward_train"
                out = aligned_empty(shape, dtype) if prealloc else None
                fn = api_call(direction, "torch", data, out)
                validate(f"torch {direction} {shape}", fn(), api_call(direction, "reference",
                                                                     data, None)())  # fmt: skip
                contenders[("plain", "torch")] = fn
            repeats = repeats_within(budget_s, contenders)
            times = interleaved_timings(contenders, repeats, warmup=1, seed=seed)
            med = {k: float(np.median(t)) for k, t in times.items()}
            torch_ms = med.get(("plain", "torch"), np.nan) * 1e3
            for (variant, backend), t in times.items():
                if variant == "plain":
                    continue
                median = med[(variant, backend)]
                plain = med[("plain", backend)]
                rows.append(
                    {
                        **timing_row(
                            shape,
                            VARIANT_OPS[(variant, direction)],
                            backend,
                            True,
                            dtype,
                            threads,
                            t,
                            BYTE_MODEL[direction],
                        ),  # fmt: skip
                        "triad_interleaved": False,
                        "ghost_batch_size": G if variant == "ghost" else None,
                        "plain_ms": plain * 1e3,
                        "vs_plain": median / plain,
                        "torch_plain_ms": torch_ms,
                        "speedup_vs_torch_plain": torch_ms / (median * 1e3),
                    }
                )
            if progress:
                progress(f"variants {direction:>13} {str(shape):>20}: {repeats} repeats")
    return pd.DataFrame(rows)


def resolve_params(params):
    """A kernel job's parameters with their defaults (the sweep's cache key): ``shape``,
    ``budget_s`` (1.0) and ``dtype`` ("float32")."""
    unknown = set(params) - {"shape", "budget_s", "dtype"}
    if unknown or "shape" not in params:
        raise ValueError(
            f"kernel job params must be shape[, budget_s, dtype], got {sorted(params)}"
        )
    return {
        "shape": [int(n) for n in params["shape"]],
        "budget_s": float(params.get("budget_s", 1.0)),
        "dtype": np.dtype(params.get("dtype", "float32")).name,
    }


def run_job(params):
    """Sweep entry point (kind ``"kernel"``): one shape, every operation and contender,
    then ghost batch norm and Batch Renorm (:func:`measure_variants`) and the margins
    (:func:`bnbench.perf.margins.measure_margins`). ``params``: ``shape`` (list), optional
    ``budget_s`` and ``dtype``."""
    params = resolve_params(params)
    shape, dtype = [tuple(params["shape"])], np.dtype(params["dtype"])
    df = measure(shape, dtype=dtype, budget_s=params["budget_s"])
    variants = measure_variants(shape, dtype=dtype, budget_s=params["budget_s"])
    margins = measure_margins(shape, dtype=dtype, budget_s=params["budget_s"])
    df = pd.concat([df, variants, margins], ignore_index=True)
    return {"rows": df.to_dict("records")}


def result_rows(result):
    return result["rows"]
