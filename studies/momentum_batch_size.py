"""Headline study: test-time BN statistics against EMA momentum and training batch size.

MNIST-1D (or MNIST, ``--dataset mnist``), CNN and MLP, training batch sizes 2 to 512, EMA momenta 0.001 to 0.9, every
estimator, several seeds. One training run per (model, batch size, seed): every momentum
and estimator rides along on it.

    python studies/momentum_batch_size.py --preset quick --out reports/momentum-batch-size
"""

import sys

import matplotlib.pyplot as plt

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Cell, Finding, cells, render
from bnbench.report import (
    heatmap_panel,
    lines_with_spread,
    markdown_table,
    mean_and_spread,
    single,
)
from bnbench.stats import METHOD, compare, correct, paired_gap
from bnbench.study import Study, main, presets_by_dataset
from bnbench.sweep import train_jobs

MOMENTA = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 0.9]
BATCH_SIZES = [2, 4, 8, 16, 32, 64, 128, 256, 512]
COMMON = {"bn_momenta": MOMENTA, "test_batch_sizes": [32, 1000], "test_orders": ["iid"]}


def jobs(options, epochs, seeds, batch_sizes=BATCH_SIZES):
    dataset = options["dataset"]
    return train_jobs(
        {**COMMON, "dataset": dataset, "epochs": epochs},
        model=models_for(dataset, "cnn", "mlp"),
        batch_size=batch_sizes,
        seed=list(range(seeds)),
    )


#: per dataset and preset: MNIST's networks cost more, so fewer epochs (and, quick, fewer
#: batch sizes) keep a preset within its budget (quick about 3 minutes, full about 20)
PRESETS = {
    "mnist1d": {"quick": {"epochs": 10, "seeds": 3}, "full": {"epochs": 40, "seeds": 5}},
    "mnist": {
        "quick": {"epochs": 3, "seeds": 3, "batch_sizes": [4, 16, 64, 256]},
        "full": {"epochs": 10, "seeds": 3},
    },
}


def _label(row):
    if row.estimator in ("ema", "ema_debiased"):
        return f"{row.estimator} m={row.momentum:g}"
    if row.estimator == "test_batch":
        return f"test_batch {int(row.test_batch_size)}"
    return row.estimator


