"""The seed question: what if BN simply uses the test batch's own statistics?

Prediction-time BN (Nado et al. 2020): accuracy when BN normalises each test batch with
its own statistics, against the test batch size (1 to the whole test set), with iid and
class-sorted test batches, compared with running estimates (EMA, PreciseBN) and the
exact population statistics of the same network.

    python studies/prediction_time_bn.py --preset quick
"""

import sys

import matplotlib.pyplot as plt

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Finding, cells, render
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, single
from bnbench.stats import METHOD, compare, holds_from, paired_gap
from bnbench.study import Study, main, presets_by_dataset
from bnbench.sweep import train_jobs

TEST_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]


def jobs(options, epochs, seeds):
    dataset = options["dataset"]
    common = {
        "dataset": dataset,
        "epochs": epochs,
        "batch_size": 64,
        "bn_momenta": [0.1],
        "estimators": ["ema", "precise", "population", "test_batch"],
        "test_batch_sizes": TEST_BATCH_SIZES,
        "test_orders": ["iid", "sorted"],
    }
    return train_jobs(common, model=models_for(dataset, "cnn", "mlp"), seed=list(range(seeds)))


#: per dataset and preset (MNIST's networks cost more per epoch)
PRESETS = {
    "mnist1d": {"quick": {"epochs": 10, "seeds": 3}, "full": {"epochs": 40, "seeds": 5}},
    "mnist": {"quick": {"epochs": 5, "seeds": 3}, "full": {"epochs": 15, "seeds": 5}},
}


def analyse(df):
    df = df.copy()
    df["acc"] = 100 * df["test_accuracy"]
    models = sorted(df.model.unique())
    seeds = df.seed.nunique()
    tb = df[(df.estimator == "test_batch") & df.acc.notna()].copy()
    tb["test_batch_size"] = tb["test_batch_size"].astype(int)
    curves = mean_and_spread(tb, ["model", "test_order", "test_batch_size"], "acc")
    refs = mean_and_spread(df[df.estimator.isin(["population", "ema", "precise"])],
                           ["model", "estimator"], "acc")  # fmt: skip

    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        lines_with_spread(ax, curves[curves.model == model], "test_batch_size", "test_order")
        for r in refs[refs.model == model].itertuples():
            ax.axhline(r.mean, ls="--", lw=1, color={"population": "k", "ema": "tab:red",
                       "precise": "tab:green"}[r.estimator], label=f"{r.estimator} ({r.mean:.1f}%)")  # fmt: skip
        ax.set_title(f"{model}: BN with test-batch statistics (band: +-1 sd over seeds)")
        ax.set_xlabel("test batch size")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
    figures = [("test_batch_size.png", fig)]

    found = []
    dataset = single(df, "dataset")
    scored = df[df.acc.notna()].copy()
    scored["gain"] = paired_gap(scored, "acc", scored.estimator == "population")
    for model in models:
        m = scored[(scored.model == model) & (scored.estimator == "test_batch")]
        common = {"dataset": dataset, "model": model, "method": "test_batch"}
        iid = compare(m[m.test_order == "iid"], "gain", by=["test_batch_size"])
        pop = refs[(refs.model == model) & (refs.estimator == "population")]["mean"].iloc[0]
        from_b = holds_from({k[0]: d.within(1.0) for k, d in iid.items()})
        found.append(Finding(
            "test-batch-iid-vs-population", model, "BN normalising each iid test batch with its "
            f"own statistics minus the population statistics ({pop:.1f}%), by test batch size",
            cells(iid, lambda k: f"B={int(k[0])}", ["test_batch_size"]),
            summary=(f"It is confidently within 1 point of the population statistics from test "
                     f"batch size {int(from_b)} on" if from_b is not None else
                     "At no test batch size is it confidently within 1 point of the population "
                     "statistics"), baseline="population", **common,
        ))  # fmt: skip
        sorted_gap = m.pivot_table(index=["job_key", "test_batch_size"], columns="test_order",
                                   values="acc").dropna().reset_index()  # fmt: skip
        if "sorted" in sorted_gap and "iid" in sorted_gap:
            sorted_gap["gain"] = sorted_gap["sorted"] - sorted_gap["iid"]
            small = sorted_gap[sorted_gap.test_batch_size <= 128]
            diffs = compare(small, "gain", by=["test_batch_size"])
            found.append(Finding(
                "test-batch-sorted-vs-iid", model, "class-sorted minus iid test batches, by test "
                "batch size", cells(diffs, lambda k: f"B={int(k[0])}", ["test_batch_size"]),
                summary="A prediction then depends on which other examples share its batch",
                baseline="test_batch iid", **{**common, "method": "test_batch sorted"},
            ))  # fmt: skip
    skipped = df[(df.estimator == "test_batch") & df.acc.isna()]
    if len(skipped):
        cases = sorted({(r.model, int(r.test_batch_size)) for r in skipped.itertuples()})
        found.append(Finding("not-measurable", "", "Not measurable: " + ", ".join(
            f"{m} at test batch size {b}" for m, b in cases)
            + " (one value per channel: BN in training mode is undefined there)", unit=""))  # fmt: skip
    table = curves.pivot_table(index=["model", "test_order"], columns="test_batch_size",
                               values="mean")  # fmt: skip
    body = "\n\n".join([
        "## Findings", render(found),
        "![test batch size](test_batch_size.png)",
        "## Test accuracy (%) by test batch size", markdown_table(table, "{:.1f}", index=True),
        "## Running estimates on the same networks", markdown_table(refs.round(2), "{:.2f}"),
        "## Method",
        f"{DESCRIPTIONS.get(dataset, dataset)}, training batch size 64, "
        f"{int(df.epochs.iloc[0])} epochs, {seeds} seed(s). "
        f"Every test example is predicted in a batch of exactly the stated size, cut from "
        f"the shuffled (iid) or label-sorted test set of {int(df.test_size.iloc[0])} "
        "examples (where the size does not divide the test set, the last batch overlaps the "
        "one before it and predicts only the examples not yet predicted); BN normalises each "
        "batch with its own statistics. 'Within 1 point from B' means: at B and at every "
        "larger B the interval's lower end is above -1 point. " + METHOD,
    ])  # fmt: skip
    return body, figures, found


STUDY = Study(
    name="prediction-time-bn",
    title="BN with test-batch statistics: accuracy against test batch size",
    presets=presets_by_dataset(jobs, PRESETS),
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
