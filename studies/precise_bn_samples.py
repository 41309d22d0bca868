"""PreciseBN: accuracy and statistics error against the number of samples it uses.

After training, PreciseBN forwards K training samples in training mode and aggregates the
batch statistics. How many samples are enough, does the recompute batch size matter, and
does the total variance (mean of batch variances *plus* variance of batch means: current
fvcore ``update_bn_stats``) beat the mean of batch variances alone (fvcore before
2021-05-17, and ``torch.optim.swa_utils.update_bn``)?

    python studies/precise_bn_samples.py --preset quick
"""

import sys

import matplotlib.pyplot as plt

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Finding, cells, render
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, single
from bnbench.stats import METHOD, compare, holds_from
from bnbench.study import Study, main, presets_by_dataset
from bnbench.sweep import train_jobs

SAMPLES = [32, 64, 128, 256, 512, 1024, 2048, 4000]
RECOMPUTE_BATCH = [8, 32, 128]


def jobs(options, epochs, seeds):
    dataset = options["dataset"]
    common = {
        "dataset": dataset,
        "epochs": epochs,
        "batch_size": 64,
        "bn_momenta": [0.1],
        "estimators": ["ema", "precise", "population"],
        "precise_samples": SAMPLES,
        "precise_batch_sizes": RECOMPUTE_BATCH,
        "precise_aggregations": ["total_variance", "mean_of_batch_variances"],
    }
    return train_jobs(common, model=models_for(dataset, "cnn", "mlp"), seed=list(range(seeds)))


#: per dataset and preset (MNIST's networks cost more per epoch)
PRESETS = {
    "mnist1d": {"quick": {"epochs": 10, "seeds": 3}, "full": {"epochs": 40, "seeds": 3}},
    "mnist": {"quick": {"epochs": 5, "seeds": 3}, "full": {"epochs": 15, "seeds": 3}},
}


