"""Kernel benchmark study: every batch-norm operation, backend and peer, in GB/s.

One job per shape (run one at a time: it times things). PyTorch joins as a peer when
installed. The library measures (:mod:`bnbench.perf.kernels`, sweep kind ``"kernel"``,
with the margins of :mod:`bnbench.perf.margins`); this script holds the targets of
issue 11 and renders the report from the saved rows.

    python studies/kernel_throughput.py --preset full --out reports/kernel-throughput
"""

import sys

import numpy as np
import pandas as pd

from bnbench.perf import contenders, kernels, timing
from bnbench.report import markdown_table
from bnbench.study import Study, main

OP_TITLES = {
    "forward_train": "Forward, training mode",
    "forward_eval": "Forward, inference mode",
    "backward": "Backward",
}

#: the targets of issue 11, as speed ratios against PyTorch (its time over bnbench's)
TARGETS = {
    ("forward_train", "spatial"): 3.0,
    ("forward_train", "dense"): 1.2,
    ("backward", "spatial"): 1.5,
}
FLOOR = 1.0  # no cell below PyTorch's speed
BANDWIDTH_TARGET = 90.0  # % of the triad, where both are at the memory-bandwidth limit


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
    for op, title in OP_TITLES.items():
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


def _plain(df):
    """The rows of the plain operations (not :func:`measure_variants`' rows)."""
    return df[df.op.isin(list(OP_TITLES))] if "op" in df else df


def variant_table(df, direction):
    """Per shape: plain, ghost and renorm milliseconds per backend, ratios to plain and
    speedups against PyTorch's plain batch norm."""
    ops = {v: kernels.VARIANT_OPS[(v, direction)] for v in ("ghost", "renorm")}
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
    for (variant, direction), op in kernels.VARIANT_OPS.items():
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
        ax.set_title(f"{title} ({contenders.BYTE_MODEL[op]}x input bytes)")
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
        f"{timing.OUT_OF_CACHE_BYTES // 2**20} MiB and more it runs interleaved with the contenders "
        "on arrays of the input's size, so '% of triad' compares like with like; for "
        "smaller, cache-resident inputs it is the mean of a 200 MB triad before and after "
        f"the run ({df.loc[~df.triad_interleaved, 'triad_gbps'].iloc[0]:.1f} GB/s), which "
        "in-cache shapes exceed. Arrays are 64-byte aligned.",
        "![throughput](throughput.png)",
    ]
    cpu = df[~df.backend.map(kernels.on_gpu)]
    for op, table in summary_tables(cpu).items():
        parts += [f"## {OP_TITLES[op]}", markdown_table(table)]
    if any(t is not None for t in variants.values()):
        parts.append(
            "## Ghost batch norm and Batch Renorm\n\nEach backend's ghost batch norm "
            f"(G = {contenders.GHOST_BATCH_SIZE} where it divides N into two groups or more, else the "
            "largest divisor up to 32 that does; column G) and Batch Renorm (rmax = "
            f"{contenders.RENORM_CLIP['rmax']:g}, dmax = {contenders.RENORM_CLIP['dmax']:g}, running statistics off "
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
    """The report's kernel-margins section (the rows of :mod:`bnbench.perf.margins`)."""
    if df.empty:
        return []
    parts = [
        "## Margins on any caller's arrays\n\n" + margin_findings(df) + "\n\n"
        "bnbench's speed relative to PyTorch's (its median time over bnbench's), timed in "
        "one interleaving per shape and operation, every call allocating its output: on "
        "64-byte aligned inputs, on NumPy's default arrays (plain `np.array` copies), and on "
        "channels-last data (bnbench `axis=-1` on `(N, *spatial, C)`; PyTorch on the same "
        "memory as a `torch.channels_last` tensor, or for 1-D signals `(N, L, C)` the "
        "`(N * L, C)` view its BatchNorm1d takes). Shapes of "
        f"{timing.OUT_OF_CACHE_BYTES // 2**20} MiB and more are bandwidth-bound: their target is a "
        "share of a STREAM triad on arrays of their size, timed in the same interleaving."
    ]
    for op, title in OP_TITLES.items():
        table = margin_table(df, op)
        if table is not None:
            parts += [f"### {title}: margins", markdown_table(table)]
    return parts


def jobs(shapes, budget_s):
    return [{"kind": "kernel", "params": {"shape": list(s), "budget_s": budget_s}} for s in shapes]


def analyse(df):
    order = {"x".join(map(str, s)): i for i, s in enumerate(kernels.SHAPES)}
    df = df.assign(_o=df["shape"].map(order).fillna(len(order)))
    df = df.sort_values("_o", kind="stable").drop(columns="_o")
    df["preallocated_out"] = df["preallocated_out"].astype(bool)
    df["triad_interleaved"] = df["triad_interleaved"].astype(bool)
    return report_body(df), [("throughput.png", figure(df))]


STUDY = Study(
    name="kernel-throughput",
    title="Batch-norm kernel throughput",
    presets={
        "quick": lambda: jobs(kernels.SHAPES[:6], budget_s=0.3),
        "full": lambda: jobs(kernels.SHAPES, budget_s=1.5),
    },
    analyse=analyse,
    max_jobs=1,
    default_preset="full",
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
