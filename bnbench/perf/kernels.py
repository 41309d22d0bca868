"""Kernel throughput: every backend and peer, timed through the public API.

For each shape and operation, every contender is validated against the float64
reference, warmed up, then timed interleaved (:mod:`bnbench.timing`). Each runs as its
library runs it: PyTorch has no in-place or out= backward, so its backward is timed
only without ``out=``, allocating its own ``dx`` (no copy into a preallocated array). Effective
bandwidth uses a stated byte model: forward-train moves 3x the input's bytes (read for
the statistics, read and write for ``y``), inference 2x, backward 5x (read ``dy`` and
``x`` for the reductions, read both again and write ``dx``). The machine's memory
bandwidth is measured in the same run by a STREAM triad.

Ghost batch norm and Batch Renorm (:func:`measure_variants`) are timed against plain
batch norm of the same backend on the same input, and against PyTorch's plain batch norm
(PyTorch has neither kernel), all in one interleaving: their rows carry those times as
columns (``plain_ms``, ``torch_plain_ms``).
"""

import numba
import numpy as np
import pandas as pd

from . import functional as F
from . import registry
from .timing import (
    aligned_copy,
    aligned_empty,
    interleaved_timings,
    time_once,
    triad,
    triad_bandwidth,
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

#: Inputs at least this large are out of cache: the triad runs interleaved with them, so
#: their "% of triad" compares against bandwidth measured under the same conditions.
OUT_OF_CACHE_BYTES = 64 * 2**20

#: operation -> bytes moved, in multiples of the input's size
BYTE_MODEL = {"forward_train": 3, "forward_eval": 2, "backward": 5}


def _inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = aligned_copy((rng.standard_normal(shape) * 2.0 + 0.5).astype(dtype))
    dy = aligned_copy(rng.standard_normal(shape).astype(dtype))
    weight = rng.uniform(0.5, 1.5, C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    ref = F.batch_norm_train(x, weight, bias, backend="reference")
    return x, dy, weight, bias, ref


def _call(op, backend, data, out, axis=1):
    """A zero-argument callable running ``op`` on ``backend`` (channel ``axis`` of the
    data); returns y or dx."""
    x, dy, weight, bias, ref = data
    kw = {"backend": backend, "out": out, "axis": axis}
    if op == "forward_train":
        return lambda: F.batch_norm_train(x, weight, bias, **kw).y
    if op == "forward_eval":
        return lambda: F.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var, **kw)
    return lambda: F.batch_norm_backward(dy, x, weight, mean=ref.mean, invstd=ref.invstd,
                                         **kw).dx  # fmt: skip


def _out_modes(op, backend):
    """``preallocated_out`` values timed for ``op`` on ``backend``: the reference and a
    backward with no out= form (a peer's ``backward_fresh``) run only without ``out=``."""
    if backend == "reference":
        return [False]
    if op == "backward" and hasattr(registry.get_backend(backend), "backward_fresh"):
        return [False]
    return [False, True]


def _on_gpu(label):
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


def _validate(name, got, expected):
    if hasattr(got, "copy_to_host"):
        got = got.copy_to_host()
    scale = float(np.abs(expected).max())
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
        err = float(np.abs(got.astype(np.float64) - expected).max())
        raise AssertionError(f"{name} disagrees with the reference (max abs error {err:.3g})")


def _timing_row(shape, op, backend, prealloc, dtype, threads, times, factor):
    """The columns every timing row has: what was timed, the median and quartiles of
    ``times`` (seconds) in ms, and GB/s for ``factor`` times the input's bytes."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    median = float(np.median(times))
    return {
        "shape": "x".join(map(str, shape)),
        "layout": "(N, C)" if len(shape) == 2 else "(N, C, *spatial)",
        "op": op,
        "backend": backend,
        "preallocated_out": prealloc,
        "dtype": np.dtype(dtype).name,
        "threads": threads,
        "input_mib": nbytes / 2**20,
        "repeats": len(times),
        "median_ms": median * 1e3,
        "q25_ms": float(np.quantile(times, 0.25)) * 1e3,
        "q75_ms": float(np.quantile(times, 0.75)) * 1e3,
        "gbps": factor * nbytes / median / 1e9,
    }


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
        data = _inputs(shape, dtype, seed)
        nbytes = data[0].nbytes
        gpu = _on_device(data) if "cuda" in backends else None
        for op, factor in BYTE_MODEL.items():
            expected = _call(op, "reference", data, None)()
            contenders = {}
            for backend in backends:
                for prealloc in _out_modes(op, backend):
                    if backend == "cuda":
                        from numba import cuda

                        out = cuda.device_array(shape, dtype) if prealloc else None
                        fn = _synchronized(_call(op, backend, gpu, out))
                    else:
                        out = aligned_empty(shape, dtype) if prealloc else None
                        fn = _call(op, backend, data, out)
                    _validate(f"{backend} {op} {shape}", fn(), expected)
                    contenders[(backend, prealloc)] = fn
            if gpu is not None:
                fn = _synchronized(_call(op, "cuda", data, None))
                _validate(f"cuda (host arrays) {op} {shape}", fn(), expected)
                contenders[("cuda (host arrays)", False)] = fn
                if _torch_cuda(backends):
                    from numba import cuda

                    for prealloc in _out_modes(op, "torch"):
                        out = cuda.device_array(shape, dtype) if prealloc else None
                        fn = _synchronized(_call(op, "torch", gpu, out))
                        _validate(f"torch (cuda) {op} {shape}", fn(), expected)
                        contenders[("torch (cuda)", prealloc)] = fn
                contenders[("device copy", False)], copy_bytes = _device_copy(nbytes)
            # The oracle is 10-50x slower than the rest: it gets its own few repeats so
            # that the contenders that matter get many within the budget.
            oracle = {("reference", False): contenders.pop(("reference", False))}
            if nbytes >= OUT_OF_CACHE_BYTES:
                contenders[("triad", False)], triad_bytes = triad(data[0].size)
            cost = sum(time_once(fn) for fn in contenders.values())
            repeats = int(np.clip(budget_s / cost, 5, 300))
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
                        **_timing_row(shape, op, backend, prealloc, dtype, threads, t, factor),
                        "triad_gbps": local_triad,
                        "device_copy_gbps": device_gbps if _on_gpu(backend) else None,
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
GHOST_BATCH_SIZE = 32
RENORM_CLIP = {"rmax": 3.0, "dmax": 5.0}  # the end of Ioffe's warm-up


def ghost_batch_size(N):
    """The ghost batch size timed for a batch of ``N``: 32 where it divides N into two
    groups or more, else the largest divisor of N up to 32 that does (None if none)."""
    for G in range(min(GHOST_BATCH_SIZE, N // 2), 1, -1):
        if N % G == 0:
            return G
    return None


def _variant_call(variant, direction, backend, data, out, G, running):
    """A zero-argument callable: ``variant`` ("plain", "ghost", "renorm") of
    ``direction`` ("forward_train", "backward") on ``backend``; returns y or dx."""
    x, dy, weight, bias, _ = data
    if variant == "plain":
        return _call(direction, backend, data, out)
    if variant == "ghost":
        stats = F.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend)
        if direction == "forward_train":
            return lambda: (
                F.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend, out=out).y
            )
        return lambda: F.batch_norm_backward(
            dy, x, weight, mean=stats.mean, invstd=stats.invstd, ghost_batch_size=G,
            backend=backend, out=out,
        ).dx  # fmt: skip
    rm, rv = running
    kw = {"running_mean": rm, "running_var": rv, **RENORM_CLIP, "backend": backend}
    if direction == "forward_train":
        return lambda: F.batch_renorm_train(x, weight, bias, **kw, out=out).y
    st = F.batch_renorm_train(x, weight, bias, **kw)
    return lambda: F.batch_renorm_backward(
        dy, x, weight, mean=st.mean, invstd=st.invstd, r=st.r, d=st.d, backend=backend,
        out=out,
    ).dx  # fmt: skip


def _running(data):
    """Running estimates off the batch's statistics: r and d are clipped in some
    channels, as early in training."""
    ref = data[4]
    C = ref.mean.shape[0]
    rm = ref.mean + np.sqrt(ref.var) * np.linspace(-8, 8, C)
    rv = ref.var * np.geomspace(0.1, 10, C)
    return rm.astype(ref.mean.dtype), rv.astype(ref.var.dtype)


def measure_variants(shapes=SHAPES, dtype=np.float32, budget_s=1.0, seed=0, progress=None):
    """Time ghost batch norm and Batch Renorm against plain batch norm; tidy rows.

    Per shape and direction (forward-train, backward), one interleaving holds, for every
    bnbench backend but the reference (CUDA on device arrays where there is a GPU), plain
    batch norm, ghost batch norm with :func:`ghost_batch_size` and Batch Renorm
    (:data:`RENORM_CLIP`), all with ``out=``, and PyTorch's plain batch norm when
    installed (forward with ``out=``; backward as PyTorch runs it). Each contender is
    validated against the reference's same variant first. One row per (variant,
    backend) with ``op`` from :data:`VARIANT_OPS`, ``plain_ms`` (the same backend's
    plain batch norm), ``torch_plain_ms`` and the ratios ``vs_plain`` (time / plain
    time) and ``speedup_vs_torch_plain``.
    """
    from .kernels import backends_supporting

    own = [b for b in registry.available() if b != "reference"]
    variant_ok = {v: set(backends_supporting(v)) for v in ("ghost", "renorm")}
    torch_peer = "torch" in registry.available(peers=True)
    threads = numba.get_num_threads()
    rows = []
    for shape in shapes:
        G = ghost_batch_size(shape[0])
        data = _inputs(shape, dtype, seed)
        running = _running(data)
        gpu = _on_device(data) if "cuda" in own else None
        dev_running = None
        if gpu is not None:
            from numba import cuda

            dev_running = tuple(cuda.to_device(a) for a in running)
        for direction in ("forward_train", "backward"):
            contenders = {}
            for backend in own:
                for variant in ("plain", "ghost", "renorm"):
                    if variant != "plain" and backend not in variant_ok[variant]:
                        continue
                    if variant == "ghost" and G is None:
                        continue
                    expected = _variant_call(
                        variant, direction, "reference", data, None, G, running
                    )()
                    if backend == "cuda":
                        from numba import cuda

                        out = cuda.device_array(shape, dtype)
                        fn = _synchronized(
                            _variant_call(variant, direction, backend, gpu, out, G, dev_running)
                        )
                    else:
                        out = aligned_empty(shape, dtype)
                        fn = _variant_call(variant, direction, backend, data, out, G, running)
                    _validate(f"{backend} {variant} {direction} {shape}", fn(), expected)
                    contenders[(variant, backend)] = fn
            if torch_peer:
                prealloc = direction == "forward_train"
                out = aligned_empty(shape, dtype) if prealloc else None
                fn = _call(direction, "torch", data, out)
                _validate(f"torch {direction} {shape}", fn(), _call(direction, "reference",
                                                                     data, None)())  # fmt: skip
                contenders[("plain", "torch")] = fn
            cost = sum(time_once(fn) for fn in contenders.values())
            repeats = int(np.clip(budget_s / cost, 5, 300))
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
                        **_timing_row(
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


def _plain(df):
    """The rows of the plain operations (not :func:`measure_variants`' rows)."""
    return df[df.op.isin(list(OP_TITLES))] if "op" in df else df


def variant_table(df, direction):
    """Per shape: plain, ghost and renorm milliseconds per backend, ratios to plain and
    speedups against PyTorch's plain batch norm."""
    ops = {v: VARIANT_OPS[(v, direction)] for v in ("ghost", "renorm")}
    sub = df[df.op.isin(list(ops.values()))]
    if sub.empty:
        return None
    shapes = list(dict.fromkeys(sub["shape"]))
    t = pd.DataFrame(index=shapes)
    for backend in dict.fromkeys(sub.backend):
        b = sub[sub.backend == backend]
        for variant, op in ops.items():
            s = b[b.op == op].set_index("shape")
            if s.empty:
                continue
            if f"{backend} plain ms" not in t:
                t[f"{backend} plain ms"] = s["plain_ms"]
            if variant == "ghost":
                t["G"] = s["ghost_batch_size"].astype("Int64")
            t[f"{backend} {variant} ms"] = s["median_ms"]
            t[f"{backend} {variant} / plain"] = s["vs_plain"]
            if s["torch_plain_ms"].notna().any():
                t[f"{backend} {variant} vs torch"] = s["speedup_vs_torch_plain"]
    if sub["torch_plain_ms"].notna().any():
        t["torch plain ms"] = sub.drop_duplicates("shape").set_index("shape")["torch_plain_ms"]
    t.index.name = "shape"
    return t.reset_index()


def variant_findings(df):
    """Sentences on ghost batch norm and Batch Renorm against plain batch norm and
    PyTorch, computed from the table."""
    lines = []
    for (variant, direction), op in VARIANT_OPS.items():
        for backend in ("cpu", "cuda"):
            s = df[(df.op == op) & (df.backend == backend)]
            if s.empty:
                continue
            what = "Ghost batch norm" if variant == "ghost" else "Batch Renorm"
            line = (
                f"- {what}, {OP_TITLES[direction].lower()}, {backend}: "
                f"{s.vs_plain.min():.2f}x to {s.vs_plain.max():.2f}x plain batch norm's time "
                f"on the same input (median {s.vs_plain.median():.2f}x over {len(s)} shapes)"
            )
            sp = s[s.layout == "(N, C, *spatial)"].speedup_vs_torch_plain.dropna()
            if len(sp):
                line += (
                    f"; {sp.min():.2f}x to {sp.max():.2f}x the speed of PyTorch's plain "
                    f"{OP_TITLES[direction].lower()} on the (N, C, *spatial) shapes"
                )
            lines.append(line + ".")
    return "\n".join(lines)


def speedups(df, baseline="torch"):
    """Per (op, shape, preallocated_out): ``baseline`` median time / each backend's."""
    key = ["op", "shape", "preallocated_out"]
    base = df[df.backend == baseline].set_index(key)["median_ms"].rename("baseline_ms")
    out = df.join(base, on=key)
    out["speedup"] = out["baseline_ms"] / out["median_ms"]
    return out


OP_TITLES = {
    "forward_train": "Forward, training mode",
    "forward_eval": "Forward, inference mode",
    "backward": "Backward",
}


def figure(df):
    """Effective GB/s per shape, one panel per operation, triad bandwidth dashed."""
    import matplotlib.pyplot as plt

    df = _plain(df)
    fig, axes = plt.subplots(1, len(OP_TITLES), figsize=(16, 5), sharey=True)
    shapes = list(dict.fromkeys(df["shape"]))
    series = df[["backend", "preallocated_out"]].drop_duplicates().itertuples(False)
    series = list(series)
    width = 0.8 / len(series)
    for ax, (op, title) in zip(axes, OP_TITLES.items(), strict=True):
        sub = df[df.op == op]
        for i, (backend, prealloc) in enumerate(series):
            s = sub[(sub.backend == backend) & (sub.preallocated_out == prealloc)]
            s = s.set_index("shape").reindex(shapes)
            label = backend + (" (out=)" if prealloc else "")
            ax.bar(np.arange(len(shapes)) + i * width, s["gbps"], width, label=label)
        triad_gbps = df.loc[~df.triad_interleaved, "triad_gbps"].iloc[0]
        ax.axhline(triad_gbps, color="k", ls="--", lw=1, label="triad bandwidth")
        ax.set_xticks(np.arange(len(shapes)) + 0.4 - width / 2, shapes, rotation=35, ha="right")
        ax.set_title(f"{title} ({BYTE_MODEL[op]}x input bytes)")
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("effective bandwidth (GB/s, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(
        f"Batch-norm kernel throughput, {df['dtype'].iloc[0]}, {df['threads'].iloc[0]} threads"
    )
    fig.tight_layout()
    return fig


def summary_tables(df):
    """One markdown-ready DataFrame per operation: milliseconds, speedups, bandwidth."""
    df = _plain(df)
    has_torch = "torch" in set(df.backend)
    tables = {}
    for op in OP_TITLES:
        sub = df[df.op == op]

        def ms(backend, prealloc, sub=sub):
            s = sub[(sub.backend == backend) & (sub.preallocated_out == prealloc)]
            return s.set_index("shape")["median_ms"]

        t = pd.DataFrame({"reference ms": ms("reference", False), "cpu ms": ms("cpu", False)})
        t["cpu out= ms"] = ms("cpu", True)
        if has_torch:
            t["torch ms"] = ms("torch", False)
            t["torch out= ms"] = ms("torch", True)
            t["cpu vs torch"] = t["torch ms"] / t["cpu ms"]
            t["cpu vs torch (out=)"] = t["torch out= ms"] / t["cpu out= ms"]
        cpu_out = sub[(sub.backend == "cpu") & sub.preallocated_out].set_index("shape")
        t["cpu out= GB/s"] = cpu_out["gbps"]
        t["% of triad"] = cpu_out["pct_of_triad"]
        t = t.reindex(list(dict.fromkeys(sub["shape"])))
        tables[op] = t.reset_index()
    return tables


def findings(df):
    """Sentences computed from the table: speedups against PyTorch and bandwidth."""
    variants = variant_findings(df)
    df = _plain(df)
    lines = []
    if "torch" in set(df.backend):
        sp = speedups(df[~df.preallocated_out])
        sp = sp[sp.backend == "cpu"]
        for op, title in OP_TITLES.items():
            for layout in ("(N, C, *spatial)", "(N, C)"):
                s = sp[(sp.op == op) & (sp.layout == layout)]
                if s.empty:
                    continue
                lines.append(
                    f"- {title}, {layout} shapes: bnbench CPU is "
                    f"{s.speedup.min():.2f}x to {s.speedup.max():.2f}x the speed of PyTorch "
                    f"(median {s.speedup.median():.2f}x over {len(s)} shapes)."
                )
    else:
        lines.append("- PyTorch is not installed here, so there is no peer to compare with.")
    for row in df[
        (df.backend == "cuda") & df.preallocated_out & (df.input_mib == df.input_mib.max())
    ].itertuples():
        lines.append(
            f"- CUDA {OP_TITLES[row.op].lower()} on the largest input ({row.shape}) with "
            f"`out=`: {row.gbps:.1f} GB/s, {row.pct_of_device_copy:.0f}% of a device-to-device "
            f"copy ({row.device_copy_gbps:.1f} GB/s)."
        )
    big = df[(df.backend == "cpu") & df.preallocated_out]
    big = big[big.input_mib == big.input_mib.max()]
    for row in big.itertuples():
        lines.append(
            f"- {OP_TITLES[row.op]} on the largest input ({row.shape}, "
            f"{row.input_mib:.0f} MiB) with `out=`: {row.gbps:.1f} GB/s, "
            f"{row.pct_of_triad:.0f}% of the triad bandwidth ({row.triad_gbps:.1f} GB/s)."
        )
    return "\n".join(lines + ([variants] if variants else []))


def gpu_tables(df):
    """Per operation: the CUDA backend on device arrays (kernel time) and on host arrays
    (transfers included), against the device-to-device copy bandwidth."""
    df = _plain(df)
    tables = {}
    for op in OP_TITLES:
        sub = df[(df.op == op) & df.backend.str.startswith("cuda")]
        if sub.empty:
            continue

        def ms(backend, prealloc, sub=sub):
            s = sub[(sub.backend == backend) & (sub.preallocated_out == prealloc)]
            return s.set_index("shape")["median_ms"]

        t = pd.DataFrame({"cuda ms": ms("cuda", False), "cuda out= ms": ms("cuda", True)})
        t["host arrays ms"] = ms("cuda (host arrays)", False)
        dev = sub[(sub.backend == "cuda") & sub.preallocated_out].set_index("shape")
        if "torch (cuda)" in set(df.backend):
            t["torch (cuda) ms"] = ms("torch (cuda)", False, df[df.op == op])
            t["cuda vs torch (cuda)"] = t["torch (cuda) ms"] / t["cuda ms"]
        t["cuda out= GB/s"] = dev["gbps"]
        t["% of device copy"] = dev["pct_of_device_copy"]
        tables[op] = t.reindex(list(dict.fromkeys(sub["shape"]))).reset_index()
    return tables


def report_body(df):
    from .report import markdown_table

    variants = {d: variant_table(df, d) for d in ("forward_train", "backward")}
    found = findings(df)
    margin_df = df[df.op.str.startswith("margin_")]
    df = _plain(df)
    first = df.iloc[0].to_dict()
    parts = [
        "## Findings",
        found,
        "## Method",
        f"{first['dtype']}, {first['threads']} threads (Numba and PyTorch alike). Each cell times "
        "one call of the public API (`bnbench.batch_norm_*`: input checks plus kernel), "
        "compilation excluded (every contender is validated against the float64 reference "
        "and warmed up first). Contenders run interleaved in a shuffled order each repeat; "
        "times are medians (the NumPy reference: 3 repeats of its own). `out=` rows write into a preallocated output; the others "
        "allocate one per call, as a plain call does. PyTorch has no in-place or `out=` "
        "backward (`native_batch_norm_backward` allocates dx, and its `.out` overload "
        "allocates and then copies), so PyTorch's backward is timed as PyTorch runs it: its "
        "backward row includes its own allocation of dx, like bnbench's rows without `out=`, "
        "and it has no `out=` row (the backward 'torch out= ms' cells are empty). Bandwidth counts "
        "3x / 2x / 5x the input's bytes for forward-train / inference / backward; the "
        "triad bandwidth is a STREAM triad (float32, 3 arrays counted): for inputs of "
        f"{OUT_OF_CACHE_BYTES // 2**20} MiB and more it runs interleaved with the contenders "
        "on arrays of the input's size, so '% of triad' compares like with like; for "
        "smaller, cache-resident inputs it is the mean of a 200 MB triad before and after "
        f"the run ({df.loc[~df.triad_interleaved, 'triad_gbps'].iloc[0]:.1f} GB/s), which "
        "in-cache shapes exceed. Arrays are 64-byte aligned.",
        "![throughput](throughput.png)",
    ]
    cpu = df[~df.backend.map(_on_gpu)]
    for op, table in summary_tables(cpu).items():
        parts += [f"## {OP_TITLES[op]}", markdown_table(table)]
    if any(t is not None for t in variants.values()):
        parts.append(
            "## Ghost batch norm and Batch Renorm\n\nEach backend's ghost batch norm "
            f"(G = {GHOST_BATCH_SIZE} where it divides N into two groups or more, else the "
            "largest divisor up to 32 that does; column G) and Batch Renorm (rmax = "
            f"{RENORM_CLIP['rmax']:g}, dmax = {RENORM_CLIP['dmax']:g}, running statistics off "
            "the batch's so that r and d clip in some channels) against its own plain batch "
            "norm on the same input, all with `out=`, timed in one interleaving with "
            "PyTorch's plain batch norm (PyTorch has no ghost or renorm kernel; its forward "
            "with `out=`, its backward as PyTorch runs it). '/ plain' is the time ratio "
            "(1.00 = as fast as plain batch norm); 'vs torch' is PyTorch's plain time over "
            "the variant's."
        )
        for direction, table in variants.items():
            if table is not None:
                parts += [f"### {OP_TITLES[direction]}", markdown_table(table)]
    parts += _margin_section(margin_df)
    gpu = gpu_tables(df)
    if gpu:
        parts.append(
            "## CUDA\n\n`cuda` runs on device arrays and each timed call ends with a device "
            "synchronisation (kernel time, no transfers); `host arrays` passes NumPy arrays, "
            "so the copies in and out are included. '% of device copy' compares with a "
            "device-to-device copy of the input's size timed in the same interleaving."
        )
        for op, table in gpu.items():
            parts += [f"### {OP_TITLES[op]} (CUDA)", markdown_table(table)]
    return "\n\n".join(parts)


def _margin_section(df):
    """The report's kernel-margins section (:mod:`bnbench.kernel_margins`), if measured."""
    from . import kernel_margins as km
    from .report import markdown_table

    if df.empty:
        return []
    parts = [
        "## Margins on any caller's arrays\n\n" + km.margin_findings(df) + "\n\n"
        "bnbench's speed relative to PyTorch's (its median time over bnbench's), timed in "
        "one interleaving per shape and operation, every call allocating its output: on "
        "64-byte aligned inputs, on NumPy's default arrays (plain `np.array` copies), and on "
        "channels-last data (bnbench `axis=-1` on `(N, *spatial, C)`; PyTorch on the same "
        "memory as a `torch.channels_last` tensor, or for 1-D signals `(N, L, C)` the "
        "`(N * L, C)` view its BatchNorm1d takes). Shapes of "
        f"{OUT_OF_CACHE_BYTES // 2**20} MiB and more are bandwidth-bound: their target is a "
        "share of a STREAM triad on arrays of their size, timed in the same interleaving."
    ]
    for op, title in km.OPS.items():
        table = km.margin_table(df, op)
        if table is not None:
            parts += [f"### {title}: margins", markdown_table(table)]
    return parts


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
    then ghost batch norm and Batch Renorm (:func:`measure_variants`). ``params``: ``shape`` (list), optional ``budget_s`` and ``dtype``."""
    params = resolve_params(params)
    shape, dtype = [tuple(params["shape"])], np.dtype(params["dtype"])
    df = measure(shape, dtype=dtype, budget_s=params["budget_s"])
    variants = measure_variants(shape, dtype=dtype, budget_s=params["budget_s"])
    from .kernel_margins import measure_margins

    margins = measure_margins(shape, dtype=dtype, budget_s=params["budget_s"])
    df = pd.concat([df, variants, margins], ignore_index=True)
    return {"rows": df.to_dict("records")}


def result_rows(result):
    return result["rows"]
