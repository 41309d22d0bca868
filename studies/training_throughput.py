"""Training-step throughput: milliseconds per SGD step of the MNIST-1D CNN and MLP and of
the MNIST image CNN (cnn2d) in bnbench and in PyTorch (CPU), over the training batch sizes
the studies use.

One job per (model, batch size), run one at a time with every thread: it times things.
The PyTorch networks are defined here (:func:`torch_network`), layer for layer the
networks of :func:`bnbench.nn.cnn` and :func:`bnbench.nn.mlp`.

    python studies/training_throughput.py --preset full
"""

import sys

import numpy as np

from bnbench import report
from bnbench.study import Study, main

BATCH_SIZES = [2, 8, 32, 64, 128, 256, 512]
MODELS = ["cnn", "mlp", "cnn2d"]
#: the speed target of issue 11: bnbench's step at least 1.5x PyTorch's speed
TARGET = 1.5
#: the PyTorch network every step job times against (:func:`torch_network` below)
PEER = "bnbench_studies.training_throughput:torch_network"


def torch_network(model):
    """The PyTorch twin of bnbench's ``model`` ("cnn", "mlp" or "cnn2d"): the same layers,
    shapes and initialisation rule (PyTorch's defaults, which bnbench's layers copy); the
    image CNN in PyTorch's default NCHW layout (its channels_last layout is timed by the
    kernel study)."""
    import torch.nn as tnn

    if model == "cnn2d":  # bnbench.nn.cnn2d: (16, 32, 32) channels, two 2x2 max pools
        layers, c_in = [tnn.Unflatten(1, (1, 28, 28))], 1
        for b, c in enumerate((16, 32, 32)):
            layers += [tnn.Conv2d(c_in, c, 3, padding=1, bias=False), tnn.BatchNorm2d(c),
                       tnn.ReLU()]  # fmt: skip
            if b < 2:
                layers.append(tnn.MaxPool2d(2))
            c_in = c
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(32 * 7 * 7, 10))

    if model == "mlp":
        return tnn.Sequential(
            tnn.Linear(40, 100, bias=False), tnn.BatchNorm1d(100), tnn.ReLU(),
            tnn.Linear(100, 100, bias=False), tnn.BatchNorm1d(100), tnn.ReLU(),
            tnn.Linear(100, 10),
        )  # fmt: skip
    layers, c_in = [tnn.Unflatten(1, (1, 40))], 1
    for k in (5, 3, 3):
        layers += [tnn.Conv1d(c_in, 25, k, stride=2, padding=1, bias=False),
                   tnn.BatchNorm1d(25), tnn.ReLU()]  # fmt: skip
        c_in = 25
    return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(25 * 5, 10))


def jobs(models, batch_sizes, budget_s):
    return [
        {
            "kind": "step",
            "params": {"model": m, "batch_size": b, "budget_s": budget_s, "peer": PEER},
        }
        for m in models
        for b in batch_sizes
    ]


def step_table(df):
    """One row per (model, batch size): each library's median ms/step and bnbench's
    speed relative to PyTorch (PyTorch's time over bnbench's)."""
    t = df.pivot_table(index=["model", "batch_size"], columns="library", values="median_ms")
    t = t.rename(columns=lambda c: f"{c} ms/step").reset_index()
    if "torch ms/step" in t:
        t["bnbench speed vs torch"] = t["torch ms/step"] / t["bnbench ms/step"]
    return t


def findings(table):
    if "bnbench speed vs torch" not in table:
        return "- PyTorch is not installed here: bnbench's times are reported alone."
    lines = []
    for model, sub in table.groupby("model", sort=False):
        speed = sub["bnbench speed vs torch"]
        slow = sub[speed < TARGET]
        line = (
            f"- {model.upper()}: bnbench's training step is {speed.min():.2f}x to "
            f"{speed.max():.2f}x the speed of PyTorch's over batch sizes "
            f"{sub.batch_size.min()}-{sub.batch_size.max()}"
        )
        if slow.empty:
            line += f"; at least {TARGET}x at every batch size."
        else:
            cells = ", ".join(
                f"{b} ({x:.2f}x)"
                for b, x in zip(slow.batch_size, slow["bnbench speed vs torch"], strict=True)
            )
            line += f"; below {TARGET}x at batch size {cells}."
        lines.append(line)
    return "\n".join(lines)


def figure(df):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    models = [m for m in MODELS if m in set(df.model)]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sub = df[df.model == model]
        for library, s in sub.groupby("library"):
            s = s.sort_values("batch_size")
            err = np.vstack([s.median_ms - s.q25_ms, s.q75_ms - s.median_ms])
            ax.errorbar(s.batch_size, s.median_ms, yerr=err, marker="o", ms=4, capsize=3,
                        label=library)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted(sub.batch_size.unique())
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("training batch size")
        ax.set_ylabel("ms per SGD step (median, IQR bars)")
        ax.set_title(
            f"{model.upper()} on {'MNIST images' if model == 'cnn2d' else 'MNIST-1D inputs'}"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    return fig


def analyse(df):
    table = step_table(df)
    first = df.iloc[0]
    body = "\n\n".join([
        "## Findings",
        findings(table),
        "## Method",
        f"One process per (model, batch size), {first['threads']} threads for both libraries "
        "(Numba's for bnbench with NumPy's BLAS pinned to one thread, "
        "`torch.set_num_threads` for PyTorch). A step is forward in training mode, "
        "softmax cross-entropy, backward and SGD (momentum 0.9, weight decay 5e-4) on one "
        "fixed batch of inputs (40 values for the MNIST-1D networks, 28 x 28 images for "
        "cnn2d); bnbench's BN layers feed an EMA estimator each, as in a training run. "
        "Both libraries are warmed up, then timed in interleaved repeats of "
        "`max(20, 2000 // batch size)` steps; the table gives the median per step. The "
        "PyTorch networks are `torch_network` in this study's script.",
        "![training steps](steps.png)",
        "## Milliseconds per training step",
        report.markdown_table(table),
    ])  # fmt: skip
    return body, [("steps.png", figure(df))]


STUDY = Study(
    name="training-throughput",
    title="Training-step throughput: bnbench against PyTorch (CPU)",
    presets={
        "quick": lambda: jobs(MODELS, [8, 64, 512], budget_s=0.3),
        "full": lambda: jobs(MODELS, BATCH_SIZES, budget_s=1.5),
    },
    analyse=analyse,
    max_jobs=1,
    default_preset="full",
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
