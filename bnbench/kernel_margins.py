"""Kernel margins that survive any caller: bnbench's CPU kernels against PyTorch's, on
the arrays an ordinary caller passes.

For each shape and operation, in one interleaving (:mod:`bnbench.timing`): bnbench and
PyTorch on 64-byte aligned inputs and on NumPy's default arrays (``np.array`` copies:
whatever the allocator gives, 16-byte aligned; the row records the actual alignment),
every call allocating its own output as a plain call does; and, for shapes with spatial
axes, both libraries on channels-last data: bnbench with ``axis=-1`` on ``(N, *spatial,
C)`` arrays, PyTorch on the same memory as a ``torch.channels_last`` tensor (4-D) or, for
1-D signals ``(N, L, C)``, which PyTorch has no channels-last format for, as the
``(N * L, C)`` view its ``BatchNorm1d`` would take. Inputs of at least
:data:`~bnbench.throughput.OUT_OF_CACHE_BYTES` are *bandwidth-bound*: a STREAM triad on
arrays of their size runs in the same interleaving, and their target is a share of it.
"""

import numba
import numpy as np
import pandas as pd

from . import functional as F
from .throughput import BYTE_MODEL, OUT_OF_CACHE_BYTES, _inputs, _timing_row, _validate
from .timing import interleaved_timings, time_once, triad

#: the targets of issue 11, as speed ratios against PyTorch (its time over bnbench's)
TARGETS = {
    ("forward_train", "spatial"): 3.0,
    ("forward_train", "dense"): 1.2,
    ("backward", "spatial"): 1.5,
}
FLOOR = 1.0  # no cell below PyTorch's speed
BANDWIDTH_TARGET = 90.0  # % of the triad, where both are at the memory-bandwidth limit


def _channels_last(a):
    """``(N, C, *spatial)`` -> a C-contiguous ``(N, *spatial, C)`` copy (NumPy default)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _bnbench(op, x, dy, weight, bias, ref, axis=1):
    if op == "forward_train":
        return lambda: F.batch_norm_train(x, weight, bias, axis=axis).y
    if op == "forward_eval":
        return lambda: F.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var,
                                         axis=axis)  # fmt: skip
    return lambda: F.batch_norm_backward(dy, x, weight, mean=ref.mean, invstd=ref.invstd,
                                         axis=axis).dx  # fmt: skip


def _torch(op, x, dy, weight, bias, ref, channels_last=False):
    """PyTorch's own call, allocating its output: ``native_batch_norm`` (forward) and
    ``native_batch_norm_backward``, on zero-copy views (channels-last: permuted to
    PyTorch's logical ``(N, C, *spatial)``)."""
    import torch

    aten = torch.ops.aten

    def view(a):
        t = torch.from_numpy(a)
        if not channels_last:
            return t
        if a.ndim == 3:  # (N, L, C): PyTorch's BatchNorm1d input for channels-last 1-D data
            return t.reshape(-1, a.shape[2])
        return t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))

    tx, tdy = view(x), view(dy)
    w, b, mean, var, invstd = (torch.from_numpy(a) for a in (weight, bias, *ref[1:4]))
    if op == "forward_train":
        return lambda: aten.native_batch_norm(tx, w, b, None, None, True, 0.0, 1e-5)[0]
    if op == "forward_eval":
        return lambda: aten.native_batch_norm(tx, w, b, mean, var, False, 0.0, 1e-5)[0]
    return lambda: aten.native_batch_norm_backward(
        tdy, tx, w, None, None, mean, invstd, True, 1e-5, [True, True, True])[0]  # fmt: skip


def _numpy_result(result, shape, channels_last):
    """A contender's result as a channel-first NumPy array of ``shape``."""
    a = result.numpy() if hasattr(result, "numpy") else result
    if channels_last and a.ndim == 2 and len(shape) == 3:  # PyTorch's (N * L, C) view
        a = a.reshape(shape[0], shape[2], shape[1])
    if channels_last and a.shape != tuple(shape):  # (N, *spatial, C)
        a = np.moveaxis(a, -1, 1)
    return a


