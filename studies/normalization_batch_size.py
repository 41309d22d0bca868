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

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Cell, Finding, cells, render
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, single
from bnbench.stats import METHOD, compare, paired_gap
from bnbench.study import Study, main, presets_by_dataset
from bnbench.sweep import train_jobs

SGD_BATCH = 512
NBS = [2, 4, 8, 16, 32, 64, 128, 256, 512]
FROZEN = 0.2
VARIANTS = {"bn": {}, "renorm": {"bn": "renorm"}, "frozen": {"frozen_fraction": FROZEN}}


def jobs(options, epochs, variant_epochs, seeds, small_batches, nbs=NBS):
    dataset = options["dataset"]
    models = models_for(dataset, "cnn", "mlp")
    seeds = list(range(seeds))
    nbs = []
    for g in nbs:  # the test batches are of the NBS too
        nbs += train_jobs(
            {"dataset": dataset, "epochs": epochs, "batch_size": SGD_BATCH, "ghost_batch_size": g,
             "test_batch_sizes": [g], "test_orders": ["iid"], "score_train_set": True,
             "bn_momenta": [0.1], "estimators": ["population", "test_batch"]},
            model=models, seed=seeds,
        )  # fmt: skip
    common = {"dataset": dataset, "epochs": variant_epochs, "bn_momenta": [0.01, 0.1],
              "estimators": ["ema", "cumulative", "precise", "population", "test_batch"],
              "test_batch_sizes": [32], "test_orders": ["iid"]}  # fmt: skip
    variants = []
    for extra in VARIANTS.values():
        variants += train_jobs({**common, **extra}, model=models,
                               batch_size=small_batches, seed=seeds)  # fmt: skip
        variants += train_jobs({**common, **extra, "batch_order": "non_iid",
                                "classes_per_batch": 2, "batch_size": 32},
                               model=models, seed=seeds)  # fmt: skip
    return nbs + variants


#: per dataset and preset; 3 seeds at least, the fewest a verdict is given from
PRESETS = {
    "mnist1d": {
        "quick": {"epochs": 10, "variant_epochs": 3, "seeds": 3, "small_batches": [2, 8, 32]},
        "full": {"epochs": 40, "variant_epochs": 10, "seeds": 3, "small_batches": [2, 4, 8, 32]},
    },
    "mnist": {
        "quick": {"epochs": 3, "variant_epochs": 1, "seeds": 3, "small_batches": [4, 32],
                  "nbs": [2, 8, 32, 128, 512]},
        "full": {"epochs": 10, "variant_epochs": 3, "seeds": 3, "small_batches": [2, 4, 8, 32]},
    },
}  # fmt: skip


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
    """Each variant scored with its own test-time statistics: BN with the population
    statistics, Batch Renorm with each layer's own moving mu and sigma (Ioffe 2017's
    inference), FrozenBN with the statistics it was frozen with (those its last phase
    trained with)."""
    own = {"BN": "population", "Batch Renorm": "renorm", "FrozenBN": "frozen"}
    return df[df.label == df.variant.map(own)]


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


def _by_seed(part, label_col, a, b):
    """Per seed: accuracy of ``a`` minus ``b`` (values of ``label_col``), each the mean of
    its runs with that seed: different networks paired by seed (same initialisation and
    batch order), the closest pairing configurations that train separately allow."""
    wide = part.pivot_table(index=["seed", *[c for c in ("model", "batches", "batch_size")
                                              if c in part]],
                            columns=label_col, values="acc").reset_index()  # fmt: skip
    if a not in wide or b not in wide:
        return wide.iloc[:0].assign(gain=[])
    return wide.assign(gain=wide[a] - wide[b], job_key=wide["seed"]).dropna(subset=["gain"])


def _nbs_findings(df, common):
    sub = df[df.part == "nbs"].copy()
    sub["nbs"] = sub.ghost_batch_size.astype(int)
    out = []
    test = sub[sub.split == "test"]
    pop = test[test.estimator == "population"]
    best = pop.groupby("nbs").acc.mean()
    middle = [n for n in best.index if 32 <= n <= 128]
    ends = [n for n in (best.index.min(), best.index.max()) if n not in middle]
    if middle and ends:  # a contrast fixed in advance: Wu & Johnson's optimum, 32-128
        mid = pop[pop.nbs.isin(middle)].groupby("seed").acc.mean()
        rows = []
        for n in ends:
            at = pop[pop.nbs == n].groupby("seed").acc.mean()
            rows += [
                {"job_key": s, "nbs": n, "gain": at[s] - mid[s]} for s in at.index if s in mid
            ]
        diffs = compare(pd.DataFrame(rows), "gain", by=["nbs"])
        u = all(d.verdict == "hurts" for d in diffs.values())
        span = f"{middle[0]}" if len(middle) == 1 else f"{middle[0]}-{middle[-1]}"
        out.append(Finding(
            "nbs-u-shape", common["model"], "test accuracy with population statistics at the "
            f"smallest and largest NBS minus its mean over NBS {span} "
            "(paired by seed)", cells(diffs, lambda k: f"NBS {k[0]}", ["nbs"]),
            summary=(f"Lowest error at NBS {best.idxmax()} ({100 - best.max():.1f}%). "
                     + ("A U-shape, as Wu & Johnson report (their optimum: NBS 32-128)" if u
                        else "Not a clear U-shape here, unlike Wu & Johnson's")),
            method="population at NBS end", baseline=f"population at NBS {span}",
            **common,
        ))  # fmt: skip
    tb = test[test.estimator == "test_batch"][["job_key", "nbs", "acc"]]
    both = pop[["job_key", "nbs", "acc"]].merge(tb, on=["job_key", "nbs"], suffixes=("", "_tb"))
    both["gain"] = both["acc"] - both["acc_tb"]
    diffs = compare(both, "gain", by=["nbs"])
    worse = [str(k[0]) for k, d in diffs.items() if d.verdict == "hurts"]
    out.append(Finding(
        "nbs-population-vs-batch", common["model"], "test accuracy with population statistics "
        "minus with test batches of the NBS, by NBS",
        cells(diffs, lambda k: f"{k[0]}", ["nbs"]),
        summary="Population statistics are clearly worse at " + (
            f"NBS {', '.join(worse)} (Wu & Johnson's train/test inconsistency)" if worse
            else "no NBS"), method="population", baseline="test_batch", **common,
    ))  # fmt: skip
    train = sub[(sub.split == "train") & (sub.estimator == "test_batch")][
        ["job_key", "nbs", "acc"]
    ]
    gen = tb.merge(train, on=["job_key", "nbs"], suffixes=("", "_train"))
    gen["gain"] = gen["acc"] - gen["acc_train"]
    out.append(Finding(
        "nbs-generalization-gap", common["model"], "test minus training accuracy with batch "
        "statistics (the generalization gap, negative), by NBS",
        cells(compare(gen, "gain", by=["nbs"]), lambda k: f"{k[0]}", ["nbs"]),
        method="test split", baseline="train split", **common,
    ))  # fmt: skip
    return out


