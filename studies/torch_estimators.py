"""Every test-time BN estimator on a PyTorch model: the headline comparison, on your network.

A torch model is trained with its own loop while :func:`bnbench.torch.track` feeds the
running estimators (EMA at several momenta, debiased EMA, cumulative) from forward hooks;
then PreciseBN (both aggregations, two sample counts), the exact population statistics
(one pass per BN layer) and prediction-time BN are computed, and each is scored on the
test set (accuracy, NLL, ECE, error against the population statistics). The model and
data come by import path; the default is a small CNN on MNIST-1D:

    python studies/torch_estimators.py --preset quick
    python studies/torch_estimators.py --model mypkg.nets:make_model --data mypkg.nets:load_data

A model factory takes no argument and returns a ``torch.nn.Module`` with BN layers; a
data factory returns ``(x_train, y_train, x_test, y_test)``.
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnbench.findings import Cell, Finding, cells, render
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread
from bnbench.stats import METHOD, compare, correct, paired_gap
from bnbench.study import Study, main

MOMENTA = [0.003, 0.01, 0.03, 0.1, 0.3, 0.9]
HEADLINE = ["ema m=0.1", "ema m=0.01", "ema_debiased m=0.01", "cumulative", "precise all total",
            "precise all mean-var", "population", "test_batch 128"]  # fmt: skip


def arguments(parser):
    parser.add_argument(
        "--model",
        default="default",
        help="model factory 'package.module:factory' (default: a small CNN)",
    )
    parser.add_argument("--data", default="default",
                        help="data factory 'package.module:factory' (default: MNIST-1D)")  # fmt: skip


def jobs(options, batch_sizes, seeds, epochs):
    try:
        from bnbench.torch import jobs as torch_jobs
    except ImportError as err:
        raise ValueError(
            f"this study needs PyTorch: pip install 'bnbench[torch]' ({err})"
        ) from err
    for name in ("model", "data"):  # a wrong path fails here, not in every run
        if options[name] != "default":
            torch_jobs.load_factory(options[name])
    return torch_jobs.jobs(
        model=[options["model"]], data=[options["data"]], batch_size=batch_sizes,
        seed=list(range(seeds)), epochs=[epochs], momenta=[MOMENTA],
        precise_samples=[[256, 0]], test_batch_sizes=[[16, 128]],
    )  # fmt: skip


def _precise_count(row):
    """The sample count PreciseBN was asked for ("all": the whole training set in whole
    batches); runs without ``precise_request`` are labelled by the samples used."""
    asked = getattr(row, "precise_request", np.nan)
    if asked == asked:  # not NaN
        return "all" if asked == 0 or asked >= row.train_size else f"{int(asked)}"
    return "all" if row.precise_samples >= row.train_size else f"{int(row.precise_samples)}"


def _label(row):
    e = row.estimator
    if e in ("ema", "ema_debiased"):
        return f"{e} m={row.momentum:g}"
    if e == "precise":
        agg = "total" if row.aggregation == "total_variance" else "mean-var"
        return f"precise {_precise_count(row)} {agg}"
    if e == "test_batch":
        return f"test_batch {int(row.test_batch_size)}"
    return e


def _cost_label(row):
    """What one timing covers: the hooks' total (every momentum, one per running
    estimator), one PreciseBN pass per sample count (both aggregations), the evaluation
    at one test batch size, or the population passes."""
    e = row.estimator
    if e == "precise":
        return f"precise {_precise_count(row)}"
    if e == "test_batch":
        return f"test_batch {int(row.test_batch_size)}"
    return e


def _sort_key(setting):
    name, _, rest = setting.partition(" ")
    number = rest.split("=")[-1].split()[0] if rest else ""
    try:
        return (name, float(number), rest)
    except ValueError:
        return (name, float("inf"), rest)


def prepare(df):
    df = df[df.test_accuracy.notna()].copy()
    df["acc"] = 100 * df["test_accuracy"]
    df["setting"] = [_label(r) for r in df.itertuples()]
    df["cost_item"] = [_cost_label(r) for r in df.itertuples()]
    df["gain"] = paired_gap(df, "acc", df.setting == "population")
    return df


def _by_batch(df, setting, common, fid, claim, method=None):
    part = df[df.setting == setting]
    if part.empty:
        return []
    diffs = compare(part, "gain", by=["batch_size"])
    return [Finding(fid, "", claim, cells(diffs, lambda k: f"{int(k[0])}", ["batch_size"]),
                    method=method or setting, **common)]  # fmt: skip


def _findings(df):
    out = []
    common = {"dataset": str(df.data.iloc[0]), "model": str(df.model.iloc[0]),
              "baseline": "population"}  # fmt: skip
    pop = df[df.setting == "population"].groupby("batch_size").acc.mean()
    out += _by_batch(df, "ema m=0.1", common, "ema-default-vs-population",
                     "PyTorch's default EMA (momentum 0.1) minus the population statistics (its "
                     f"exact statistics over the training set: {pop.min():.1f}% to "
                     f"{pop.max():.1f}%), by training batch size")  # fmt: skip
    emas = sorted({s for s in df.setting if s.startswith("ema m=")},
                  key=lambda s: float(s.split("=")[1]))  # fmt: skip
    if emas:
        family = correct({(s, k[0]): d for s in emas for k, d in compare(
            df[df.setting == s], "gain", by=["batch_size"], correction=None).items()})  # fmt: skip
        worst, safe = [], []
        for s in emas:
            mine = {k: d for k, d in family.items() if k[0] == s}
            (_, b), d = min(mine.items(), key=lambda kv: kv[1].mean)
            worst.append(Cell(f"{s.split()[1]} (worst at batch {int(b)})", d,
                              condition={"momentum": float(s.split("=")[1]), "batch_size": int(b)}))  # fmt: skip
            if not any(x.verdict == "hurts" for x in mine.values()):
                safe.append(s.split("=")[1])
        out.append(Finding(
            "ema-momenta-vs-population", "", "every EMA momentum against the population "
            "statistics at its worst training batch size", worst,
            summary="Momenta with no clear loss at any batch size: " + (", ".join(safe) or "none"),
            method="ema", **common,
        ))  # fmt: skip
    out += _by_batch(df, "cumulative", common, "cumulative-vs-population", "the cumulative "
                     "average (PyTorch momentum=None) minus the population statistics, by "
                     "training batch size")  # fmt: skip
    pooled = (f"n counts networks: {df.batch_size.nunique()} training batch sizes x "
              f"{df.seed.nunique()} seeds")  # fmt: skip
    precise = df[df.estimator == "precise"]
    for n in sorted({s.split()[1] for s in precise.setting}, key=lambda n: (n != "all", n)):
        t, mv = (df[df.setting == f"precise {n} {a}"] for a in ("total", "mean-var"))
        if len(t) and len(mv):
            both = pd.concat({"t": t.groupby("job_key").var_error.mean(),
                              "mv": mv.groupby("job_key").var_error.mean()}, axis=1).dropna()  # fmt: skip
            both = both.assign(gain=both.mv - both.t).reset_index()
            d = compare(both, "gain")[()]
            out.append(Finding(
                "precise-total-vs-mean-var", f"PreciseBN over {n} samples", "variance error of "
                "the mean of batch variances (old fvcore, swa_utils.update_bn) minus that of "
                "fvcore's current total variance (positive: the total variance is closer to "
                f"the population statistics; {t.var_error.mean():.4f} vs "
                f"{mv.var_error.mean():.4f})", [Cell(f"every batch size ({pooled})", d)],
                unit="RMS log-variance error", digits=4, method="precise total",
                **{**common, "baseline": "precise mean-var"},
            ))  # fmt: skip
    tb = sorted(int(s.split()[1]) for s in set(df.setting) if s.startswith("test_batch "))
    if tb:
        diffs = compare(df[df.setting.isin([f"test_batch {b}" for b in tb])], "gain",
                        by=["test_batch_size"])  # fmt: skip
        out.append(Finding(
            "test-batch-vs-population", "", "prediction-time BN (each test batch with its own "
            "statistics) minus the population statistics, by test batch size, over every "
            f"training batch size ({pooled})", cells(diffs, lambda k: f"B={int(k[0])}", ["test_batch_size"]),
            method="test_batch", **common,
        ))  # fmt: skip
    if {"ema m=0.1", "running_buffers"} <= set(df.setting):
        a = df[df.setting == "ema m=0.1"].set_index("job_key").var_error
        b = df[df.setting == "running_buffers"].set_index("job_key").var_error
        gap = float(np.abs(a - b.reindex(a.index)).max())
        out.append(Finding("hooks-reproduce-buffers", "Check", "the hooks' EMA at momentum 0.1 "
                           "reproduces the model's own running buffers (momentum 0.1): largest "
                           f"difference in variance error {gap:.2g}", unit=""))  # fmt: skip
    runs = df.drop_duplicates("job_key")
    frac = (100 * runs.hook_seconds / runs.train_seconds).groupby(runs.batch_size).median()
    out.append(Finding(
        "hook-share", "Cost", "share of the training loop's time spent in the tracking hooks "
        f"({len(MOMENTA)} momenta x 3 estimators; `python -m bnbench.torch.overhead` times the "
        "loop with and without them), median by batch size",
        [Cell(f"{int(b)}", value=float(f), condition={"batch_size": int(b)}) for b, f in frac.items()],
        unit="%", digits=0,
        summary=f"The population statistics cost {int(runs.bn_layers.iloc[0])} passes (one per "
        "BN layer)",
    ))  # fmt: skip
    return out


def analyse(df):
    df = prepare(df)
    seeds = df.seed.nunique()
    found = _findings(df)
    figures = []
    chosen = [s for s in HEADLINE if s in set(df.setting)]
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    summary = mean_and_spread(df[df.setting.isin(chosen)], ["setting", "batch_size"], "acc")
    summary["order"] = summary.setting.map({s: i for i, s in enumerate(chosen)})
    lines_with_spread(ax, summary.sort_values("order"), "batch_size", "setting")
    ax.set_title("test accuracy vs training batch size (band: +-1 sd over seeds)")
    ax.set_xlabel("training batch size")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    figures.append(("accuracy_vs_batch_size.png", fig))

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    err = mean_and_spread(df[df.estimator == "ema"], ["batch_size", "momentum"], "var_error")
    lines_with_spread(ax, err, "momentum", "batch_size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("EMA variance error against the population statistics")
    ax.set_xlabel("EMA momentum (PyTorch convention)")
    ax.set_ylabel("RMS |log(var / var_population)|")
    ax.legend(title="batch size", fontsize=8)
    figures.append(("ema_error_vs_momentum.png", fig))

    acc = mean_and_spread(df, ["setting", "batch_size"], "acc").pivot_table(
        index="setting", columns="batch_size", values="mean")  # fmt: skip
    order = chosen + sorted((s for s in acc.index if s not in chosen), key=_sort_key)
    errors = df.groupby(["setting", "batch_size"]).var_error.mean().unstack()
    runs = df.drop_duplicates("job_key")
    cost = df.drop_duplicates(["job_key", "cost_item"])
    cost = cost.groupby(["cost_item", "batch_size"]).estimator_seconds.mean().unstack()
    cost = cost.loc[sorted(cost.index, key=_sort_key)].rename_axis("estimator")
    model, data = df.model.iloc[0], df.data.iloc[0]
    body = "\n\n".join([
        "## Findings", render(found),
        "## Test accuracy", "![accuracy vs batch size](accuracy_vs_batch_size.png)",
        "Mean test accuracy (%) over seeds, by training batch size:",
        markdown_table(acc.loc[order], "{:.1f}", index=True),
        "## How far each estimate is from the population statistics",
        "![ema error](ema_error_vs_momentum.png)",
        "RMS over channels of |log(var / var_population)|, mean over BN layers and seeds:",
        markdown_table(errors.loc[[s for s in order if s in errors.index]].dropna(how="all"),
                       "{:.4f}", index=True),
        "## What each estimator costs",
        "Seconds per run, by training batch size: the running estimators' time is the hooks' "
        "total over training (shared by every momentum); precise and population are their "
        "extra passes (one per sample count; the two aggregations share it); test_batch B is "
        "the evaluation at test batch size B. Mean training time per run: "
        + ", ".join(f"{int(b)}: {s:.1f} s" for b, s in
                    runs.groupby("batch_size").train_seconds.mean().items()) + ".",
        markdown_table(cost, "{:.3g}", index=True),
        "## Method",
        f"Model `{model}`, data `{data}` ('default': a 4-BN-layer CNN on MNIST-1D, "
        f"bnbench.torch.jobs.default_model; {int(runs.train_size.iloc[0])} train / "
        f"{int(runs.test_size.iloc[0])} test examples), {int(runs.bn_layers.iloc[0])} BN layers, "
        f"{seeds} seed(s), {int(runs.epochs.iloc[0])} epochs of SGD (momentum 0.9, weight "
        "decay 5e-4, lr 0.05 x batch/64 capped at 0.4, cosine decay), PyTorch on the CPU. The "
        "running estimators are fed by bnbench.torch.track's forward hooks (unbiased batch "
        "variance); 'running_buffers' is the model's own running_mean/var. PreciseBN forwards "
        "256 or all training samples in training mode in shuffled whole batches of the training "
        "batch size (a ragged last batch is left out); "
        "'total' is fvcore's current aggregation, 'mean-var' the mean of batch variances. "
        "'population' is the exact statistics of the final network over the training set, "
        "layer by layer, every upstream BN in inference mode. Prediction-time BN ('test_batch B') "
        "normalises each test batch with its own statistics; the test set is shuffled (seeded "
        "by run seed and B) and cut into batches of exactly B, the last one being the last B "
        "shuffled examples and predicting only those not yet predicted, so every prediction "
        "comes from a batch of exactly B (bnbench.evaluate.exact_batches, as in the NumPy "
        "studies). " + METHOD,
    ])  # fmt: skip
    return body, figures, found


STUDY = Study(
    name="torch-estimators",
    title="Test-time BN estimators on a PyTorch model",
    presets={
        "quick": lambda o: jobs(o, [8, 32, 128], seeds=3, epochs=6),
        "full": lambda o: jobs(o, [4, 8, 16, 32, 64, 128, 256], seeds=5, epochs=20),
    },
    analyse=analyse,
    arguments=arguments,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
