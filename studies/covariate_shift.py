"""Covariate shift: does "never use test-set statistics" hold when the test data moves?

CNN and MLP trained on clean MNIST-1D, scored on MNIST-1D-C (every corruption at several
severities, :mod:`bnbench.shift`) with the source statistics (population, EMA) and with
test-time adaptation: AdaBN (exact statistics of the unlabeled shifted test set, or of k
of its samples), prediction-time BN (each test batch with its own statistics), the
source/test-batch prior of Schneider et al. (2020) and an online EMA over the test
stream. One training run serves every corruption, severity and method.

    python studies/covariate_shift.py --preset quick
"""

import sys

import matplotlib.pyplot as plt
import pandas as pd

from bnbench import shift
from bnbench.report import (
    direction,
    lines_with_spread,
    markdown_table,
    mean_and_spread,
    paired_difference,
    per_run_spread,
    verdict,
)
from bnbench.study import Study, main
from bnbench.sweep import train_jobs

#: the test batch size of the figures' per-batch methods and of the tables
HEADLINE_BATCH = 64
#: the prior strength shown in figures (every N is in the tables)
HEADLINE_PRIOR = 16
ESTIMATORS = ["ema", "population", "adabn", "test_batch", "prior", "online_ema"]


def jobs(epochs, seeds, severities, test_batch_sizes, strengths):
    common = {
        "epochs": epochs,
        "batch_size": 64,
        "bn_momenta": [0.1],
        "estimators": ESTIMATORS,
        "corruptions": list(shift.CORRUPTIONS),
        "severities": severities,
        "test_batch_sizes": test_batch_sizes,
        "test_orders": ["iid"],
        "adapt_samples": [16, 64, 256],
        "prior_strengths": strengths,
        "online_momenta": [0.1],
    }
    return train_jobs(common, model=["cnn", "mlp"], seed=list(range(seeds)))


def _method(row):
    e = row.estimator
    if e == "population":
        return "source"
    if e == "ema":
        return f"EMA m={row.momentum:g}"
    if e == "adabn":
        return (
            "AdaBN" if row.adapt_samples == row.test_size else f"AdaBN k={int(row.adapt_samples)}"
        )
    if e == "test_batch":
        return "pred-time BN"
    if e == "prior":
        return f"prior N={row.prior_strength:g}"
    return f"online EMA m={row.momentum:g}"


def _label(method, batch):
    return method if batch != batch else f"{method} B={int(batch)}"


def prepare(df):
    """The scored rows with a ``method`` label, ``B`` (test batch size, NaN for fixed
    statistics), accuracy and ECE in %, and the paired gain over the source statistics
    of the same network on the same test set."""
    df = df[df.test_accuracy.notna()].copy()
    df["method"] = [_method(r) for r in df.itertuples()]
    df["B"] = df["test_batch_size"].astype(float)
    df["label"] = [_label(m, b) for m, b in zip(df.method, df.B, strict=True)]
    df["acc"] = 100 * df["test_accuracy"]
    df["ece"] = 100 * df["test_ece"]
    df["gain"] = paired_difference(df, "acc", df.method == "source", on=("corruption", "severity"))
    return df


def headline_labels(df):
    b, n = HEADLINE_BATCH, HEADLINE_PRIOR
    wanted = ["source", "EMA m=0.1", "AdaBN", "AdaBN k=64", f"pred-time BN B={b}",
              f"prior N={n} B={b}", f"online EMA m=0.1 B={b}"]  # fmt: skip
    return [w for w in wanted if w in set(df.label)]


def _severity_figure(df, model, value, ylabel):
    sub = df[(df.model == model) & df.label.isin(headline_labels(df))]
    clean = sub[sub.corruption == "none"]
    corruptions = [c for c in shift.CORRUPTIONS if c in set(sub.corruption)]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False, layout="constrained")
    for ax, corruption in zip(axes.flat, corruptions, strict=False):
        part = sub[sub.corruption == corruption]
        both = pd.concat([part, clean.assign(corruption=corruption)])  # severity 0 = clean
        curves = mean_and_spread(both, ["label", "severity"], value)
        curves["order"] = curves.label.map({k: i for i, k in enumerate(headline_labels(df))})
        lines_with_spread(ax, curves.sort_values("order"), "severity", "label", logx=False)
        ax.set_title(f"{model}: {corruption}")
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=7)
    return fig


def _batch_figure(df, model, severity):
    sub = df[(df.model == model)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), squeeze=False, layout="constrained")
    for ax, (title, part) in zip(axes[0], [
        ("clean test set", sub[sub.corruption == "none"]),
        (f"severity {severity}, mean over corruptions",
         sub[(sub.corruption != "none") & (sub.severity == severity)]),
    ], strict=True):  # fmt: skip
        # mean over corruptions per run first, then spread over seeds
        per_run = part.groupby(["job_key", "method", "B"], dropna=False).acc.mean().reset_index()
        batched = per_run[per_run.B.notna()]
        lines_with_spread(ax, mean_and_spread(batched, ["method", "B"], "acc"), "B", "method")
        for method, color in (("source", "k"), ("AdaBN", "tab:purple")):
            level = per_run[per_run.method == method].acc.mean()
            ax.axhline(level, color=color, ls="--", lw=1, label=f"{method} ({level:.1f}%)")
        ax.set_title(f"{model}: {title}")
        ax.set_xlabel("test batch size B")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
    return fig


