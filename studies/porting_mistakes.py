"""Porting mistakes: what each classic BN convention mix-up costs, measured.

(a) Momentum: Keras' ``momentum=0.99`` weighs the *old* running value, PyTorch's
``momentum`` the *new* batch (:mod:`bnbench.conventions`); written for one and read by
the other, the EMA uses 0.99 where 0.01 was meant (and PyTorch's 0.1 given to Keras is
0.9 in PyTorch terms). (b) Variance: PyTorch feeds its running variance the unbiased
(Bessel-corrected) batch variance, Keras 3 and Flax the biased one; the two differ by the
batch's Bessel factor ``n / (n - 1)`` (``n`` values per channel: 2 at batch 2 for an MLP),
so a running variance of one convention read as the other matters at small batches.
Every EMA rides along on the training run (``bn_momenta``; ``unbiased`` picks the
variance fed), and is scored against the exact population statistics.

    python studies/porting_mistakes.py --preset quick [--dataset mnist]
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnbench import conventions
from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Cell, Finding, cells, render, verdict_lists
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread, single
from bnbench.stats import METHOD, compare
from bnbench.study import Study, main
from bnbench.sweep import train_jobs

#: (written in, read as, value): the two mistakes (each pair also covers its mirror:
#: Keras' 0.9 read by PyTorch, PyTorch's 0.01 read by Keras)
CASES = (("keras3", "pytorch", 0.99), ("pytorch", "keras3", 0.1))
#: input features per dataset, to count each BN layer's values per channel
FEATURES = {"mnist1d": 40, "mnist": 784, "gaussian_mixture": 16}
#: epochs per dataset and preset (batch 2 takes 2000 steps an epoch)
EPOCHS = {"mnist1d": {"quick": 5, "full": 20}, "mnist": {"quick": 1, "full": 4}}


def _in_pytorch(value, framework):
    return conventions.convert_momentum(value, framework, "pytorch")


def case(written_in, read_as, value):
    """``(label, intended, effective)`` momenta in PyTorch's convention."""
    intended = _in_pytorch(value, written_in)
    effective = _in_pytorch(conventions.misread_momentum(value, written_in, read_as), written_in)
    owner = {"keras3": "Keras'", "pytorch": "PyTorch's"}
    reader = {"keras3": "Keras", "pytorch": "PyTorch"}
    label = (f"{owner[written_in]} {value:g} read by {reader[read_as]} (EMA momentum "
             f"{effective:.2g} instead of {intended:.2g})")  # fmt: skip
    return label, intended, effective


def momenta():
    return sorted({round(m, 6) for c in CASES for m in case(*c)[1:]})


def jobs(options, preset, seeds, batch_sizes):
    dataset = options["dataset"]
    common = {"dataset": dataset, "epochs": EPOCHS[dataset][preset], "bn_momenta": momenta(),
              "estimators": ["ema", "population"], "test_batch_sizes": [32]}  # fmt: skip
    return train_jobs(common, model=models_for(dataset, "cnn", "mlp"), batch_size=batch_sizes,
                      unbiased=[True, False], seed=list(range(seeds)))  # fmt: skip


def bessel_factors(dataset, model, batch):
    """``(min, max)`` over BN layers of ``bessel_factor(values per channel)`` at ``batch``."""
    from bnbench.nn import build

    if dataset not in FEATURES:
        return None
    net = build(model, FEATURES[dataset], 10, np.random.default_rng(0))
    net.forward(np.zeros((batch, FEATURES[dataset]), np.float32), "stats")
    f = [conventions.bessel_factor(int(layer.last_batch[2])) for layer in net.bn_layers]
    return min(f), max(f)


def _factor_text(dataset, model, batch):
    f = bessel_factors(dataset, model, int(batch))
    if f is None:
        return ""
    return f"Bessel factor {f[0]:.3f}" + ("" if f[0] == f[1] else f" to {f[1]:.3f} over layers")


def prepare(df):
    df = df[df.test_accuracy.notna()].copy()
    df["acc"] = 100 * df["test_accuracy"]
    df["network"] = [f"{r.model}|{r.batch_size}|{r.seed}" for r in df.itertuples()]
    df["momentum"] = df.momentum.round(6)
    return df


def _wide(df):
    """One row per network: EMA m=0.1 fed the unbiased (``u``) and biased (``b``) variance,
    and the population statistics (``pop``): accuracy and variance error."""
    ema = df[(df.estimator == "ema") & (df.momentum == 0.1)]
    w = ema.pivot_table(index=["network", "model", "batch_size", "seed"], columns="unbiased",
                        values=["acc", "var_error"])  # fmt: skip
    w.columns = [f"{v}_{'u' if u else 'b'}" for v, u in w.columns]
    pop = df[df.estimator == "population"].pivot_table(
        index="network", columns="unbiased", values="acc")  # fmt: skip
    w = w.reset_index().merge(pop.rename(columns={True: "pop", False: "pop_b"}), on="network")
    return w.dropna(subset=["acc_u", "acc_b"])