def _findings(df):
    out = []
    dataset = single(df, "dataset")
    for model in sorted(df[df.part == "nbs"].model.unique()):
        out += _nbs_findings(df[df.model == model], {"dataset": dataset, "model": model})
    variants = natural(df[df.part == "variants"])
    for (model, batches), part in variants.groupby(["model", "batches"]):
        common = {"dataset": dataset, "model": model}
        for variant, fid in (("Batch Renorm", "renorm-vs-bn"), ("FrozenBN", "frozen-vs-bn")):
            paired = _by_seed(part, "variant", variant, "BN")
            if paired.empty:
                continue
            diffs = compare(paired, "gain", by=["batch_size"])
            acc = part.groupby(["variant", "batch_size"]).acc.mean()
            out.append(Finding(
                fid, f"{model}, {batches} training batches", f"{variant} minus BN, each with "
                "its own test-time statistics (paired by seed), by training batch size",
                [Cell(f"batch {int(k[0])}", d, condition={"batch_size": int(k[0])},
                      note=f"{acc.get((variant, k[0]), float('nan')):.1f}% vs "
                           f"{acc.get(('BN', k[0]), float('nan')):.1f}%")
                 for k, d in diffs.items()], method=variant, baseline="BN", **common,
            ))  # fmt: skip
    for variant, own, fid in (("FrozenBN", "frozen", "frozen-own-vs-population"),
                              ("Batch Renorm", "renorm", "renorm-own-vs-population")):  # fmt: skip
        part = df[(df.part == "variants") & (df.variant == variant)]
        part = part[part.label.isin([own, "population"])]
        if part.label.nunique() < 2:
            continue
        part = part.assign(gain=paired_gap(part, "acc", part.label == "population"))
        diffs = compare(part[part.label == own], "gain", by=["model"])
        out.append(Finding(
            fid, variant, f"{variant} networks scored with {'the statistics they were frozen with' if own == 'frozen' else 'their own moving mu and sigma'} "
            "minus with their final population statistics (the same network)",
            cells(diffs, lambda k: k[0], ["model"]), method=own, baseline="population",
            dataset=dataset,
        ))  # fmt: skip
    return out


def analyse(df):
    df = prepare(df)
    found = _findings(df)
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
        "## Findings", render(found), *sections,
        "## Method",
        f"{DESCRIPTIONS.get(single(df, 'dataset'), single(df, 'dataset'))}, "
        f"{df.seed.nunique()} seed(s). (a) SGD batch {SGD_BATCH}, ghost batches of "
        f"the NBS in training; the training error with batch statistics normalises batches "
        "of the NBS of the training set, the test error with batch statistics test batches "
        "of the NBS (iid), the test error with population statistics uses the exact "
        "statistics of the final network over the training set. (b) Batch Renorm as Ioffe's "
        "Algorithm 1 (moving averages of the batch mean and of sigma_B = sqrt(var_B + eps), "
        "momentum 0.01, started at the first batch) with his warm-up (plain BN for 4% of "
        "the steps, rmax to 3 and dmax to 5 by 31% and 19%), scored with its own mu and "
        "sigma; FrozenBN trains the last "
        f"{FROZEN:.0%} of the steps with the exact population statistics of the network at "
        "the switch; non-iid batches hold 2 random classes each. Learning rate 0.05 x "
        "batch/64 (capped at 0.4), 1 warm-up epoch, cosine. Variants train separate "
        "networks, so their comparison is paired by seed (same initialisation and batch "
        "order); comparisons of statistics on one network are paired on that network. "
        + METHOD,
    ])  # fmt: skip
    return body, figures, found


STUDY = Study(
    name="normalization-batch-size",
    title="Normalization batch size, Batch Renorm and FrozenBN",
    presets=presets_by_dataset(jobs, PRESETS),
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
