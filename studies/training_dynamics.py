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
import pandas as pd

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Cell, Finding, cells, render
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, single
from bnbench.stats import METHOD, compare, paired_gap
from bnbench.study import Study, main, presets_by_dataset
from bnbench.sweep import train_jobs

MOMENTA = [0.01, 0.1, 0.3]
ESTIMATORS = ["ema", "ema_debiased", "cumulative", "precise", "population"]
CHECKPOINTS = [round(0.05 * i, 2) for i in range(1, 20)]  # 5%, 10%, ..., 95%
SMALL, LARGE, DEPTH_BATCH = 16, 512, 64


def jobs(options, epochs, seeds, depths, lengths, checkpoints=CHECKPOINTS):
    dataset = options["dataset"]
    cnn, resnet = models_for(dataset, "cnn", "resnet")
    common = {"dataset": dataset, "bn_momenta": MOMENTA, "estimators": ESTIMATORS,
              "precise_samples": [1024, 4000]}  # fmt: skip
    seeds = list(range(seeds))
    during = train_jobs({**common, "model": cnn, "epochs": epochs, "eval_every": checkpoints},
                        batch_size=[SMALL, LARGE], seed=seeds)  # fmt: skip
    deep = train_jobs({**common, "model": resnet, "epochs": epochs, "batch_size": DEPTH_BATCH},
                      depth=depths, seed=seeds)  # fmt: skip
    long = train_jobs({**common, "model": cnn, "batch_size": DEPTH_BATCH},
                      epochs=lengths, seed=seeds)  # fmt: skip
    return during + deep + long


#: per dataset and preset; 3 seeds at least, the fewest a verdict is given from
PRESETS = {
    "mnist1d": {
        "quick": {"epochs": 10, "seeds": 3, "depths": [4, 8, 16, 32], "lengths": [2, 5, 10]},
        "full": {"epochs": 40, "seeds": 3, "depths": [4, 8, 16, 32], "lengths": [5, 10, 20, 40]},
    },
    "mnist": {  # scoring a checkpoint of the image CNN costs seconds: fewer of them
        "quick": {"epochs": 2, "seeds": 3, "depths": [4, 8], "lengths": [1, 2],
                  "checkpoints": [0.2, 0.35, 0.5, 0.65, 0.8]},
        "full": {"epochs": 8, "seeds": 3, "depths": [4, 8, 16], "lengths": [2, 4, 8],
                 "checkpoints": [round(0.1 * i, 1) for i in range(1, 10)]},
    },
}  # fmt: skip


def _label(row):
    if row.estimator in ("ema", "ema_debiased"):
        return f"{row.estimator} m={row.momentum:g}"
    if row.estimator == "precise":  # "all": the training set in whole recompute batches
        if row.precise_samples >= row.train_size:
            return "precise all"
        return f"precise {int(row.precise_samples_used)}"  # the count actually forwarded
    return row.estimator


def prepare(df):
    df = df[df.test_accuracy.notna() & (df.corruption == "none")].copy()
    df = df[(df.estimator != "precise") | (df.aggregation == "total_variance")]
    df["label"] = [_label(r) for r in df.itertuples()]
    df["acc"] = 100 * df["test_accuracy"]
    df["progress"] = df["step"] / df["steps"]
    # paired with the same network at the same step: the seeds' own spread cancels
    df["gap"] = paired_gap(df, "acc", df.estimator == "population", on=("step",))
    df["part"] = np.where(df.model.isin(["resnet", "resnet2d"]), "depth",
                          np.where(df.batch_size == DEPTH_BATCH, "length", "during"))  # fmt: skip
    df["network"] = [f"{m}, {int(d)} BN layers" if m.startswith("resnet") else m
                     for m, d in zip(df.model, df.depth, strict=True)]  # fmt: skip
    return df


SHOWN = ["population", "precise 1024", "precise all", "ema m=0.01", "ema m=0.1", "ema m=0.3",
         "ema_debiased m=0.1", "cumulative"]  # fmt: skip


def _network(df, depth=False):
    """The name of the network that ran: the resnet of the depth part (``depth=True``) or
    the CNN of the others (e.g. ``cnn2d`` on MNIST); the MNIST-1D name if it did not run."""
    rows = df[(df.part == "depth") == depth]
    return next(iter(rows.model.unique()), "resnet" if depth else "cnn")


def _during_figure(df):
    sub = df[(df.part == "during") & df.label.isin(SHOWN)]
    model = _network(df)
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
            axes[i, j].set_title(
                f"{model}, batch size {bs}: {ylabel.split(' (')[0]} during training"
            )
        axes[1, j].set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    return fig


def _final_figure(df):
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), squeeze=False, layout="constrained")
    panels = [("depth", "depth", f"BN layers ({_network(df, True)} depth)"),
              ("length", "epochs", f"training epochs ({_network(df)})")]  # fmt: skip
    for ax, (part, x, xlabel) in zip(axes[0], panels, strict=True):
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
    """Per run and estimator: the mean signed gap (points, estimator minus the same
    checkpoint's population statistics) over the checkpoints between 20% and 80% of
    training."""
    sub = df[(df.part == "during") & (df.batch_size == bs) & df.progress.between(0.2, 0.8)]
    return sub.groupby(["label", "job_key", "seed"], as_index=False).gap.mean()


def precise_used(df):
    """The samples 'precise all' actually forwarded, per training batch size."""
    part = df[df.label == "precise all"].drop_duplicates("batch_size")
    return ", ".join(f"{int(r.precise_samples_used)} at batch {int(r.batch_size)}"
                     for r in part.sort_values("batch_size").itertuples()) or "not run"  # fmt: skip


