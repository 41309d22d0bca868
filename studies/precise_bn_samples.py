"""PreciseBN: accuracy and statistics error against the number of samples it uses.

After training, PreciseBN forwards K training samples in training mode and aggregates the
batch statistics. How many samples are enough, does the recompute batch size matter, and
does the total variance (mean of batch variances *plus* variance of batch means: current
fvcore ``update_bn_stats``) beat the mean of batch variances alone (fvcore before 2021,
and ``torch.optim.swa_utils.update_bn``)?

    python studies/precise_bn_samples.py --preset quick
"""

import sys

import matplotlib.pyplot as plt

from bnbench.report import lines_with_spread, markdown_table, mean_and_spread
from bnbench.study import Study, main
from bnbench.sweep import train_jobs

SAMPLES = [32, 64, 128, 256, 512, 1024, 2048, 4000]
RECOMPUTE_BATCH = [8, 32, 128]


def jobs(epochs, seeds):
    common = {
        "epochs": epochs,
        "batch_size": 64,
        "bn_momenta": [0.1],
        "estimators": ["ema", "precise", "population"],
        "precise_samples": SAMPLES,
        "precise_batch_sizes": RECOMPUTE_BATCH,
        "precise_aggregations": ["total_variance", "mean_of_batch_variances"],
    }
    return train_jobs(common, model=["cnn", "mlp"], seed=list(range(seeds)))


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

    findings = []
    for model in models:
        a = acc[acc.model == model]
        best = a[a.setting.str.endswith("total var")]
        target = pop.loc[model, "mean"]
        enough = best[best["mean"] >= target - 0.5].groupby("setting").precise_samples.min()
        findings.append(
            f"- **{model}**: population statistics give {target:.1f}%; PreciseBN (total "
            "variance) comes within 0.5 points from "
            + (
                ", ".join(f"{int(v)} samples ({s.split(',')[0]})" for s, v in enough.items())
                or "no sample count measured"
            )  # fmt: skip
            + f" ({seeds} seeds)."
        )
        e = err[err.model == model]
        e = e.assign(batch=e.setting.str.split(",").str[0])
        for bs in sorted(e.batch.unique(), key=lambda b: int(b.split()[1])):
            part = e[e.batch == bs]  # the most samples this recompute batch forwarded
            most = part.precise_samples.max()
            at = part[part.precise_samples == most].set_index("setting")["mean"]
            total, per_batch = at.get(f"{bs}, total var"), at.get(f"{bs}, mean of batch vars")
            if total is None or per_batch is None:
                continue
            better = "total variance" if total < per_batch else "the mean of batch variances"
            findings.append(
                f"- **{model}**, recompute {bs}, {int(most)} samples: variance error "
                f"{total:.3g} with the total variance against {per_batch:.3g} with the mean "
                f"of batch variances; {better} is closer to the population statistics."
            )
    table = acc.pivot_table(index=["model", "setting"], columns="precise_samples",
                            values="mean")  # fmt: skip
    body = "\n\n".join([
        "## Findings", "\n".join(findings),
        "![precise samples](precise_samples.png)",
        "## Test accuracy (%) by samples forwarded", markdown_table(table, "{:.1f}", index=True),
        "## Method",
        f"MNIST-1D, training batch size 64, {int(df.epochs.iloc[0])} epochs, {seeds} seed(s). "
        "Every PreciseBN setting is computed on the same trained network, from the same "
        "random subset order, in whole recompute batches: the sample counts shown are those "
        "actually forwarded (e.g. 3968 of the 4000 training samples in batches of 128). "
        "'total var' is the current fvcore aggregation; 'mean of batch vars' is fvcore's "
        "pre-2021 one and what torch.optim.swa_utils.update_bn computes. Upstream BN "
        "layers run in training mode during the recompute passes (as in fvcore), while the "
        "population target has them in inference mode: deeper layers' statistics differ "
        "between the two, more so for small recompute batches.",
    ])  # fmt: skip
    return body, figures


STUDY = Study(
    name="precise-bn-samples",
    title="PreciseBN: how many samples, which batch size, which aggregation",
    presets={"quick": lambda: jobs(epochs=10, seeds=3), "full": lambda: jobs(epochs=40, seeds=3)},
    analyse=analyse,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
