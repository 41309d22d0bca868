"""Kernel margins that survive any caller: bnbench's CPU kernels against PyTorch's, on
the arrays an ordinary caller passes.

For each shape and operation, in one interleaving (:mod:`bnbench.perf.timing`), the
contenders of :data:`bnbench.perf.contenders.COMPARISONS`: bnbench (``"api"``, the CPU
backend) and PyTorch (``"aten"``, its own call) on 64-byte aligned inputs and on NumPy's
default arrays (``np.array`` copies: whatever the allocator gives, 16-byte aligned; the
row records the actual alignment), every call allocating its own output as a plain call
does; and, for shapes with spatial axes, both libraries on channels-last data (layout
``"last"``). Inputs of at least :data:`~bnbench.perf.timing.OUT_OF_CACHE_BYTES` are
*bandwidth-bound*: a STREAM triad on arrays of their size runs in the same interleaving.
Measurement only: the targets and the report live in the kernel-throughput study.
"""

import numba
import numpy as np
import pandas as pd

from .contenders import (
    BYTE_MODEL,
    api_call,
    contender,
    in_layout,
    inputs,
    layouts,
    to_channel_first,
)
from .timing import (
    OUT_OF_CACHE_BYTES,
    interleaved_timings,
    repeats_within,
    timing_row,
    triad,
    validate,
)

#: the library of :data:`~bnbench.perf.contenders.COMPARISONS` -> its rows' ``backend``
BACKEND_LABELS = {"api": "cpu", "aten": "torch"}


def _contenders(shape, op, data, has_torch):
    """(library, arrays, layout) -> callable, and arrays -> the input timed."""
    x, dy, weight, bias, ref = data
    plain = (np.array(x), np.array(dy), weight, bias, ref)
    libraries = ["api", "aten"] if has_torch else ["api"]
    cases = {}
    for layout in layouts(shape):
        for arrays, d in (("aligned", data), ("numpy default", plain)):
            if layout == "last" and arrays == "aligned":
                continue  # a channels-last copy is NumPy's default array anyway
            laid = in_layout(d, layout)  # one copy, timed by every library
            for library in libraries:
                cases[(library, arrays, layout)] = contender(op, library, layout, laid)
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
        data = inputs(shape, dtype, seed)
        for op, factor in BYTE_MODEL.items():
            cases, arrays_of = _contenders(shape, op, data, has_torch)
            expected = api_call(op, "reference", data, None)()
            for (library, arrays, channels), fn in cases.items():
                got = to_channel_first(fn(), shape, library, channels)
                name = f"{BACKEND_LABELS[library]} {arrays} channels-{channels} {op} {shape}"
                validate(name, got, expected)
            bound = data[0].nbytes >= OUT_OF_CACHE_BYTES
            timed = dict(cases)
            if bound:
                timed[("triad", "", "")], triad_bytes = triad(data[0].size)
            repeats = repeats_within(budget_s, timed)
            times = interleaved_timings(timed, repeats, warmup=1, seed=seed)
            triad_times = times.pop(("triad", "", ""), None)
            triad_gbps = (
                None if triad_times is None else triad_bytes / np.median(triad_times) / 1e9
            )
            for (library, arrays, channels), t in times.items():
                backend = BACKEND_LABELS[library]
                row = timing_row(shape, f"margin_{op}", backend, False, dtype, threads, t, factor)
                rows.append({
                    **row, "arrays": arrays, "channels": channels,
                    "alignment_bytes": arrays_of[arrays].ctypes.data % 64 if channels == "first"
                    else None,
                    "bandwidth_bound": bound, "triad_gbps": triad_gbps,
                })  # fmt: skip
            if progress:
                progress(f"margins {op:>13} {str(shape):>20}: {repeats} interleaved repeats")
    df = pd.DataFrame(rows)
    df["pct_of_triad"] = 100 * df["gbps"] / df["triad_gbps"]
    return df