def _findings(df):
    out = []
    common = {"dataset": single(df, "dataset"), "baseline": "population"}
    sizes = sorted(int(b) for b in df[df.part == "during"].batch_size.unique())
    cnn, resnet = _network(df), _network(df, depth=True)
    mid = {bs: _mid_training(df, bs) for bs in sizes}
    shown = ("ema m=0.1", "ema m=0.01", "precise 1024", "cumulative")
    for label in shown:
        parts = [m[m.label == label].assign(batch_size=bs) for bs, m in mid.items()]
        part = pd.concat(parts) if parts else pd.DataFrame()
        if part.empty or part.batch_size.nunique() < len(sizes):
            continue
        diffs = compare(part.rename(columns={"gap": "gain"}), "gain", by=["batch_size"])
        out.append(Finding(
            "mid-training-gap", f"{cnn}, {label}", "mean gap to the same checkpoint's population "
            "statistics over the checkpoints at 20-80% of training, by training batch size",
            cells(diffs, lambda k: f"batch {k[0]}", ["batch_size"]), method=label, model=cnn,
            **common,
        ))  # fmt: skip
    if len(sizes) == 2:
        small, large = sizes
        ema, pre = "ema m=0.1", "precise 1024"
        by_seed = {bs: m.pivot_table(index="seed", columns="label", values="gap")
                   for bs, m in mid.items()}  # fmt: skip
        if all({ema, pre} <= set(t.columns) for t in by_seed.values()):
            rows = pd.DataFrame({
                "large minus small batch, EMA": by_seed[large][ema] - by_seed[small][ema],
                f"EMA minus PreciseBN at batch {large}": by_seed[large][ema] - by_seed[large][pre],
            }).dropna().reset_index().melt(id_vars="seed", var_name="contrast", value_name="gain")  # fmt: skip
            diffs = compare(rows.assign(job_key=rows.seed), "gain", by=["contrast"])
            agrees = all(d.verdict == "hurts" for d in diffs.values())
            out.append(Finding(
                "wu-johnson-mid-training", cnn, "Wu & Johnson's claim (EMA statistics most "
                "wrong mid-training at a large batch, PreciseBN stable), as contrasts of the "
                "mid-training gaps (paired by seed)",
                cells(diffs, lambda k: k[0], ["contrast"]),
                summary=("Consistent with these numbers" if agrees else
                         "Not seen as clearly in these numbers"),
                method=ema, model=cnn, **common,
            ))  # fmt: skip
    final = df[(df.step == df.steps)]
    for part, x in (("depth", "depth"), ("length", "epochs")):
        sub = final[final.part == part]
        if sub.empty:
            continue
        what = f"BN layers of the {resnet}" if part == "depth" else f"training epochs of the {cnn}"
        for label in ("ema m=0.1", "ema m=0.01", "cumulative", "precise 1024"):
            at = sub[sub.label == label]
            if at.empty:
                continue
            diffs = compare(at.rename(columns={"gap": "gain"}), "gain", by=[x])
            out.append(Finding(
                f"final-gap-by-{part}", f"end of training, {label}", f"accuracy minus the "
                f"population statistics', by {what}",
                cells(diffs, lambda k: f"{int(k[0])}", [x]), method=label,
                model=resnet if part == "depth" else cnn, **common,
            ))  # fmt: skip
        if part == "depth":
            err = sub[sub.label == "ema m=0.1"].groupby(x).var_error.mean()
            out.append(Finding(
                "ema-var-error-by-depth", resnet, "the EMA (m=0.1) variance error (RMS log "
                "variance ratio, mean over layers), by depth",
                [Cell(f"{int(d)}", value=float(e), condition={"depth": int(d)})
                 for d, e in err.items()], unit="", digits=3, method="ema m=0.1", model=resnet,
                **common,
            ))  # fmt: skip
    return out


def analyse(df):
    df = prepare(df)
    found = _findings(df)
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
        "## Findings", render(found),
        "Gaps are paired: each estimator's accuracy minus the population statistics' "
        "accuracy on the same network at the same step, so the networks' own seed spread "
        "cancels.",
        "## During training", "![during training](during_training.png)",
        "## At the end of training: depth and training length", "![final gaps](final_gaps.png)",
        "### Test accuracy (%) at the end of training", markdown_table(table, "{:.1f}", index=True),
        "### Seconds per run (mean): training, and scoring the checkpoints",
        markdown_table(cost, "{:.2f}", index=True),
        "## Method",
        f"{DESCRIPTIONS.get(single(df, 'dataset'), single(df, 'dataset'))}, "
        f"{df.seed.nunique()} seed(s). (a) CNN at training batch sizes "
        f"{sorted(int(b) for b in df[df.part == 'during'].batch_size.unique())}, every "
        "estimator scored at "
        f"{df[df.part == 'during'].groupby('job_key').step.nunique().max() - 1} checkpoints "
        "and at the end; each "
        "checkpoint's population statistics are the exact statistics of that checkpoint's "
        "network over the training set, and scoring a checkpoint does not change training "
        "(tested bitwise). (b) Residual CNN (stem conv, then basic blocks of two conv-BN "
        f"layers with identity skips) at batch size {DEPTH_BATCH} by number of BN layers, "
        f"and the plain CNN at batch size {DEPTH_BATCH} by number of epochs. PreciseBN: 1024 "
        "samples, or 'all': the training set in whole recompute batches of the training "
        f"batch size ({precise_used(df)}); total variance; other counts are labelled with the "
        "samples actually forwarded. Learning rate 0.05 x batch/64 (capped at 0.4), 1 "
        "warm-up epoch, cosine. " + METHOD,
    ])  # fmt: skip
    return body, figures, found


STUDY = Study(
    name="training-dynamics",
    title="Estimators during training and with depth",
    presets=presets_by_dataset(jobs, PRESETS),
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
