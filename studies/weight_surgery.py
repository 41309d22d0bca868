"""Weight surgery: which BN statistics after averaging, pruning or quantizing the weights?

A trained network's weights are changed after training: checkpoint averaging (SWA-style,
``torch.optim.swa_utils``), magnitude pruning, 8- and 4-bit weight quantization. Its BN
layers still hold the statistics of the network before. Each surgery is scored with the
stale running buffers, with what ``swa_utils.update_bn`` re-estimates, with PreciseBN at
several sample counts, with nncf's short "forgetting" EMA schedule, and with the exact
population statistics of the post-surgery network, on bnbench networks and on a PyTorch
model (the real ``update_bn`` and ``AveragedModel``). Reports checked: timm#224
(re-estimating BN after averaging "made things worse") and nncf PR #41 (BN adaptation
lifts ResNet-18 at 8-bit activations / 4-bit weights from 49.35% to 66.87%).

    python studies/weight_surgery.py --preset quick [--dataset mnist]
"""

import importlib.util
import sys

import matplotlib.pyplot as plt

from bnbench.data import DESCRIPTIONS, models_for
from bnbench.findings import Cell, Finding, cells, render, verdict_lists
from bnbench.report import lines_with_spread, markdown_table, mean_and_spread
from bnbench.stats import METHOD, compare, holds_from, paired_gap
from bnbench.study import Study, main

#: nncf PR #41: ResNet-18 (ImageNet), 8-bit activations / 4-bit weights, before/after BN adaptation
NNCF = (49.35, 66.87)
NAMES = {"stale": "the stale running buffers (EMA m=0.1 from training)",
         "update_bn": "swa_utils.update_bn (one pass, mean of batch variances)",
         "forget": "nncf's forgetting schedule (5 batches at m=0.9, then 10 at 0.1)"}  # fmt: skip
SAMPLES = [64, 128, 256, 512, 1024, 2048, 4000]


def jobs(options, epochs, seeds, grid, torch_epochs, torch_seeds):
    dataset = options["dataset"]
    out = [{"kind": "surgery", "params": {"dataset": dataset, "model": m, "epochs": epochs,
                                          "batch_size": 64, "seed": s, **grid}}
           for m in models_for(dataset, "cnn", "mlp") for s in range(seeds)]  # fmt: skip
    if importlib.util.find_spec("torch") is not None:  # the PyTorch model on MNIST-1D
        out += [{"kind": "torch_surgery", "params": {"epochs": torch_epochs, "batch_size": 32,
                                                     "seed": s, **grid}}
                for s in range(torch_seeds)]  # fmt: skip
    return out


def _order(label):
    kind, _, rest = label.partition(" ")
    value = float(rest.split("-")[0]) if rest else 0.0
    return (
        ["none", "average", "prune", "quantize"].index(kind),
        -value if kind == "quantize" else value,
    )


def prepare(df):
    df = df[df.test_accuracy.notna()].copy()
    torch_rows = df.framework == "torch"
    df["network"] = df.model.astype(str)
    df.loc[torch_rows, "network"] = "torch " + df.loc[torch_rows, "model"].astype(str)
    df["acc"] = 100 * df["test_accuracy"]
    df["gap"] = paired_gap(df, "acc", df.statistic == "population", on=("surgery_label",))
    df["vs_stale"] = paired_gap(df, "acc", df.statistic == "stale", on=("surgery_label",))
    df["vs_update_bn"] = paired_gap(df, "acc", df.statistic == "update_bn", on=("surgery_label",))
    return df


def _surgery_cells(diffs):
    return sorted(cells(diffs, lambda k: k[0], ["surgery"]), key=lambda c: _order(c.label))


def _verdicts(cs, what="after"):
    lists = verdict_lists(cs)
    return "; ".join(f"{v} {what} {', '.join(lists[v])}" for v in ("helps", "hurts", "no clear difference")
                     if lists[v])  # fmt: skip