def analyse(df):
    df = df.copy()
    df["acc"] = 100 * df["test_accuracy"]
    models = sorted(df.model.unique())
    seeds = df.seed.nunique()
    pre = df[(df.estimator == "precise") & df.acc.notna()].copy()
    # whole recompute batches only: plot the samples actually forwarded
    pre["precise_samples"] = pre["precise_samples_used"].astype(int)
    pre["setting"] = [f"batch {int(r.precise_batch_size)}, "
                      + ("total var" if r.aggregation == "total_variance" else "mean of batch vars")
                      for r in pre.itertuples()]  # fmt: skip
    key = ["model", "setting", "precise_samples"]
    acc = mean_and_spread(pre, key, "acc")
    # Paired with the same network's population accuracy: the seed-to-seed spread of the
    # networks themselves (about a point) would otherwise hide the estimator's effect.
    pop_acc = df[df.estimator == "population"].set_index("job_key")["acc"]
    pre["gap"] = pre["acc"] - pre["job_key"].map(pop_acc)
    gap = mean_and_spread(pre, key, "gap")
    err = mean_and_spread(pre, key, "var_error")
    pop = mean_and_spread(df[df.estimator == "population"], ["model"], "acc").set_index("model")

    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 9), squeeze=False,
                             layout="constrained")  # fmt: skip
    for j, model in enumerate(models):
        lines_with_spread(axes[0, j], gap[gap.model == model], "precise_samples", "setting")
        axes[0, j].axhline(0, color="k", ls="--", lw=1, label="population (same network)")
        axes[0, j].set_title(f"{model}: PreciseBN accuracy minus population accuracy")
        axes[0, j].set_ylabel("test accuracy difference (points)")
        lines_with_spread(axes[1, j], err[err.model == model], "precise_samples", "setting")
        axes[1, j].set_yscale("log")
        axes[1, j].set_title(f"{model}: variance error against population")
        axes[1, j].set_ylabel("RMS |log(var / var_population)|")
        for ax in axes[:, j]:
            ax.set_xlabel("samples forwarded (K)")
        axes[0, j].legend(fontsize=7)
    figures = [("precise_samples.png", fig)]

    found = []
    dataset = single(df, "dataset")
    for model in models:
        part = pre[pre.model == model]
        common = {"dataset": dataset, "model": model, "baseline": "population"}
        target = pop.loc[model, "mean"]
        for bs in sorted(part.precise_batch_size.unique()):
            tv = part[(part.precise_batch_size == bs) & (part.aggregation == "total_variance")]
            diffs = compare(tv, "gap", by=["precise_samples"])
            enough = holds_from({k[0]: d.within(0.5) for k, d in diffs.items()})
            found.append(Finding(
                "precise-vs-population", f"{model}, recompute batch {int(bs)}",
                f"PreciseBN (total variance, fvcore) minus the population statistics "
                f"({target:.1f}%), by samples forwarded",
                cells(diffs, lambda k: f"{int(k[0])}", ["precise_samples"]),
                summary=(f"It is confidently within 0.5 points from {int(enough)} samples on"
                         if enough is not None else
                         "At no sample count is it confidently within 0.5 points"),
                method=f"precise total_variance batch {int(bs)}", **common,
            ))  # fmt: skip
        # the two aggregations of the same pass: which is closer to the population statistics
        most = part.groupby("precise_batch_size").precise_samples.transform("max")
        at = part[part.precise_samples == most]
        wide = at.pivot_table(index=["job_key", "precise_batch_size"], columns="aggregation",
                              values="var_error").dropna().reset_index()  # fmt: skip
        if {"total_variance", "mean_of_batch_variances"} <= set(wide.columns):
            # positive: the total variance has the smaller error
            wide["gain"] = wide["mean_of_batch_variances"] - wide["total_variance"]
            used = at.groupby("precise_batch_size").precise_samples.max()
            diffs = compare(wide, "gain", by=["precise_batch_size"])
            found.append(Finding(
                "precise-total-vs-mean-var", model, "variance error of the mean of batch "
                "variances minus that of the total variance (positive: the total variance is "
                "closer to the population statistics), at the most samples, by recompute batch",
                cells(diffs, lambda k, used=used: f"batch {int(k[0])} ({int(used[k[0]])} samples)",
                      ["precise_batch_size"]),
                unit="RMS log-variance error", digits=3, method="precise total_variance",
                baseline="precise mean_of_batch_variances", dataset=dataset, model=model,
            ))  # fmt: skip
    table = acc.pivot_table(index=["model", "setting"], columns="precise_samples",
                            values="mean")  # fmt: skip
    body = "\n\n".join([
        "## Findings", render(found),
        "![precise samples](precise_samples.png)",
        "## Test accuracy (%) by samples forwarded", markdown_table(table, "{:.1f}", index=True),
        "## Method",
        f"{DESCRIPTIONS.get(dataset, dataset)}, training batch size 64, "
        f"{int(df.epochs.iloc[0])} epochs, {seeds} seed(s). "
        "Every PreciseBN setting is computed on the same trained network, from the same "
        "random subset order, in whole recompute batches: the sample counts shown are those "
        "actually forwarded (e.g. 3968 of the 4000 training samples in batches of 128). "
        "'total var' is fvcore's current aggregation exactly (since 2021-05-17: the biased "
        "variance of the union of the batches); 'mean of batch vars' is fvcore's earlier "
        "one and what torch.optim.swa_utils.update_bn computes (the plain mean of the "
        "Bessel-corrected batch variances). Upstream BN "
        "layers run in training mode during the recompute passes (as in fvcore), while the "
        "population target has them in inference mode: deeper layers' statistics differ "
        "between the two, more so for small recompute batches. 'Within 0.5 points from N' "
        "means: at N and at every larger sample count the interval's lower end is above "
        "-0.5 points. " + METHOD,
    ])  # fmt: skip
    return body, figures, found


STUDY = Study(
    name="precise-bn-samples",
    title="PreciseBN: how many samples, which batch size, which aggregation",
    presets=presets_by_dataset(jobs, PRESETS),
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
