"""Remedies for the train/test gap: normalization batch size, Batch Renorm, FrozenBN.

(a) Wu & Johnson (2021, section 4): at a fixed SGD batch of 512, the batch BN normalises
over (the normalization batch size, NBS, by ghost batches) is varied from 2 to 512 for
the MNIST-1D CNN and MLP, with the training error with batch statistics, the test error
with batch statistics (test batches of the NBS) and the test error with the population
statistics. (b) Plain BN against Batch Renorm (Ioffe 2017) and FrozenBN (the last 20% of
the steps with frozen population statistics) at small training batches and with non-iid
batches (each drawn from 2 classes), scored with every estimator.

    python studies/normalization_batch_size.py --preset quick
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnbench.report import lines_with_spread, markdown_table, mean_and_spread
from bnbench.study import Study, main
from bnbench.sweep import train_jobs

SGD_BATCH = 512
NBS = [2, 4, 8, 16, 32, 64, 128, 256, 512]
FROZEN = 0.2
VARIANTS = {"bn": {}, "renorm": {"bn": "renorm"}, "frozen": {"frozen_fraction": FROZEN}}


def jobs(epochs, variant_epochs, seeds, small_batches):
    seeds = list(range(seeds))
    nbs = []
    for g in NBS:  # the test batches are of the NBS too
        nbs += train_jobs(
            {"epochs": epochs, "batch_size": SGD_BATCH, "ghost_batch_size": g,
             "test_batch_sizes": [g], "test_orders": ["iid"], "score_train_set": True,
             "bn_momenta": [0.1], "estimators": ["population", "test_batch"]},
            model=["cnn", "mlp"], seed=seeds,
        )  # fmt: skip
    common = {"epochs": variant_epochs, "bn_momenta": [0.01, 0.1],
              "estimators": ["ema", "cumulative", "precise", "population", "test_batch"],
              "test_batch_sizes": [32], "test_orders": ["iid"]}  # fmt: skip
    variants = []
    for extra in VARIANTS.values():
        variants += train_jobs({**common, **extra}, model=["cnn", "mlp"],
                               batch_size=small_batches, seed=seeds)  # fmt: skip
        variants += train_jobs({**common, **extra, "batch_order": "non_iid",
                                "classes_per_batch": 2, "batch_size": 32},
                               model=["cnn", "mlp"], seed=seeds)  # fmt: skip
    return nbs + variants


def _variant(row):
    if row.bn == "renorm":
        return "Batch Renorm"
    return "FrozenBN" if row.frozen_fraction > 0 else "BN"


def _estimator(row):
    if row.estimator == "ema":
        return f"ema m={row.momentum:g}"
    if row.estimator == "test_batch":
        return f"test_batch {int(row.test_batch_size)}"
    return row.estimator


def prepare(df):
    df = df[df.test_accuracy.notna() & (df.corruption == "none")].copy()
    df["err_pct"] = 100 * (1 - df["test_accuracy"])
    df["acc"] = 100 * df["test_accuracy"]
    df["part"] = np.where(df.ghost_batch_size.notna(), "nbs", "variants")
    df["variant"] = [_variant(r) for r in df.itertuples()]
    df["label"] = [_estimator(r) for r in df.itertuples()]
    df["batches"] = np.where(df.batch_order == "non_iid", "non-iid (2 classes)", "iid")
    return df


def _nbs_curves(df):
    """Per (model, NBS): the three errors of Wu & Johnson's figure, mean and sd."""
    sub = df[df.part == "nbs"]
    kinds = {
        "train error, batch statistics": (sub.split == "train") & (sub.estimator == "test_batch"),
        "test error, batch statistics": (sub.split == "test") & (sub.estimator == "test_batch"),
        "test error, population statistics": (sub.split == "test") & (sub.estimator == "population"),
    }  # fmt: skip
    parts = [sub[mask].assign(kind=kind) for kind, mask in kinds.items()]
    both = pd.concat(parts)
    both["nbs"] = both.ghost_batch_size.astype(int)
    return mean_and_spread(both, ["model", "kind", "nbs"], "err_pct")


