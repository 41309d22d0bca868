"""What :func:`bnbench.torch.diagnosis.diagnose` says: the verdict and the recommendation
(decided from bootstrap intervals, never from point estimates alone), its findings as
data, the terminal table and the report folder."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import evaluate as np_evaluate
from ..findings import Cell, Finding, render, to_json
from ..report import markdown_table, write_report
from . import _core

#: the order of the scores table's columns
COLUMNS = ["estimate", "label", "samples", "test_batch_size", "accuracy", "acc_low", "acc_high",
           "vs_population", "vs_low", "vs_high", "nll", "ece", "mean_error", "var_error",
           "forward_batches", "forward_samples", "seconds"]  # fmt: skip
FIXED = ("buffers", "precise", "population")
FIGURE = "diagnose.png"


@dataclass
class BootstrapFinding(Finding):
    """A :class:`bnbench.findings.Finding` whose differences are paired bootstraps over
    test examples (``n`` examples, not seeds; percentile intervals, not t intervals)."""

    resamples: int = 0

    def evidence(self):
        diffs = self.differences()
        if not diffs:
            return self.unit
        return (
            f"{self.unit}; paired bootstrap over n={diffs[0].n} test examples, "
            f"{self.resamples} resamples, {diffs[0].confidence:.0%} percentile intervals"
        )

    def as_dict(self):
        return {**super().as_dict(), "intervals": self.evidence()}


def layer_errors(stats, reference, layers):
    """Per BN layer: RMS over channels of the mean error (in reference standard deviations),
    of the log variance ratio (:func:`bnbench.evaluate.statistics_error`) and of the error
    of the normalised output, ``sqrt((s/s' - 1)^2 + ((m - m')/s')^2)`` with ``s' =
    sqrt(var + eps)`` (its RMS error on a unit-variance reference activation); worst first."""
    rows = []
    for name, layer in layers.items():
        (m, v), (mr, vr) = ([_core.to_numpy(torch.as_tensor(t)).astype(np.float64) for t in s]
                            for s in (stats[name], reference[name]))  # fmt: skip
        mean_err, var_err = np_evaluate.statistics_error([(m, v)], [(mr, vr)], layer.eps)[0]
        s, s_ = np.sqrt(vr + layer.eps), np.sqrt(v + layer.eps)
        out_err = float(np.sqrt(np.mean((s / s_ - 1) ** 2 + ((mr - m) / s_) ** 2)))
        rows.append({"layer": name, "channels": len(m), "mean_error": mean_err,
                     "var_error": var_err, "output_error": out_err})  # fmt: skip
    df = pd.DataFrame(rows).sort_values("output_error", ascending=False, kind="stable")
    return df.reset_index(drop=True)


def points(d):
    """``"+3.2 [+1.1, +5.0] points"``."""
    return f"{d.mean:+.1f} {d.interval(1)} points"


def _cost(row):
    if row["estimate"] == "buffers":
        return "none"
    if row["estimate"] == "test_batch":
        return "at prediction time"
    batches, seconds = int(row["forward_batches"]), float(row["seconds"])
    if row["estimate"] == "population":
        passes = batches and int(row["forward_samples"] // row["samples"])
        return (f"{passes} pass{'es' if passes != 1 else ''} over the {int(row['samples'])} "
                f"training samples ({batches} forward batches, {seconds:.2f} s)")  # fmt: skip
    return f"{batches} forward batches ({int(row['samples'])} samples, {seconds:.2f} s)"


def _name(row):
    """``"PreciseBN with 1024 samples"``."""
    all_ = (
        "all " if row["forward_samples"] == row["samples"] and row["label"].endswith("all") else ""
    )
    return f"PreciseBN with {all_}{int(row['samples'])} samples"


def verdict(gap, train_gap, residual, margin):
    """What the gaps mean, each clause decided by whether an interval excludes zero."""
    g, t, r = points(gap), points(train_gap), points(residual)
    if gap.low > 0:
        if residual.low > 0:
            return (
                f"The statistics explain part of the eval/train gap: the exact population "
                f"statistics recover {g} over the running buffers, but train mode still "
                f"beats them by {r}; that rest comes from normalising each test batch with "
                f"its own statistics (a shift between training and test data, or batch "
                f"composition), which no fixed estimate from the training data recovers."
            )
        if residual.high < 0:
            return (
                f"The eval/train gap is the statistics: the exact population statistics "
                f"recover {g} over the running buffers and beat train mode too ({r})."
            )
        return (f"Most of the eval/train gap is the statistics: the exact population statistics "
                f"recover {g} over the running buffers, and train mode is not clearly better "
                f"than them ({r}).")  # fmt: skip
    if gap.high < 0:
        head = (f"The statistics are not the cause: the running buffers beat the exact "
                f"population statistics ({g})")  # fmt: skip
    elif -margin < gap.low and gap.high < margin:
        head = (f"The statistics are fine: the exact population statistics and the running "
                f"buffers agree within {margin:g} points ({g})")  # fmt: skip
    else:
        head = (f"These test examples cannot tell whether the statistics matter: the exact "
                f"population statistics are not clearly better than the running buffers ({g}), "
                f"but the interval is wider than {margin:g} points either way")  # fmt: skip
    if train_gap.low > 0:
        return (f"{head}; the gap is elsewhere: train mode (each test batch's own statistics) "
                f"beats eval mode by {t}, which no estimate from the training data recovers "
                f"(a shift between training and test data?).")  # fmt: skip
    if train_gap.high < 0:
        return f"{head}; and eval mode beats train mode ({t})."
    return f"{head}; and train mode is not clearly better either ({t})."


def recommend(df, vs_pop, vs_buffers, gap, margin):
    """``(label, sentence)``: the cheapest fixed estimate (fewest training samples forwarded;
    the population statistics first on a tie) whose accuracy minus the population's has
    its lower interval end above ``-margin``; the population statistics qualify always."""
    fixed = [i for i in range(len(df)) if df["estimate"].iloc[i] in FIXED]
    fixed.sort(
        key=lambda i: (df["forward_samples"].iloc[i], df["estimate"].iloc[i] != "population")
    )
    best = next(
        i for i in fixed if vs_pop[i].within(margin) or df["estimate"].iloc[i] == "population"
    )
    row, label = df.iloc[best], df["label"].iloc[best]
    if row["estimate"] == "buffers":
        return label, (f"Keep the running buffers: their accuracy is within {margin:g} points of "
                       f"the exact population statistics' ({points(vs_pop[best])}), so no extra "
                       f"pass is needed.")  # fmt: skip
    what = (f"the exact population statistics (no cheaper estimate is within {margin:g} points "
            f"of them)" if row["estimate"] == "population" else _name(row))  # fmt: skip
    within = (
        f"; it is the cheapest estimate within {margin:g} points of the exact population "
        f"statistics ({points(vs_pop[best])})"
        if row["estimate"] != "population"
        else ""
    )
    install = (f" Install the chosen statistics with bnbench.torch.load_statistics(model, "
               f"result.statistics[{label!r}]).")  # fmt: skip
    if gap.low > 0:
        return label, (f"Use {what}: it recovers {points(vs_buffers[best])} of the gap of "
                       f"{points(gap)} between the running buffers and the population "
                       f"statistics, at the cost of {_cost(row)}{within}.{install}")  # fmt: skip
    buf = next(i for i in fixed if df["estimate"].iloc[i] == "buffers")
    return label, (
        f"Use {what}, at the cost of {_cost(row)}{within}. The running buffers may do "
        f"as well ({points(vs_pop[buf])} against the population statistics), but "
        f"these test examples cannot show them within {margin:g} points.{install}"
    )


def decide(df, layers, vs_pop, vs_buffers, gaps, settings):
    """``{"verdict", "recommended", "recommendation", "findings"}`` of a diagnosis."""
    said = verdict(gaps["gap"], gaps["train_gap"], gaps["residual"], settings["margin"])
    label, sentence = recommend(df, vs_pop, vs_buffers, gaps["gap"], settings["margin"])
    scope = (f"{settings['model']}, {settings['bn_layers']} BN layers, "
             f"{settings['test_samples']} test examples")  # fmt: skip
    boot = {"scope": scope, "resamples": settings["resamples"]}
    tb = df["label"].iloc[-1]
    others = [i for i in range(len(df)) if df["estimate"].iloc[i] in ("buffers", "precise")]
    top = layers.head(5)
    findings = [
        BootstrapFinding("statistics-gap", claim="Eval-mode accuracy, the exact population "
                         "statistics minus the running buffers",
                         cells=[Cell("population - buffers", gaps["gap"])], summary=said,
                         method="population", baseline="buffers", **boot),
        BootstrapFinding("eval-train-gap", claim=f"Accuracy of {tb} minus eval mode",
                         cells=[Cell("minus the running buffers", gaps["train_gap"]),
                                Cell("minus the population statistics", gaps["residual"])],
                         method="test_batch", **boot),
        BootstrapFinding("estimates", claim="Accuracy of each fixed estimate minus the exact "
                         "population statistics",
                         cells=[Cell(df["label"].iloc[i], vs_pop[i],
                                     condition={"samples": int(df["samples"].iloc[i])})
                                for i in others],
                         summary=f"the cheapest within {settings['margin']:g} points: {label}",
                         baseline="population", **boot),
        Finding("worst-layers", scope, "RMS error of the normalised output with the running "
                "buffers instead of the population statistics, per BN layer, worst first",
                cells=[Cell(r.layer, value=r.output_error, condition={"layer": r.layer},
                            note=f"mean {r.mean_error:.2f} sd, log-var {r.var_error:.2f}")
                       for r in top.itertuples()], unit="RMS", digits=2),
        Finding("recommendation", scope, sentence.rstrip("."), method=label),
    ]  # fmt: skip
    return {"verdict": said, "recommended": label, "recommendation": sentence,
            "findings": findings}  # fmt: skip


def _interval(v, lo, hi, digits=1):
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _display(result):
    """The scores as strings, one row per estimate."""
    rows = []
    for _, r in result.scores.iterrows():
        vs = "-" if r["estimate"] == "population" else (
            f"{r['vs_population']:+.1f} [{r['vs_low']:+.1f}, {r['vs_high']:+.1f}]")  # fmt: skip
        rows.append({"estimate": r["label"], "accuracy %": _interval(r["accuracy"], r["acc_low"],
                     r["acc_high"]), "vs population": vs, "NLL": f"{r['nll']:.3f}",
                     "ECE": f"{r['ece']:.3f}", "cost": _cost(r)})  # fmt: skip
    return rows


def format_table(result):
    """The scores table for a terminal, then the verdict and the recommendation."""
    rows = _display(result)
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(width[c]) for c in cols).rstrip()
    out = [line, "  ".join("-" * width[c] for c in cols)]
    out += ["  ".join(r[c].ljust(width[c]) for c in cols).rstrip() for r in rows]
    conf = result.settings.get("confidence", 0.95)
    out += ["", f"accuracy in %, [{conf:.0%} paired bootstrap interval over "
            f"{result.settings.get('test_samples')} test examples]; vs population in points",
            "", result.verdict, "", result.recommendation]  # fmt: skip
    return "\n".join(out)


def figure(result):
    """Accuracy by estimate with its interval, and the buffers' error per BN layer."""
    import matplotlib.pyplot as plt

    df, layers = result.scores, result.layers
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 0.5 + 0.45 * max(len(df), len(layers), 4))
    )
    y = np.arange(len(df))[::-1]
    left.errorbar(df["accuracy"], y, xerr=[df["accuracy"] - df["acc_low"],
                  df["acc_high"] - df["accuracy"]], fmt="o", capsize=3)  # fmt: skip
    pop = df.loc[df["estimate"] == "population", "accuracy"].iloc[0]
    left.axvline(pop, color="grey", ls="--", lw=1, label="population")
    left.set_yticks(y, df["label"])
    left.set_xlabel(f"test accuracy (%), {result.settings['confidence']:.0%} bootstrap interval")
    left.set_title("accuracy by estimate", fontsize=10)
    left.grid(alpha=0.3)
    y = np.arange(len(layers))[::-1]
    right.barh(y + 0.2, layers["mean_error"], 0.4, label="mean error (sd)")
    right.barh(y - 0.2, layers["var_error"], 0.4, label="log variance ratio (RMS)")
    right.set_yticks(y, layers["layer"])
    right.set_xlabel("running buffers vs population statistics")
    right.set_title("error per BN layer, worst first", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


METHOD = (
    "Every estimate is scored on the same test examples. The running buffers are the model's "
    "own (eval mode); the population statistics are each BN layer's exact statistics over "
    "the training batches with every upstream layer normalising with its own population "
    "statistics (one pass per BN layer); PreciseBN forwards the first K training samples "
    "(whole batches) with frozen weights, BN layers in training mode and dropout off, "
    "aggregated as {aggregation}; train mode normalises each test batch with its own "
    "statistics (dropout off). Intervals are paired percentile bootstraps over the test "
    "examples ({resamples} resamples, seed {seed}): every estimate's accuracy recomputed on "
    "the same resampled indices. A clause of the verdict holds only where its interval "
    "excludes zero; the recommendation is the cheapest fixed estimate whose difference from "
    "the population statistics has its lower end above -{margin:g} points."
)


def write(result, out, command=None):
    """The report folder: report.md/html, the figure, results.csv, layers.csv,
    findings.json and provenance.json (:func:`bnbench.report.write_report`)."""
    s = result.settings
    table = markdown_table(pd.DataFrame(_display(result)))
    body = "\n\n".join([
        f"**Verdict.** {result.verdict}", f"**Recommendation.** {result.recommendation}",
        "## Scores on the test set", table,
        f"Accuracy in %, with {s['confidence']:.0%} paired bootstrap intervals over "
        f"{s['test_samples']} test examples; vs population: points, the same bootstrap.",
        f"![accuracy by estimate and error per layer]({FIGURE})",
        "## Running buffers per BN layer, worst first",
        markdown_table(result.layers, floatfmt="{:.3f}"),
        "## Findings", render(result.findings), "## Method", METHOD.format(**s),
    ])  # fmt: skip
    return write_report(
        out, "Is it the statistics? An eval/train gap diagnosis", body, result.scores,
        [(FIGURE, figure(result))], command, {"diagnose": s},
        {"findings.json": to_json(result.findings, study="diagnose", **{
            k: v for k, v in s.items() if k in ("model", "model_factory", "data_factory")}),
         "layers.csv": result.layers.to_csv(index=False)},
    )  # fmt: skip