def _summary(df, model):
    """Per method: clean accuracy, mean accuracy over every corruption and severity
    ("mCE"-style), its paired gain over source and the mean ECE under shift."""
    sub = df[df.model == model]
    shifted = sub[sub.corruption != "none"]
    per_run = shifted.groupby(["label", "job_key"]).agg(acc=("acc", "mean"), gain=("gain", "mean"),
                                                        ece=("ece", "mean"))  # fmt: skip
    table = per_run.groupby("label").agg(
        shifted_acc=("acc", "mean"), gain=("gain", "mean"), gain_sd=("gain", "std"),
        ece=("ece", "mean"),
    )  # fmt: skip
    table.insert(0, "clean_acc", sub[sub.corruption == "none"].groupby("label").acc.mean())
    table = table.sort_values("shifted_acc", ascending=False)
    table.columns = ["clean acc (%)", "mean acc under shift (%)", "gain over source (points)",
                     "gain sd", "mean ECE under shift (%)"]  # fmt: skip
    return table


def _findings(df, model, seeds):
    sub = df[df.model == model]
    top = int(sub.severity.max())
    out = []

    def paired(part):
        return per_run_spread(part, "gain")

    clean = sub[sub.corruption == "none"]
    tb = clean[clean.method == "pred-time BN"]
    if len(tb):
        cells = [f"B={int(b)}: {verdict(*paired(tb[tb.B == b]))}" for b in sorted(tb.B.unique())]
        out.append(
            f"- **{model}, clean test set**: prediction-time BN against the source "
            f"statistics, by test batch size: {'; '.join(cells)}."
        )
    for method in ("AdaBN", f"pred-time BN B={HEADLINE_BATCH}"):
        at = sub[(sub.label == method) & (sub.severity == top) & (sub.corruption != "none")]
        if not len(at):
            continue
        per = {
            c: paired(at[at.corruption == c]) for c in shift.CORRUPTIONS if c in set(at.corruption)
        }
        sign = {c: direction(m, s) for c, (m, s) in per.items()}
        helps = [f"{c} ({per[c][0]:+.1f})" for c in per if sign[c] > 0]
        hurts = [f"{c} ({per[c][0]:+.1f})" for c in per if sign[c] < 0]
        noise = [c for c in per if sign[c] == 0]
        out.append(
            f"- **{model}, severity {top}**: {method} against the source statistics helps on "
            f"{len(helps)} of {len(per)} corruptions ({', '.join(helps) or 'none'}), hurts on "
            f"{len(hurts)} ({', '.join(hurts) or 'none'}), within seed noise on "
            f"{', '.join(noise) or 'none'} (paired difference in points, {seeds} seeds)."
        )
    shifted = sub[(sub.corruption != "none") & (sub.severity == top)]
    tb = shifted[shifted.method == "pred-time BN"]
    if len(tb):
        by_b = {int(b): paired(tb[tb.B == b]) for b in sorted(tb.B.unique())}
        good = [b for b, (m, s) in by_b.items() if direction(m, s) > 0]
        out.append(
            f"- **{model}, severity {top}, mean over corruptions**: prediction-time BN minus "
            "source by test batch size: "
            + "; ".join(f"B={b}: {m:+.1f} +- {s:.1f}" for b, (m, s) in by_b.items())
            + (f" points; it helps from B={min(good)}." if good else " points; it helps at no B.")
        )
        pri = shifted[shifted.method.str.startswith("prior")]
        if len(pri):
            best = pri.groupby(["B", "method"]).acc.mean().reset_index()
            cells = []
            for b in sorted(best.B.unique()):
                row = best[best.B == b].sort_values("acc").iloc[-1]
                tb_acc = tb[tb.B == b].acc.mean()
                versus = f"{tb_acc:.1f}%" if tb_acc == tb_acc else "undefined"
                cells.append(f"B={int(b)}: {row.method} {row.acc:.1f}% vs {versus}")
            out.append(
                f"- **{model}, severity {top}**: the best prior strength of the grid per test "
                "batch size, against prediction-time BN (mean accuracy over corruptions): "
                + "; ".join(cells)
                + "."
            )
    ece = shifted.groupby("label").ece.mean()
    if {"source", "AdaBN"} <= set(ece.index):
        out.append(
            f"- **{model}, severity {top}**: mean ECE {ece['source']:.1f}% with the source "
            f"statistics, {ece['AdaBN']:.1f}% with AdaBN"
            + (f", {ece[f'pred-time BN B={HEADLINE_BATCH}']:.1f}% with prediction-time BN at "
               f"B={HEADLINE_BATCH}" if f"pred-time BN B={HEADLINE_BATCH}" in ece else "")
            + "."
        )  # fmt: skip
    return out