def _momentum_findings(u, model, common):
    out = []
    part = u[u.model == model]
    for c in CASES:
        label, intended, effective = case(*c)
        base = part[(part.estimator == "ema") & (part.momentum == round(intended, 6))]
        eff = part[(part.estimator == "ema") & (part.momentum == round(effective, 6))]
        both = eff.merge(base[["job_key", "acc"]], on="job_key", suffixes=("", "_intended"))
        both["cost"] = both.acc - both.acc_intended
        pop = part[part.estimator == "population"].groupby("batch_size").acc.mean()
        diffs = compare(both, "cost", by=["batch_size"])
        steps = part.groupby("batch_size").steps.first()
        cs = []
        for (b,), d in diffs.items():
            at = both[both.batch_size == b]
            cs.append(Cell(f"B={int(b)}", d, condition={"batch_size": int(b)},
                           note=f"{at.acc_intended.mean():.1f}% -> {at.acc.mean():.1f}%, "
                           f"population {pop[b]:.1f}%, {int(steps[b])} steps"))  # fmt: skip
        lists = verdict_lists(cs)
        said = {"hurts": "it costs accuracy at", "helps": "the misread momentum does better at",
                "no clear difference": "no clear difference at"}  # fmt: skip
        out.append(Finding(f"momentum-{c[0]}-{c[2]:g}-read-by-{c[1]}", model, f"{label}: the "
                           "misread EMA minus the intended one, same network, by training batch "
                           "size", cs, summary="; ".join(f"{said[v]} {', '.join(lists[v])}"
                                                         for v in said if lists[v]),
                           method=f"ema m={effective:.2g}", baseline=f"ema m={intended:.2g}",
                           **common))  # fmt: skip
    return out


def _bessel_findings(w, model, common, dataset):
    part = w[w.model == model].copy()
    notes = {b: _factor_text(dataset, model, b) for b in sorted(part.batch_size.unique())}
    part["cost"] = part.acc_b - part.acc_u
    diffs = compare(part, "cost", by=["batch_size"], run_key="network")
    cs = [Cell(f"B={int(k[0])}", d, condition={"batch_size": int(k[0])}, note=notes[k[0]])
          for k, d in diffs.items()]  # fmt: skip
    out = [Finding("biased-vs-unbiased-ema", model, "the EMA (m=0.1) fed the biased batch "
                   "variance (Keras 3, Flax) minus the one fed the unbiased variance (PyTorch), "
                   "same network, by training batch size: what a biased running variance read "
                   "as unbiased costs (the reverse mistake: the same gap, sign flipped)", cs,
                   method="ema biased", baseline="ema unbiased", **common)]  # fmt: skip
    long = pd.concat([part.assign(convention="unbiased", gap=part.acc_u - part["pop"]),
                      part.assign(convention="biased", gap=part.acc_b - part["pop"])])  # fmt: skip
    diffs = compare(long, "gap", by=["convention", "batch_size"], run_key="network")
    out.append(Finding("ema-conventions-vs-population", model, "each EMA (m=0.1) minus the "
                       "population statistics, by variance fed and training batch size",
                       cells(diffs, lambda k: f"{k[0]} B={int(k[1])}", ["convention", "batch_size"]),
                       method="ema", baseline="population", **common))  # fmt: skip
    part["closer"] = part.var_error_u - part.var_error_b
    diffs = compare(part, "closer", by=["batch_size"], run_key="network")
    cs = cells(diffs, lambda k: f"B={int(k[0])}", ["batch_size"])
    lists = verdict_lists(cs)
    out.append(Finding("biased-vs-unbiased-var-error", model, "variance error of the unbiased "
                       "EMA minus that of the biased one against the population variance "
                       "(positive: the biased EMA is closer), by training batch size", cs,
                       summary="; ".join(f"{'the biased EMA is closer' if v == 'helps' else 'the unbiased EMA is closer' if v == 'hurts' else 'no clear difference'} at {', '.join(lists[v])}"
                                         for v in ("helps", "hurts", "no clear difference")
                                         if lists[v]),
                       unit="RMS log-variance error", digits=3, method="ema biased",
                       baseline="ema unbiased", **common))  # fmt: skip
    return out


