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

from .throughput import BYTE_MODEL, OUT_OF_CACHE_BYTES, _call, _inputs, _timing_row, _validate
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


def _numpy_result(result, shape, backend, channels):
    """A contender's result as a channel-first NumPy array of ``shape``: bnbench's
    channels-last results are ``(N, *spatial, C)``; PyTorch's are its logical ``(N, C,
    *spatial)``, or for 1-D signals the ``(N * L, C)`` view."""
    a = result.numpy() if hasattr(result, "numpy") else result
    if channels == "first":
        return a
    if backend == "torch" and len(shape) > 3:
        return a
    if backend == "torch":
        a = a.reshape(shape[0], shape[2], shape[1])
    return np.moveaxis(a, -1, 1)


def _contenders(shape, op, data, has_torch):
    x, dy, weight, bias, ref = data
    plain = [np.array(a) for a in (x, dy)]
    cases = {
        ("cpu", "aligned", "first"): _call(op, "cpu", data, None),
        ("cpu", "numpy default", "first"): _call(op, "cpu", (*plain, weight, bias, ref), None),
    }
    if has_torch:
        cases[("torch", "aligned", "first")] = _torch(op, x, dy, weight, bias, ref)
        cases[("torch", "numpy default", "first")] = _torch(op, *plain, weight, bias, ref)
    if len(shape) > 2:
        last = [_channels_last(a) for a in (x, dy)]
        cases[("cpu", "numpy default", "last")] = _call(op, "cpu", (*last, weight, bias, ref),
                                                         None, axis=-1)  # fmt: skip
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
            expected = _call(op, "reference", data, None)()
            for (backend, arrays, channels), fn in cases.items():
                got = _numpy_result(fn(), shape, backend, channels)
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


OPS = {"forward_train": "Forward, training mode", "forward_eval": "Forward, inference mode",
       "backward": "Backward"}  # fmt: skip
COLUMNS = {
    ("aligned", "first"): "vs torch, aligned",
    ("numpy default", "first"): "vs torch, NumPy default",
    ("numpy default", "last"): "channels-last vs torch",
}


def margin_table(df, op):
    """Per shape: bnbench's speed relative to PyTorch's (PyTorch's median time over
    bnbench's) for each kind of array, whether the shape is bandwidth-bound, bnbench's
    share of the triad there, and the target."""
    sub = df[df.op == f"margin_{op}"]
    if sub.empty:
        return None
    shapes = list(dict.fromkeys(sub["shape"]))
    ms = sub.pivot_table(index="shape", columns=["backend", "arrays", "channels"],
                         values="median_ms")  # fmt: skip
    t = pd.DataFrame(index=shapes)
    t["cpu ms (NumPy default)"] = ms.get(("cpu", "numpy default", "first"))
    for key, name in COLUMNS.items():
        if ("torch", *key) in ms and ("cpu", *key) in ms:
            t[name] = ms[("torch", *key)] / ms[("cpu", *key)]
    first = sub[(sub.backend == "cpu") & (sub.arrays == "numpy default")]
    first = first[first.channels == "first"].set_index("shape")
    t["bandwidth-bound"] = first["bandwidth_bound"].map({True: "yes", False: "no"})
    t["cpu % of triad"] = first["pct_of_triad"]
    bound = first["bandwidth_bound"].reindex(shapes)
    t["target"] = [_target(op, s, b) for s, b in zip(shapes, bound, strict=True)]
    t.index.name = "shape"
    return t.reset_index()


def _target(op, shape, bound):
    if bound:
        return f">= {BANDWIDTH_TARGET:g}% of triad"
    kind = "spatial" if shape.count("x") >= 2 else "dense"
    return f">= {TARGETS.get((op, kind), FLOOR):g}x (channels-last >= {FLOOR:g}x)"


def margin_findings(df):
    """Sentences computed from the margin rows: each target met or missed, by how much."""
    lines = []
    for op, title in OPS.items():
        t = margin_table(df, op)
        if t is None or not any(c in t for c in COLUMNS.values()):
            continue
        ratio_cols = [c for c in COLUMNS.values() if c in t]
        first_cols = [c for c in ratio_cols if not c.startswith("channels-last")]
        worst = t[ratio_cols].min(axis=1)
        missed = []
        for _, row in t.iterrows():
            if row["bandwidth-bound"] == "yes":
                if row["cpu % of triad"] < BANDWIDTH_TARGET:
                    missed.append(f"{row['shape']} ({row['cpu % of triad']:.0f}% of triad)")
                continue
            kind = "spatial" if row["shape"].count("x") >= 2 else "dense"
            goal = TARGETS.get((op, kind), FLOOR)
            low = row[first_cols].min()
            if low < goal:
                missed.append(f"{row['shape']} ({low:.2f}x, target {goal:g}x)")
            last = row.get("channels-last vs torch")
            if last == last and last is not None and last < FLOOR:
                missed.append(f"{row['shape']} channels-last ({last:.2f}x, floor {FLOOR:g}x)")
        span = f"{worst.min():.2f}x to {t[ratio_cols].max(axis=None):.2f}x"
        verdict = "every target met" if not missed else "missed on " + ", ".join(missed)
        lines.append(f"- {title}: bnbench is {span} PyTorch's speed over every kind of "
                     f"array and layout; {verdict}.")  # fmt: skip
    return "\n".join(lines)