def analyse(df):
    failed = df[df.error.notna()]  # evaluations that could not run, with their reason
    cases = sorted(
        {(r.model, r.estimator, r.test_batch_size, r.error) for r in failed.itertuples()}
    )
    undefined = ("Not measurable, so left out: " + "; ".join(
        f"{m} {e}" + (f" at B={int(b)}" if b == b else "") + f" ({why})"
        for m, e, b, why in cases) + "." if cases else "")  # fmt: skip
    diverged = df[df.error.isna() & df.test_accuracy.isna()]
    if len(diverged):  # non-finite scores (a diverged network): say so, never drop silently
        undefined += f" {len(diverged)} evaluation(s) gave non-finite scores and are left out."
    df = prepare(df)
    models = sorted(df.model.unique())
    seeds = df.seed.nunique()
    top = int(df.severity.max())
    figures, findings, sections = [], [], []
    for model in models:
        figures += [
            (f"accuracy_vs_severity_{model}.png",
             _severity_figure(df, model, "acc", "test accuracy (%)")),
            (f"ece_vs_severity_{model}.png", _severity_figure(df, model, "ece", "ECE (%)")),
            (f"batch_size_{model}.png", _batch_figure(df, model, top)),
        ]  # fmt: skip
        findings += _findings(df, model, seeds)
        tables = []
        for severity in sorted({3, top} & set(df.severity.unique())):
            part = df[(df.model == model) & (df.severity == severity)
                      & df.label.isin(headline_labels(df))]  # fmt: skip
            t = part.pivot_table(index="corruption", columns="label", values="acc")
            t = t[[c for c in headline_labels(df) if c in t.columns]]
            t.loc["mean"] = t.mean()
            tables.append(f"#### severity {severity}: test accuracy (%)\n\n"
                          + markdown_table(t, "{:.1f}", index=True))  # fmt: skip
        sections += [
            f"### {model}",
            f"![accuracy vs severity](accuracy_vs_severity_{model}.png)",
            f"![ECE vs severity](ece_vs_severity_{model}.png)",
            f"![batch size](batch_size_{model}.png)",
            *tables,
            "#### Every method: clean accuracy and the mean over every corruption and "
            "severity (mCE-style summary)\n\n" + markdown_table(_summary(df, model), "{:.2f}",
                                                                  index=True),
        ]  # fmt: skip
    claim = (
        "The forum answer says BN at test time must use the training population statistics, "
        "since test-set statistics 'would defeat the purpose'. The findings below test it: "
        "on the clean, iid test set the source statistics are the reference, and each "
        "corrupted set measures whether statistics re-estimated on the test data do better."
    )
    body = "\n\n".join([
        "## Findings", claim, "\n".join(findings),
        "Verdicts compare each method with the source statistics of the *same* network on "
        "the same test set (paired over seeds): 'helps' or 'hurts' when the mean difference "
        "is more than one standard deviation over seeds from zero.",
        "## Results", *sections,
        "## Corruptions (MNIST-1D-C)",
        markdown_table(pd.DataFrame({"corruption": list(shift.CORRUPTIONS),
                                     "what it does": list(shift.CORRUPTIONS.values())})),
        "## Method",
        f"MNIST-1D, training batch size 64, {int(df.epochs.iloc[0])} epochs, {seeds} seed(s) per "
        f"model. Test set of {int(df.test_size.iloc[0])} examples, corrupted at severities "
        f"{sorted(int(s) for s in df.severity.unique() if s)} (0 = clean). 'source' is the exact "
        "population statistics of the final network over the training set; AdaBN the same "
        "computation over the unlabeled corrupted test set (k: over k of its samples); "
        "prediction-time BN normalises each test batch of exactly B iid examples with its own "
        "statistics; 'prior N' mixes source and batch statistics with weights N/(N+B) and "
        "B/(N+B) (Schneider et al. 2020); the online EMA starts at the source statistics and "
        "predicts each batch after updating on it. ECE: 15 equal-width confidence bins.",
        undefined,
    ])  # fmt: skip
    return body, figures


STUDY = Study(
    name="covariate-shift",
    title="Covariate shift: test-time BN statistics on corrupted MNIST-1D (MNIST-1D-C)",
    presets={
        "quick": lambda: jobs(10, 3, [1, 3, 5], [8, 64, 1000], [4, 16, 64]),
        "full": lambda: jobs(
            40, 5, [1, 2, 3, 4, 5], [1, 4, 16, 64, 256, 1000], [1, 4, 16, 64, 256]
        ),
    },
    analyse=analyse,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
