"""Estimators during training, and with depth: when does each estimator break?

(a) Every estimator scored at ~20 checkpoints over training, on the MNIST-1D CNN at a
small and a large training batch size: Wu & Johnson (2021, section 3) find EMA
statistics most wrong mid-training with large batches and a high learning rate, while
PreciseBN stays stable. (b) The estimators' gaps at the end of training against the depth
of a residual CNN (errors of the statistics compound through BN layers) and against the
training length.

    python studies/training_dynamics.py --preset quick
"""

import sys

import matplotlib.pyplot as plt
import numpy as np

from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, paired_difference
from bnbench.study import Study, main
from bnbench.sweep import train_jobs

MOMENTA = [0.01, 0.1, 0.3]
ESTIMATORS = ["ema", "ema_debiased", "cumulative", "precise", "population"]
CHECKPOINTS = [round(0.05 * i, 2) for i in range(1, 20)]  # 5%, 10%, ..., 95%
SMALL, LARGE, DEPTH_BATCH = 16, 512, 64


def jobs(epochs, seeds, depths, lengths):
    common = {"bn_momenta": MOMENTA, "estimators": ESTIMATORS, "precise_samples": [1024, 4000]}
    seeds = list(range(seeds))
    during = train_jobs({**common, "model": "cnn", "epochs": epochs, "eval_every": CHECKPOINTS},
                        batch_size=[SMALL, LARGE], seed=seeds)  # fmt: skip
    deep = train_jobs({**common, "model": "resnet", "epochs": epochs, "batch_size": DEPTH_BATCH},
                      depth=depths, seed=seeds)  # fmt: skip
    long = train_jobs({**common, "model": "cnn", "batch_size": DEPTH_BATCH},
                      epochs=lengths, seed=seeds)  # fmt: skip
    return during + deep + long


def _label(row):
    if row.estimator in ("ema", "ema_debiased"):
        return f"{row.estimator} m={row.momentum:g}"
    if row.estimator == "precise":  # "all": the training set in whole recompute batches
        return "precise all" if row.precise_samples >= row.train_size else "precise 1024"
    return row.estimator


def prepare(df):
    df = df[df.test_accuracy.notna() & (df.corruption == "none")].copy()
    df = df[(df.estimator != "precise") | (df.aggregation == "total_variance")]
    df["label"] = [_label(r) for r in df.itertuples()]
    df["acc"] = 100 * df["test_accuracy"]
    df["progress"] = df["step"] / df["steps"]
    # paired with the same network at the same step: the seeds' own spread cancels
    df["gap"] = paired_difference(df, "acc", df.estimator == "population", on=("step",))
    df["part"] = np.where(df.model == "resnet", "depth",
                          np.where(df.batch_size == DEPTH_BATCH, "length", "during"))  # fmt: skip
    df["network"] = [f"resnet, {int(d)} BN layers" if m == "resnet" else m
                     for m, d in zip(df.model, df.depth, strict=True)]  # fmt: skip
    return df


SHOWN = ["population", "precise 1024", "precise all", "ema m=0.01", "ema m=0.1", "ema m=0.3",
         "ema_debiased m=0.1", "cumulative"]  # fmt: skip


def _during_figure(df):
    sub = df[(df.part == "during") & df.label.isin(SHOWN)]
    sizes = sorted(sub.batch_size.unique())
    fig, axes = plt.subplots(2, len(sizes), figsize=(7 * len(sizes), 8.5), squeeze=False,
                             layout="constrained")  # fmt: skip
    for j, bs in enumerate(sizes):
        part = sub[sub.batch_size == bs]
        for i, (value, ylabel) in enumerate([("acc", "test accuracy (%)"),
                                             ("var_error", "RMS |log(var / var_population)|")]):  # fmt: skip
            curves = mean_and_spread(part, ["label", "step"], value)
            curves["order"] = curves.label.map(SHOWN.index)
            lines_with_spread(axes[i, j], curves.sort_values(["order", "step"]), "step", "label",
                              logx=False)  # fmt: skip
            axes[i, j].set_xlabel("training step")
            axes[i, j].set_ylabel(ylabel)
            axes[i, j].set_title(f"cnn, batch size {bs}: {ylabel.split(' (')[0]} during training")
        axes[1, j].set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    return fig