def _contenders(shape, op, data, has_torch):
    x, dy, weight, bias, ref = data
    plain = [np.array(a) for a in (x, dy)]
    cases = {
        ("cpu", "aligned", "first"): _bnbench(op, x, dy, weight, bias, ref),
        ("cpu", "numpy default", "first"): _bnbench(op, *plain, weight, bias, ref),
    }
    if has_torch:
        cases[("torch", "aligned", "first")] = _torch(op, x, dy, weight, bias, ref)
        cases[("torch", "numpy default", "first")] = _torch(op, *plain, weight, bias, ref)
    if len(shape) > 2:
        last = [_channels_last(a) for a in (x, dy)]
        cases[("cpu", "numpy default", "last")] = _bnbench(op, *last, weight, bias, ref, -1)
        if has_torch:
            cases[("torch", "numpy default", "last")] = _torch(op, *last, weight, bias, ref,
                                                               channels_last=True)  # fmt: skip
    return cases, {"aligned": x, "numpy default": plain[0]}


def measure_margins(shapes, dtype=np.float32, budget_s=1.0, seed=0, progress=None):
    """Rows (op ``"margin_<op>"``) per shape, operation and contender; columns as the
    kernel table's plus ``arrays`` ("aligned" or "numpy default"), ``channels`` ("first"
    or "last"), ``alignment_bytes`` (the input's address modulo 64) and
    ``bandwidth_bound`` with ``triad_gbps`` measured beside it."""
    try:
        import torch

        has_torch = True
        torch.set_num_threads(numba.get_num_threads())
    except ImportError:
        has_torch = False
    threads = numba.get_num_threads()
    rows = []
    for shape in shapes:
        data = _inputs(shape, dtype, seed)
        for op, factor in BYTE_MODEL.items():
            cases, inputs = _contenders(shape, op, data, has_torch)
            expected = _reference(op, data)
            for (backend, arrays, channels), fn in cases.items():
                got = _numpy_result(fn(), shape, channels == "last")
                _validate(f"{backend} {arrays} channels-{channels} {op} {shape}", got, expected)
            bound = data[0].nbytes >= OUT_OF_CACHE_BYTES
            timed = dict(cases)
            if bound:
                timed[("triad", "", "")], triad_bytes = triad(data[0].size)
            cost = sum(time_once(fn) for fn in timed.values())
            repeats = int(np.clip(budget_s / cost, 5, 300))
            times = interleaved_timings(timed, repeats, warmup=1, seed=seed)
            triad_times = times.pop(("triad", "", ""), None)
            triad_gbps = (
                None if triad_times is None else triad_bytes / np.median(triad_times) / 1e9
            )
            for (backend, arrays, channels), t in times.items():
                row = _timing_row(shape, f"margin_{op}", backend, False, dtype, threads, t, factor)
                rows.append({
                    **row, "arrays": arrays, "channels": channels,
                    "alignment_bytes": inputs[arrays].ctypes.data % 64 if channels == "first"
                    else None,
                    "bandwidth_bound": bound, "triad_gbps": triad_gbps,
                })  # fmt: skip
            if progress:
                progress(f"margins {op:>13} {str(shape):>20}: {repeats} interleaved repeats")
    df = pd.DataFrame(rows)
    df["pct_of_triad"] = 100 * df["gbps"] / df["triad_gbps"]
    return df


def _reference(op, data):
    x, dy, weight, bias, ref = data
    if op == "forward_train":
        return ref.y
    if op == "forward_eval":
        return F.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var,
                                 backend="reference")  # fmt: skip
    return F.batch_norm_backward(dy, x, weight, mean=ref.mean, invstd=ref.invstd,
                                 backend="reference").dx  # fmt: skip