def _network_findings(part, common):
    out = []
    for statistic, name in NAMES.items():
        diffs = compare(part[part.statistic == statistic], "gap", by=["surgery_label"])
        cs = _surgery_cells(diffs)
        out.append(Finding(f"{statistic}-vs-population", common["model"], f"{name} minus the "
                           "population statistics of the post-surgery network, by surgery", cs,
                           summary=_verdicts(cs), method=statistic,
                           baseline="population", **common))  # fmt: skip
    diffs = compare(part[part.statistic == "stale"], "vs_update_bn", by=["surgery_label"])
    cs = _surgery_cells(diffs)
    out.append(Finding("stale-vs-update-bn", common["model"], "the stale buffers minus "
                       "update_bn's re-estimate, by surgery", cs, summary=_verdicts(cs),
                       method="stale", baseline="update_bn", **common))  # fmt: skip
    pre = part[part.statistic == "precise"]
    found, most = [], int(pre.samples.max())
    for surgery in sorted(pre.surgery_label.unique(), key=_order):
        diffs = compare(pre[pre.surgery_label == surgery], "gap", by=["samples"])
        enough = holds_from({k[0]: d.within(0.5) for k, d in diffs.items()})
        d = diffs[(enough,)] if enough is not None else diffs[(most,)]
        note = (f"within 0.5 points from {int(enough)} samples" if enough is not None
                else f"not within 0.5 points at any count up to {most}")  # fmt: skip
        found.append(Cell(surgery, d, condition={"surgery": surgery, "samples": int(enough or most)},
                          note=note))  # fmt: skip
    used = int(part[part.statistic == "update_bn"].samples.iloc[0])
    out.append(Finding("precise-enough-samples", common["model"], "PreciseBN (fvcore's total "
                       "variance) minus the population statistics at the fewest samples from which "
                       "it is confidently within 0.5 points (at every larger count too), by surgery",
                       found, summary=f"for comparison, one update_bn pass forwards {used} samples "
                       "and the forgetting schedule "
                       f"{int(part[part.statistic == 'forget'].samples.iloc[0])}",
                       method="precise", baseline="population", **common))  # fmt: skip
    return out


def _mean(part, statistic, surgery):
    return part[(part.statistic == statistic) & (part.surgery_label == surgery)].acc.mean()


def _report_findings(df, nets, dataset):
    out = []
    avg = df[(df.statistic == "update_bn") & (df.surgery == "average")]
    if len(avg):
        diffs = compare(avg, "vs_stale", by=["network", "surgery_label"])
        cs = []
        for (net, surgery), d in sorted(diffs.items(), key=lambda kv: (nets.index(kv[0][0]),
                                                                      _order(kv[0][1]))):  # fmt: skip
            part = df[df.network == net]
            cs.append(Cell(f"{net} {surgery}", d, condition={"network": net, "surgery": surgery},
                           note=f"stale {_mean(part, 'stale', surgery):.1f}%, update_bn "
                           f"{_mean(part, 'update_bn', surgery):.1f}%"))  # fmt: skip
        worse = verdict_lists(cs)["hurts"]
        out.append(Finding("timm-224-average-reestimate", "checkpoint averaging", "update_bn's "
                           "re-estimate minus the stale buffers after averaging the last K "
                           "checkpoints (positive: re-estimation helps)", cs,
                           summary=(f"Re-estimation made things worse on {', '.join(worse)}, as "
                                    "timm#224 found" if worse else "Re-estimation after averaging "
                                    "made things worse nowhere here, unlike timm#224's report: "
                                    + _verdicts(cs, "on")), method="update_bn", baseline="stale",
                           dataset=dataset))  # fmt: skip
    q4 = df[(df.surgery_label == "quantize 4-bit") & (df.statistic == "forget")]
    if len(q4):
        diffs = compare(q4, "vs_stale", by=["network"])
        cs = []
        for (net,), d in sorted(diffs.items(), key=lambda kv: nets.index(kv[0][0])):
            part = df[df.network == net]
            notes = [f"{s} {_mean(part, s, 'quantize 4-bit'):.1f}%" for s in
                     ("stale", "forget", "update_bn", "population")]  # fmt: skip
            notes.append(
                f"unquantized network (population) {_mean(part, 'population', 'none'):.1f}%"
            )
            cs.append(Cell(net, d, condition={"network": net}, note=", ".join(notes)))
        gains = [c.difference.mean for c in cs]
        lost = [_mean(df[df.network == c.label], "stale", "none")
                - _mean(df[df.network == c.label], "stale", "quantize 4-bit") for c in cs]  # fmt: skip
        nncf = NNCF[1] - NNCF[0]
        out.append(Finding("nncf-4bit-recovery", "4-bit weights", "nncf's BN adaptation (the "
                           "forgetting schedule) minus the stale buffers after 4-bit per-channel "
                           "weight quantization (activations in float)", cs,
                           summary=f"in nncf PR #41 BN adaptation lifts ResNet-18 (ImageNet, 4-bit "
                           f"weights, 8-bit activations) by {nncf:+.2f} points ({NNCF[0]}% -> "
                           f"{NNCF[1]}%); here the stale buffers lose {min(lost):.1f} to "
                           f"{max(lost):.1f} points at 4 bits (against the unquantized network's "
                           f"stale buffers) and adaptation recovers {min(gains):+.1f} to "
                           f"{max(gains):+.1f} points: "
                           + ("far less than nncf's, since there is little to recover"
                              if max(gains) < nncf / 2 else "of the same order as nncf's"),
                           method="forget", baseline="stale", dataset=dataset))  # fmt: skip
    return out