def _final_figure(df):
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), squeeze=False, layout="constrained")
    for ax, (part, x, xlabel) in zip(axes[0], [("depth", "depth", "BN layers (resnet depth)"),
                                               ("length", "epochs", "training epochs (cnn)")],
                                     strict=True):  # fmt: skip
        sub = df[(df.part == part) & (df.step == df.steps) & df.label.isin(SHOWN[1:])]
        curves = mean_and_spread(sub, ["label", x], "gap")
        curves["order"] = curves.label.map(SHOWN.index)
        lines_with_spread(ax, curves.sort_values(["order", x]), x, "label")
        ax.axhline(0, color="k", lw=1, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy minus population (points)")
        ax.set_title(f"gap to the population statistics at the end of training, by {x}")
    next(ax for ax in axes[0][::-1] if ax.get_legend_handles_labels()[0]).legend(fontsize=7)
    return fig


def _mid_training(df, bs):
    """Per estimator: mean |gap| and worst gap (points) over checkpoints between 20% and
    80% of training, averaged over seeds."""
    sub = df[(df.part == "during") & (df.batch_size == bs) & df.progress.between(0.2, 0.8)]
    per_run = sub.groupby(["label", "job_key"]).gap.agg(
        mean_abs=lambda g: g.abs().mean(), worst="min"
    )  # fmt: skip
    return per_run.groupby("label").agg(["mean", "std"])


def precise_used(df):
    """The samples 'precise all' actually forwarded, per training batch size."""
    part = df[df.label == "precise all"].drop_duplicates("batch_size")
    return ", ".join(f"{int(r.precise_samples_used)} at batch {int(r.batch_size)}"
                     for r in part.sort_values("batch_size").itertuples()) or "not run"  # fmt: skip


def _findings(df):
    out = []
    seeds = df.seed.nunique()
    sizes = sorted(int(b) for b in df[df.part == "during"].batch_size.unique())
    mid = {bs: _mid_training(df, bs) for bs in sizes}
    for label in ("ema m=0.1", "ema m=0.01", "precise 1024", "cumulative"):
        if not all(label in m.index for m in mid.values()):
            continue
        cells = [f"batch {bs}: {m.loc[label, ('mean_abs', 'mean')]:.1f} "
                 f"(worst {m.loc[label, ('worst', 'mean')]:+.1f})" for bs, m in mid.items()]  # fmt: skip
        out.append(f"- Mid-training (20-80% of the steps), {label} against the same checkpoint's "
                   f"population statistics, mean |gap| in points: " + "; ".join(cells) + ".")  # fmt: skip
    if len(sizes) == 2 and all(
        {"ema m=0.1", "precise 1024"} <= set(m.index) for m in mid.values()
    ):
        mean = {bs: mid[bs].loc[:, ("mean_abs", "mean")] for bs in sizes}
        sd = {bs: mid[bs].loc[:, ("mean_abs", "std")].fillna(0) for bs in sizes}
        small, large = sizes
        ema, pre = "ema m=0.1", "precise 1024"
        # beyond the seed spread: two means differ by more than their sds together
        agrees = (mean[large][ema] - mean[small][ema] > sd[large][ema] + sd[small][ema]
                  and mean[large][ema] - mean[large][pre] > sd[large][ema] + sd[large][pre])  # fmt: skip
        out.append(
            f"- Wu & Johnson's claim (EMA most wrong mid-training at large batch, PreciseBN "
            f"stable): {'consistent with' if agrees else 'not seen in'} these numbers: EMA "
            f"m=0.1 mean |gap| {mean[large][ema]:.1f} +- {sd[large][ema]:.1f} at batch {large} vs "
            f"{mean[small][ema]:.1f} +- {sd[small][ema]:.1f} at batch {small}; PreciseBN (1024 "
            f"samples) {mean[large][pre]:.1f} +- {sd[large][pre]:.1f} at batch {large} ({seeds} "
            "seeds; 'consistent' needs each difference beyond the two seed sds together)."
        )
    final = df[(df.step == df.steps)]
    for part, x in (("depth", "depth"), ("length", "epochs")):
        sub = final[final.part == part]
        if sub.empty:
            continue
        g = sub.groupby(["label", x]).gap.agg(["mean", "std"]).reset_index()
        lo, hi = (int(v) for v in (sub[x].min(), sub[x].max()))
        cells = []
        for label in ("ema m=0.1", "ema m=0.01", "cumulative", "precise 1024"):
            row = g[g.label == label].set_index(x)
            if lo in row.index and hi in row.index:
                cells.append(f"{label} {row.loc[lo, 'mean']:+.1f} +- {row.loc[lo, 'std']:.1f} at "
                             f"{lo} -> {row.loc[hi, 'mean']:+.1f} +- {row.loc[hi, 'std']:.1f} at {hi}")  # fmt: skip
        what = "BN layers of the resnet" if part == "depth" else "training epochs of the cnn"
        out.append(f"- End of training, by {what}: accuracy minus population, "
                   + "; ".join(cells) + " points.")  # fmt: skip
        if part == "depth":
            err = sub[sub.label == "ema m=0.1"].groupby(x).var_error.mean()
            out.append("- The EMA (m=0.1) variance error, mean over layers, by depth: "
                       + ", ".join(f"{int(d)}: {e:.3f}" for d, e in err.items()) + ".")  # fmt: skip
    return out


def analyse(df):
    df = prepare(df)
    figures = []
    if (df.part == "during").any():
        figures.append(("during_training.png", _during_figure(df)))
    if (df.part != "during").any():
        figures.append(("final_gaps.png", _final_figure(df)))
    final = df[df.step == df.steps]
    table = final.pivot_table(index=["part", "network", "batch_size", "epochs"], columns="label",
                              values="acc")  # fmt: skip
    table = table[[c for c in SHOWN if c in table.columns]]
    cost = df.drop_duplicates("job_key").groupby(["part", "model"])[
        ["train_seconds", "checkpoint_seconds"]].mean()  # fmt: skip
    body = "\n\n".join([
        "## Findings", "\n".join(_findings(df)),
        "Gaps are paired: each estimator's accuracy minus the population statistics' "
        "accuracy on the same network at the same step, so the networks' own seed spread "
        "cancels.",
        "## During training", "![during training](during_training.png)",
        "## At the end of training: depth and training length", "![final gaps](final_gaps.png)",
        "### Test accuracy (%) at the end of training", markdown_table(table, "{:.1f}", index=True),
        "### Seconds per run (mean): training, and scoring the checkpoints",
        markdown_table(cost, "{:.2f}", index=True),
        "## Method",
        f"MNIST-1D, {df.seed.nunique()} seed(s). (a) CNN at training batch sizes "
        f"{sorted(int(b) for b in df[df.part == 'during'].batch_size.unique())}, every "
        "estimator scored at "
        f"{len(CHECKPOINTS)} checkpoints (5%-95% of the steps) and at the end; each "
        "checkpoint's population statistics are the exact statistics of that checkpoint's "
        "network over the training set, and scoring a checkpoint does not change training "
        "(tested bitwise). (b) Residual CNN (stem conv, then basic blocks of two conv-BN "
        f"layers with identity skips) at batch size {DEPTH_BATCH} by number of BN layers, "
        f"and the plain CNN at batch size {DEPTH_BATCH} by number of epochs. PreciseBN: 1024 "
        "samples, or 'all': the training set in whole recompute batches of the training "
        f"batch size ({precise_used(df)}); total variance. Learning rate 0.05 x batch/64 (capped at 0.4), 1 warm-up epoch, cosine.",
    ])  # fmt: skip
    return body, figures


STUDY = Study(
    name="training-dynamics",
    title="Estimators during training and with depth",
    presets={
        "quick": lambda: jobs(epochs=10, seeds=2, depths=[4, 8, 16, 32], lengths=[2, 5, 10]),
        "full": lambda: jobs(epochs=40, seeds=3, depths=[4, 8, 16, 32], lengths=[5, 10, 20, 40]),
    },
    analyse=analyse,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