def _nbs_figure(curves):
    models = sorted(curves.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, model in zip(axes[0], models, strict=True):
        lines_with_spread(ax, curves[curves.model == model], "nbs", "kind")
        ax.set_title(
            f"{model}: error against the normalization batch size (SGD batch {SGD_BATCH})"
        )
        ax.set_xlabel("normalization batch size (ghost batch)")
        ax.set_ylabel("error (%)")
        ax.legend(fontsize=8)
    return fig


def natural(df):
    """Each variant scored with its own test-time statistics: the population statistics,
    except FrozenBN's, scored with the statistics it was frozen with (those its last phase
    trained with)."""
    frozen = df.variant == "FrozenBN"
    return df[(~frozen & (df.label == "population")) | (frozen & (df.label == "frozen"))]


def _variants_figure(df):
    sub = natural(df[(df.part == "variants") & (df.batches == "iid")])
    models = sorted(sub.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, model in zip(axes[0], models, strict=True):
        curves = mean_and_spread(sub[sub.model == model], ["variant", "batch_size"], "acc")
        lines_with_spread(ax, curves, "batch_size", "variant")
        ax.set_title(f"{model}: test accuracy (FrozenBN: its frozen statistics)")
        ax.set_xlabel("training batch size")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
    return fig


def _findings(df, curves):
    out = []
    seeds = df.seed.nunique()
    for model in sorted(curves.model.unique()):
        c = curves[curves.model == model].pivot_table(index="nbs", columns="kind", values="mean")
        sd = curves[curves.model == model].pivot_table(index="nbs", columns="kind", values="std")
        col = "test error, population statistics"
        noise = float(sd[col].median()) if col in sd else 0.0
        if col in c:
            best = c[col].idxmin()
            ends = (c[col].iloc[0], c[col].iloc[-1])
            u_shape = ends[0] - c[col].min() > noise and ends[1] - c[col].min() > noise
            out.append(
                f"- **{model}**: test error with population statistics is lowest at NBS {best} "
                f"({c[col].min():.1f}%), against {ends[0]:.1f}% at NBS {c.index[0]} and "
                f"{ends[1]:.1f}% at NBS {c.index[-1]} (median seed sd {noise:.1f}): "
                + ("a U-shape, as Wu & Johnson report (their optimum: NBS 32-128)." if u_shape
                   else "no U-shape beyond the seed spread here, unlike Wu & Johnson's.")
            )  # fmt: skip
        tb, tr = "test error, batch statistics", "train error, batch statistics"
        if tb in c and col in c:
            gap = (c[col] - c[tb]).round(1)
            worse = [int(n) for n, g in gap.items() if g > noise]
            out.append(
                f"- **{model}**: test error with population minus batch statistics, by NBS: "
                + ", ".join(f"{int(n)}: {g:+.1f}" for n, g in gap.items())
                + " points; population statistics are worse beyond the seed spread at "
                + (f"NBS {', '.join(map(str, worse))} (train/test inconsistency)" if worse
                   else "no NBS")
                + "."
            )  # fmt: skip
        if tr in c and tb in c:
            gen = (c[tb] - c[tr]).round(1)
            out.append(
                f"- **{model}**: generalization gap with batch statistics (test minus train "
                "error), by NBS: " + ", ".join(f"{int(n)}: {g:+.1f}" for n, g in gen.items())
                + " points."
            )  # fmt: skip
    sub = natural(df[df.part == "variants"])
    for (model, batches), part in sub.groupby(["model", "batches"]):
        table = mean_and_spread(part, ["variant", "batch_size"], "acc")
        cells = []
        for bs in sorted(table.batch_size.unique()):
            t = table[table.batch_size == bs].set_index("variant")
            cells.append(f"batch {int(bs)}: " + ", ".join(
                f"{v} {t.loc[v, 'mean']:.1f} +- {t.loc[v, 'std']:.1f}" for v in t.index))  # fmt: skip
        out.append(f"- **{model}, {batches} training batches**, test accuracy (%) with each "
                   f"variant's own statistics ({seeds} seeds): " + "; ".join(cells) + ".")  # fmt: skip
    frozen = df[(df.part == "variants") & (df.variant == "FrozenBN")]
    if len(frozen):
        g = frozen.pivot_table(index=["job_key", "model"], columns="label", values="acc")
        if {"frozen", "population"} <= set(g.columns):
            d = (g["frozen"] - g["population"]).groupby("model").agg(["mean", "std"])
            out.append("- FrozenBN networks scored with the statistics they were frozen with, "
                       "minus their final population statistics: " + ", ".join(
                           f"{m} {r['mean']:+.1f} +- {r['std']:.1f} points" for m, r in d.iterrows())
                       + ".")  # fmt: skip
    return out


def analyse(df):
    df = prepare(df)
    figures, sections = [], []
    curves = _nbs_curves(df) if (df.part == "nbs").any() else pd.DataFrame(columns=["model"])
    if len(curves):
        figures.append(("nbs.png", _nbs_figure(curves)))
        table = curves.pivot_table(index=["model", "kind"], columns="nbs", values="mean")
        sections += ["## (a) Normalization batch size", "![nbs](nbs.png)",
                     markdown_table(table, "{:.1f}", index=True)]  # fmt: skip
    if (df.part == "variants").any():
        figures.append(("variants.png", _variants_figure(df)))
        sub = df[df.part == "variants"]
        table = sub.pivot_table(index=["model", "batches", "batch_size", "variant"],
                                columns="label", values="acc")  # fmt: skip
        sections += ["## (b) BN, Batch Renorm and FrozenBN at small and non-iid batches",
                     "![variants](variants.png)",
                     "Test accuracy (%) by estimator (mean over seeds):",
                     markdown_table(table, "{:.1f}", index=True)]  # fmt: skip
    body = "\n\n".join([
        "## Findings", "\n".join(_findings(df, curves)), *sections,
        "## Method",
        f"MNIST-1D, {df.seed.nunique()} seed(s). (a) SGD batch {SGD_BATCH}, ghost batches of "
        f"the NBS in training; the training error with batch statistics normalises batches "
        "of the NBS of the training set, the test error with batch statistics test batches "
        "of the NBS (iid), the test error with population statistics uses the exact "
        "statistics of the final network over the training set. (b) Batch Renorm with "
        "Ioffe's warm-up (plain BN for 4% of the steps, rmax to 3 and dmax to 5 by 31% and "
        f"19%), its running estimates an EMA of momentum 0.01; FrozenBN trains the last "
        f"{FROZEN:.0%} of the steps with the exact population statistics of the network at "
        "the switch; non-iid batches hold 2 random classes each. Learning rate 0.05 x "
        "batch/64 (capped at 0.4), 1 warm-up epoch, cosine.",
    ])  # fmt: skip
    return body, figures


STUDY = Study(
    name="normalization-batch-size",
    title="Normalization batch size, Batch Renorm and FrozenBN",
    presets={
        "quick": lambda: jobs(epochs=10, variant_epochs=3, seeds=2, small_batches=[2, 8, 32]),
        "full": lambda: jobs(epochs=40, variant_epochs=10, seeds=3, small_batches=[2, 4, 8, 32]),
    },
    analyse=analyse,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