def _figure(df, nets, value, ylabel, log=False):
    """Rows: networks; columns: surgeries; PreciseBN against samples, update_bn and the
    forgetting schedule at theirs, population and stale as lines (stale as a note when it
    lies far off the others' scale)."""
    labels = sorted(df.surgery_label.unique(), key=_order)
    fig, axes = plt.subplots(len(nets), len(labels), figsize=(3.2 * len(labels), 2.8 * len(nets)),
                             squeeze=False, layout="constrained")  # fmt: skip
    for i, net in enumerate(nets):
        for j, surgery in enumerate(labels):
            ax, part = axes[i, j], df[(df.network == net) & (df.surgery_label == surgery)]
            pre = mean_and_spread(part[part.statistic == "precise"], ["samples"], value)
            lines_with_spread(ax, pre.assign(s="PreciseBN"), "samples", "s")
            shown = list(pre["mean"])
            for statistic, marker in (("update_bn", "s"), ("forget", "^")):
                one = part[part.statistic == statistic]
                ax.plot(one.samples.mean(), one[value].mean(), marker, label=statistic)
                shown.append(one[value].mean())
            if "population" in set(part.statistic):
                level = part[part.statistic == "population"][value].mean()
                ax.axhline(level, color="k", ls="--", lw=1, label="population")
                shown.append(level)
            stale = part[part.statistic == "stale"][value].mean()
            lo, hi = min(shown), max(shown)
            if log or lo - 2 * (hi - lo + 1) <= stale <= hi + 2 * (hi - lo + 1):
                ax.axhline(stale, color="k", ls=":", lw=1, label="stale")
            else:
                ax.text(0.02, 0.04, f"stale: {stale:.3g} (off scale)", transform=ax.transAxes,
                        fontsize=8)  # fmt: skip
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{net}: {surgery}", fontsize=9)
            ax.set_xlabel("training samples forwarded")
        axes[i, 0].set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=7)
    return fig