def _findings(m, model, dataset):
    """The headline findings of one model: each a paired difference against the
    population statistics of the same network (bnbench.stats), Holm-corrected over the
    cells of the finding."""
    m = m.assign(gain=paired_gap(m, "acc", m.setting == "population"))
    steps = m.drop_duplicates("batch_size").set_index("batch_size").steps
    common = {"dataset": dataset, "model": model, "baseline": "population"}
    out = []

    def by_batch(setting):
        return compare(m[m.setting == setting], "gain", by=["batch_size"])

    ema = by_batch("ema m=0.1")
    out.append(Finding(
        "ema-default-vs-population", model, "PyTorch's default EMA (momentum 0.1) minus the "
        "population statistics, by training batch size",
        cells(ema, lambda k: f"{k[0]}", ["batch_size"]), method="ema m=0.1",
        summary=_where("it is clearly worse", ema, "hurts"), **common,
    ))  # fmt: skip
    emas = sorted((s for s in m.setting.unique() if s.startswith("ema m=")),
                  key=lambda s: float(s.split("=")[1]))  # fmt: skip
    family = correct({(s, k[0]): d for s in emas for k, d in
                      compare(m[m.setting == s], "gain", by=["batch_size"], correction=None).items()})  # fmt: skip
    worst_cells, safe = [], []
    for s in emas:
        mine = {k: d for k, d in family.items() if k[0] == s}
        (_, bs), worst = min(mine.items(), key=lambda kv: kv[1].mean)
        worst_cells.append(Cell(f"{s.split()[1]} (worst at batch {bs}, {int(steps[bs])} steps)",
                                worst, condition={"momentum": float(s.split("=")[1]),
                                                  "batch_size": int(bs)}))  # fmt: skip
        if not any(d.verdict == "hurts" for d in mine.values()):
            safe.append(s.split("=")[1])
    out.append(Finding(
        "ema-momenta-vs-population", model, "every EMA momentum against the population "
        "statistics at its worst training batch size", worst_cells, method="ema",
        summary=f"Momenta with no clear loss at any of the {m.batch_size.nunique()} batch sizes: "
        + (", ".join(safe) or "none"), **common,
    ))  # fmt: skip
    cum = by_batch("cumulative")
    out.append(Finding(
        "cumulative-vs-population", model, "the cumulative average (PyTorch momentum=None) "
        "minus the population statistics, by training batch size",
        cells(cum, lambda k: f"{k[0]}", ["batch_size"]), method="cumulative",
        summary="It weighs the untrained network's first batches as much as the last",
        **common,
    ))  # fmt: skip
    sizes = sorted(int(s.split()[1]) for s in m.setting.unique() if s.startswith("test_batch "))
    if sizes:
        tb = m[m.setting.str.startswith("test_batch ")]
        family = compare(tb, "gain", by=["setting", "batch_size"])
        tb_cells = []
        for b in sizes:
            mine = {k: d for k, d in family.items() if k[0] == f"test_batch {b}"}
            (_, bs), worst = min(mine.items(), key=lambda kv: kv[1].mean)
            hurts = sum(d.verdict == "hurts" for d in mine.values())
            tb_cells.append(Cell(f"B={b} (worst at training batch {bs})", worst,
                                 condition={"test_batch_size": b, "batch_size": int(bs)},
                                 note=f"clearly worse at {hurts} of {len(mine)} training batch sizes"))  # fmt: skip
        out.append(Finding(
            "test-batch-vs-population", model, "BN on iid test batches of B minus the population "
            "statistics, at the worst training batch size", tb_cells, method="test_batch",
            **common,
        ))  # fmt: skip
    return out


def _where(what, diffs, verdict):
    """``"it is clearly worse at batch sizes 2, 512"`` (or ``"... at none"``)."""
    keys = [str(k[0]) for k, d in diffs.items() if d.verdict == verdict]
    return f"{what} at {'batch sizes ' + ', '.join(keys) if keys else 'no batch size'}"


