"""Statistics across ranks: what each way of merging BN statistics costs as the ranks'
shards become uneven.

A network trained on one process; its population statistics and PreciseBN recomputed as
if 2 ranks held the training data in shards of unequal size (rank 0 holding the fraction
f of rank 1's), merged the ways libraries do (detectron2 NaiveSyncBatchNorm's equal-weight
moments, mmpretrain's PreciseBN hook's mean of per-rank means and variances, rank 0 alone
as with DataParallel or an unsynchronised PreciseBN) and exactly (size-weighted, what
bnbench.torch.precise_statistics and population_statistics do with process_group=).

    python studies/rank_merging.py --preset quick
"""

import sys

import matplotlib.pyplot as plt

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Cell, Finding, render
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, single
from bnbench.study import Study, main, presets_by_dataset
from bnbench.sweep import grid

NAMES = {"size_weighted": "size-weighted (exact)", "equal_moments": "equal-weight moments "
         "(detectron2)", "equal_mean_var": "mean of means and variances (mmpretrain)",
         "rank0": "rank 0 only (DataParallel, no sync)"}  # fmt: skip


def jobs(options, epochs, seeds):
    try:
        import torch  # noqa: F401  (the merging code is shared with the torch adapter)
    except ImportError as err:
        raise ValueError(
            f"this study needs PyTorch: pip install 'bnbench[torch]' ({err})"
        ) from err
    dataset = options["dataset"]
    return [{"kind": "merging", "params": {"dataset": dataset, "epochs": epochs, "batch_size": 64,
                                           "estimators": ["population"], "bn_momenta": [0.1],
                                           **g}}
            for g in grid(model=models_for(dataset, "cnn", "mlp"), seed=list(range(seeds)))]  # fmt: skip


PRESETS = {
    "mnist1d": {"quick": {"epochs": 5, "seeds": 3}, "full": {"epochs": 20, "seeds": 5}},
    "mnist": {"quick": {"epochs": 2, "seeds": 3}, "full": {"epochs": 8, "seeds": 5}},
}


def analyse(df):
    df = df[df.layer == "all"].copy()
    df["scheme_name"] = df.scheme.map(NAMES)
    found, figures = [], []
    dataset = single(df, "dataset")
    models = sorted(df.model.unique())
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 8), squeeze=False,
                             layout="constrained")  # fmt: skip
    for j, model in enumerate(models):
        for i, statistic in enumerate(("population", "precise")):
            part = df[(df.model == model) & (df.statistic == statistic)]
            curves = mean_and_spread(part, ["scheme_name", "fraction"], "var_error")
            lines_with_spread(axes[i, j], curves, "fraction", "scheme_name")
            axes[i, j].set_title(f"{model}: {statistic}, variance error against the exact merge")
            axes[i, j].set_xlabel("rank 0's shard / rank 1's")
            axes[i, j].set_ylabel("RMS log(var / var_exact)")
            at = part[part.fraction == part.fraction.min()].groupby("scheme").var_error.mean()
            found.append(Finding(
                "merging-error", f"{model}, {statistic}", "variance error (RMS log ratio, "
                "mean over layers and seeds) of each merge against the exact statistics of "
                f"the union, rank 0 holding {part.fraction.min():g} of rank 1's data",
                [Cell(NAMES[s], value=float(at[s]), condition={"scheme": s}) for s in NAMES
                 if s in at], unit="", digits=4, dataset=dataset, model=model,
            ))  # fmt: skip
        axes[0, j].legend(fontsize=7)
    figures.append(("merging_errors.png", fig))
    table = df.pivot_table(index=["model", "statistic", "scheme_name"], columns="fraction",
                           values="var_error")  # fmt: skip
    mean_table = df.pivot_table(index=["model", "statistic", "scheme_name"], columns="fraction",
                                values="mean_error")  # fmt: skip
    body = "\n\n".join([
        "## Findings", render(found),
        "![merging errors](merging_errors.png)",
        "## Variance error by unevenness (RMS over channels of log(var / var_exact), mean "
        "over layers and seeds)", markdown_table(table, "{:.4f}", index=True),
        "## Mean error (in exact standard deviations)", markdown_table(mean_table, "{:.4f}",
                                                                       index=True),
        "## Method",
        f"{DESCRIPTIONS.get(dataset, dataset)}, {df.seed.nunique()} seed(s); networks "
        f"trained {int(df.epochs.iloc[0])} epochs on one process, then the training set "
        "(shuffled) split into 2 simulated ranks whose shards have the sizes in the table "
        "(rank 0 holding the fraction f of rank 1's samples), each rank's batches of 32 "
        "aggregated and merged by each scheme (bnbench.torch.distributed); the population "
        "statistics are merged layer by layer, each upstream layer normalising with the "
        "same scheme's merged statistics, as ranks merging that way would. The exact merge "
        "is checked to match the statistics of the union (error ~1e-15) and on two real "
        "gloo processes in tests/test_torch_distributed.py. The errors are deterministic "
        "properties of each merge on the data, so they are given as values over seeds, "
        "not as verdicts.",
    ])  # fmt: skip
    return body, figures, found


STUDY = Study(
    name="rank-merging",
    title="BN statistics across ranks: size-weighted vs equal-weight vs rank-0 merging",
    presets=presets_by_dataset(jobs, PRESETS),
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