def analyse(df):
    df = prepare(df)
    nets = sorted(df.network.unique(), key=lambda n: (n.startswith("torch"), n))
    bn = df[df.framework == "bnbench"]
    dataset = str(bn.dataset.iloc[0]) if len(bn) else "mnist1d"
    found = []
    for net in nets:
        part = df[df.network == net]
        common = {"dataset": dataset if not net.startswith("torch") else "mnist1d", "model": net}
        found += _network_findings(part, common)
    found += _report_findings(df, nets, dataset)
    figures = [("accuracy_vs_samples.png", _figure(df, nets, "gap",
                                                                "accuracy minus population (points)")),
               ("var_error_vs_samples.png", _figure(df[df.statistic != "population"], nets,
                                                    "var_error", "RMS log-variance error", True))]  # fmt: skip
    most = df[df.statistic == "precise"].groupby("network").samples.transform("max")
    top = df[(df.statistic != "precise") | (df.samples == most.reindex(df.index))]
    top = top.assign(setting=top.statistic.where(top.statistic != "precise", "precise (most)"))
    tables = []
    for value, fmt in (("acc", "{:.1f}"), ("var_error", "{:.3f}")):
        t = top.pivot_table(index=["network", "surgery_label"], columns="setting", values=value)
        t = t.reindex(sorted(t.index, key=lambda k: (nets.index(k[0]), _order(k[1]))))
        tables.append(markdown_table(t[[c for c in ("stale", "update_bn", "forget", "precise (most)",
                                                    "population") if c in t]], fmt, index=True))  # fmt: skip
    runs = df.drop_duplicates("job_key")
    change = df.groupby(["network", "surgery_label"]).weight_change.mean().unstack()
    body = "\n\n".join([
        "## Findings", render(found),
        "## Accuracy against training samples used", "![accuracy](accuracy_vs_samples.png)",
        "![variance error](var_error_vs_samples.png)",
        "## Test accuracy (%), mean over seeds", tables[0],
        "## Variance error against the population statistics (RMS over channels of "
        "|log(var / var_population)|, mean over BN layers)", tables[1],
        "## Relative change of the Linear/Conv weights, ||w' - w|| / ||w||",
        markdown_table(change[sorted(change.columns, key=_order)], "{:.3f}", index=True),
        "## Method",
        f"bnbench networks: {DESCRIPTIONS.get(dataset, dataset)}, training batch size 64, "
        f"{int(bn.epochs.iloc[0]) if len(bn) else 0} epochs, {bn.seed.nunique()} seed(s); "
        "PyTorch ('torch default': bnbench.torch.jobs.default_model, a 4-BN-layer CNN on "
        "MNIST-1D, batch size 32, SGD momentum 0.9, weight decay 5e-4, cosine decay; "
        f"{runs[runs.framework == 'torch'].seed.nunique()} seed(s)). Each surgery is applied "
        "to the trained weights of the same network, so every comparison is paired. "
        "'average K': the uniform mean of every parameter (weights, biases, BN affine) at the "
        "end of each of the last K epochs; training decays the learning rate with a cosine to "
        "zero, so this is checkpoint averaging of a cosine tail, not SWA with a constant or "
        "cyclic rate (on PyTorch through swa_utils.AveragedModel). 'prune s': global magnitude "
        "pruning of every Linear/Conv weight (round(s n) smallest |w| zeroed; biases, BN "
        "untouched). 'quantize b-bit': per-output-channel symmetric quantization of every "
        "Linear/Conv weight (narrow range +-(2^(b-1) - 1), scale max|w_c| / (2^(b-1) - 1), "
        "round half to even), back to float; activations in float. Statistics: 'stale' = the "
        "EMA at momentum 0.1 from training (after averaging: the last checkpoint's, what a "
        "user has; AveragedModel itself would keep the buffers of the model it was built "
        "from); 'update_bn' = swa_utils.update_bn over one shuffled pass of the training set "
        "in whole training batches (the plain mean of batch means and of Bessel-corrected "
        "batch variances; on PyTorch the real function); 'precise' = fvcore's PreciseBN "
        "(total variance) over K samples in training batches; 'forget' = nncf's BN "
        "adaptation from the stale buffers, 5 batches at momentum 0.9 then 10 at 0.1; "
        "'population' = the exact statistics of the post-surgery network over the training "
        "set, every upstream BN in inference mode (the reference of every gap). "
        "Samples forwarded are training samples; all scores on the clean test set. " + METHOD,
    ])  # fmt: skip
    return body, figures, found


_QUICK = {"average_last": [2, 5], "sparsities": [0.5, 0.7, 0.9], "bits": [8, 4],
          "precise_samples": SAMPLES}  # fmt: skip
_FULL = {"average_last": [2, 5, 10], "sparsities": [0.3, 0.5, 0.7, 0.8, 0.9], "bits": [8, 6, 4, 3],
         "precise_samples": SAMPLES}  # fmt: skip

STUDY = Study(
    name="weight-surgery",
    title="Weight surgery: BN statistics after averaging, pruning and quantizing the weights",
    presets={
        "quick": lambda o: jobs(o, 10, 5, _QUICK, 6, 3),
        "full": lambda o: jobs(o, 40, 10, _FULL, 20, 5),
    },  # fmt: skip
    analyse=analyse,
    datasets=("mnist1d", "mnist"),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