def analyse(df):
    df = df.copy()
    df["acc"] = 100 * df["test_accuracy"]
    df["setting"] = [_label(r) for r in df.itertuples()]
    models = sorted(df.model.unique())
    figures, tables = [], []

    # Figure 1: accuracy heatmaps over momentum x batch size for the EMAs
    emas = df[df.estimator.isin(["ema", "ema_debiased"])]
    fig, axes = plt.subplots(
        len(models), 2, figsize=(12, 4.8 * len(models)), squeeze=False, layout="constrained"
    )
    for i, model in enumerate(models):
        # one colour scale per model: the CNN's differences would vanish on the MLP's
        pop = df[(df.model == model) & (df.estimator == "population")].acc
        lo, hi = pop.min() - 10, df[df.model == model].acc.max()
        for j, name in enumerate(["ema", "ema_debiased"]):
            sub = emas[(emas.model == model) & (emas.estimator == name)]
            table = sub.pivot_table(index="batch_size", columns="momentum", values="acc")
            im = heatmap_panel(axes[i, j], table, f"{model}: {name}, test accuracy (%)",
                               vmin=lo, vmax=hi)  # fmt: skip
            axes[i, j].set_xlabel("EMA momentum (PyTorch convention)")
            axes[i, j].set_ylabel("training batch size")
        fig.colorbar(im, ax=axes[i, :], shrink=0.8, label=f"{model}: test accuracy (%)")
    figures.append(("accuracy_heatmaps.png", fig))

    # Figure 2: accuracy against batch size per estimator, spread over seeds
    chosen = ["ema m=0.1", "ema m=0.01", "ema_debiased m=0.01", "cumulative", "precise",
              "population", "test_batch 1000"]  # fmt: skip
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    summary = mean_and_spread(
        df[df.setting.isin(chosen)], ["model", "setting", "batch_size"], "acc"
    )
    for ax, model in zip(axes[0], models, strict=True):
        lines_with_spread(ax, summary[summary.model == model], "batch_size", "setting")
        ax.set_title(f"{model}: test accuracy vs training batch size (band: +-1 sd over seeds)")
        ax.set_xlabel("training batch size")
        ax.set_ylabel("test accuracy (%)")
    axes[0, -1].legend(fontsize=8)
    figures.append(("accuracy_vs_batch_size.png", fig))

    # Figure 3: statistics error of the EMA against momentum, per batch size
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    err = mean_and_spread(
        df[df.estimator == "ema"], ["model", "batch_size", "momentum"], "var_error"
    )
    for ax, model in zip(axes[0], models, strict=True):
        sizes = sorted(err.batch_size.unique())
        sub = err[(err.model == model) & err.batch_size.isin(sizes[:: max(1, len(sizes) // 5)])]
        lines_with_spread(ax, sub, "momentum", "batch_size")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{model}: EMA variance error vs momentum")
        ax.set_xlabel("EMA momentum")
        ax.set_ylabel("RMS |log(var / var_population)|")
    axes[0, -1].legend(title="batch size", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figures.append(("ema_error_vs_momentum.png", fig))

    # Findings (paired over seeds, bnbench.stats) and tables
    seeds, dataset = df.seed.nunique(), single(df, "dataset")
    found = []
    for model in models:
        m = df[(df.model == model) & df.acc.notna()].copy()
        found += _findings(m, model, dataset)
        per = mean_and_spread(m, ["setting", "batch_size"], "acc")
        table = per.pivot_table(index="setting", columns="batch_size", values="mean")
        order = [s for s in chosen if s in table.index] + [
            s for s in table.index if s not in chosen and not s.startswith("ema")
        ]
        tables.append(f"### {model}: test accuracy (%) by training batch size\n\n"
                      + markdown_table(table.loc[order], "{:.1f}", index=True))  # fmt: skip

    # Cost of each estimator: one value per run (EMA updates are shared by all momenta)
    per_run = df.drop_duplicates(["job_key", "estimator", "precise_samples"])
    costs = per_run.groupby(["model", "estimator"]).estimator_seconds.mean().unstack(0)
    train_s = df.drop_duplicates("job_key").groupby("model").train_seconds.mean()
    cost_table = costs.copy()
    for model in cost_table.columns:
        cost_table[f"{model} % of training"] = 100 * costs[model] / train_s[model]
    cost_table = cost_table.reset_index()
    cost_md = markdown_table(cost_table, "{:.3g}")

    body = "\n\n".join(
        [
            "## Findings",
            render(found),
            "## Test accuracy over momentum and batch size",
            "![heatmaps](accuracy_heatmaps.png)",
            "![accuracy vs batch size](accuracy_vs_batch_size.png)",
            "## How far each EMA is from the population statistics",
            "![ema error](ema_error_vs_momentum.png)",
            *tables,
            "## What each estimator costs",
            "Extra seconds per training run (mean over runs): EMA and cumulative are the "
            "update time summed over training (one update serves every momentum); precise "
            "and population are their extra forward passes after training; test_batch is one "
            "evaluation pass. Mean training time per run: "
            + ", ".join(f"{m} {s:.1f} s" for m, s in train_s.items())
            + ".",
            cost_md,
            "## Method",
            f"{DESCRIPTIONS.get(dataset, dataset)}, {seeds} seed(s) per cell, "
            f"{int(df.epochs.iloc[0])} epochs of SGD (momentum 0.9, lr 0.05 x batch/64 capped "
            "at 0.4, 1 warm-up epoch, cosine decay, weight decay 5e-4). Every estimator and "
            "momentum is evaluated on the same trained network; 'population' is the exact "
            "statistics of the final network over the training set. Accuracies are means "
            "over seeds. " + METHOD,
        ]
    )
    return body, figures, found


STUDY = Study(
    name="momentum-batch-size",
    title="Test-time BN statistics: EMA momentum x training batch size",
    presets=presets_by_dataset(jobs, PRESETS),
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