def analyse(df):
    df = prepare(df)
    dataset = single(df, "dataset")
    models = sorted(df.model.unique())
    u = df[df.unbiased.astype(bool)]
    w = _wide(df)
    found = []
    for model in models:
        common = {"dataset": dataset, "model": model}
        found += _momentum_findings(u, model, common)
        found += _bessel_findings(w, model, common, dataset)
    same = int((w["pop"] == w["pop_b"]).sum())
    found.append(Finding("same-network-check", "Check", f"the two runs of each network (unbiased "
                         f"and biased variance fed to the EMAs) train identically: equal population "
                         f"accuracy on {same} of {len(w)} networks", unit=""))  # fmt: skip
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 8.5), squeeze=False,
                             layout="constrained")  # fmt: skip
    for j, model in enumerate(models):
        part = u[u.model == model].assign(
            setting=lambda d: np.where(d.estimator == "population", "population",
                                       "EMA m=" + d.momentum.map("{:g}".format)))  # fmt: skip
        lines_with_spread(axes[0, j], mean_and_spread(part, ["setting", "batch_size"], "acc"),
                          "batch_size", "setting")  # fmt: skip
        axes[0, j].set_title(f"{model}: EMA momentum (PyTorch convention), unbiased variance")
        axes[0, j].set_ylabel("test accuracy (%)")
        sub = w[w.model == model]
        long = pd.concat([sub.assign(s="EMA fed the unbiased variance", e=sub.var_error_u),
                          sub.assign(s="EMA fed the biased variance", e=sub.var_error_b)])  # fmt: skip
        lines_with_spread(axes[1, j], mean_and_spread(long, ["s", "batch_size"], "e"),
                          "batch_size", "s")  # fmt: skip
        axes[1, j].set_yscale("log")
        axes[1, j].set_title(f"{model}: variance error against population (m=0.1)")
        axes[1, j].set_ylabel("RMS |log(var / var_population)|")
        for ax in axes[:, j]:
            ax.set_xlabel("training batch size")
            ax.legend(fontsize=7)
    table = u.assign(setting=np.where(u.estimator == "population", "population",
                                      "m=" + u.momentum.map("{:g}".format)))  # fmt: skip
    table = table.pivot_table(index=["model", "batch_size"], columns="setting", values="acc")
    bessel = w.groupby(["model", "batch_size"])[
        ["acc_u", "acc_b", "var_error_u", "var_error_b"]
    ].mean()
    bessel.columns = [
        "acc unbiased (%)",
        "acc biased (%)",
        "var error unbiased",
        "var error biased",
    ]
    cases = "; ".join(f"{lbl}" for lbl, _, _ in (case(*c) for c in CASES))
    body = "\n\n".join([
        "## Findings", render(found), "![porting mistakes](porting_mistakes.png)",
        "## Test accuracy (%) by EMA momentum (PyTorch convention, unbiased variance)",
        markdown_table(table, "{:.1f}", index=True),
        "## EMA m=0.1 fed the unbiased or the biased batch variance",
        markdown_table(bessel, "{:g}", index=True),
        "## Method",
        f"{DESCRIPTIONS.get(dataset, dataset)}, {int(df.epochs.iloc[0])} epochs, "
        f"{df.seed.nunique()} seed(s), training batch sizes "
        f"{', '.join(str(int(b)) for b in sorted(df.batch_size.unique()))}. The momentum "
        f"mistakes come from bnbench.conventions (misread_momentum, convert_momentum): "
        f"{cases}. Each pair of momenta also stands for its mirror mistake (Keras' 0.9 read by "
        "PyTorch is PyTorch's 0.1 read by Keras; PyTorch's 0.01 read by Keras is Keras' 0.99 "
        "read by PyTorch). Every EMA rides along on the same training run, so a momentum "
        "mistake is scored on the very network the intended momentum is. For the variance, "
        "each network is trained twice, once with the EMAs fed the unbiased and once the "
        "biased batch variance (TrainConfig.unbiased); training itself never reads the "
        "running statistics, so the two runs train the same network (see the check) and are "
        "paired as one. The Bessel factor is n / (n - 1) for n values per channel of a BN "
        "layer's batch (batch size x spatial positions: the MLP's layers see n = B, the "
        "CNN's many more); ghost batches would not raise it, since bnbench's EMAs see the "
        "whole batch's merged statistics. 'population' = the exact statistics of the final "
        "network over the training set. " + METHOD,
    ])  # fmt: skip
    return body, [("porting_mistakes.png", fig)], found


STUDY = Study(
    name="porting-mistakes",
    title="Porting mistakes: BN momentum and variance conventions read the wrong way",
    presets={
        "quick": lambda o: jobs(o, "quick", 3, [2, 16, 128]),
        "full": lambda o: jobs(o, "full", 5, [2, 8, 32, 128, 512]),
    },  # fmt: skip
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
