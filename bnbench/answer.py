"""The answer page: which statistics should BN use at test time? Computed, never typed.

Each row of :data:`ROWS` is a situation of the forum question, the study whose
``findings.json`` answers it, and the comparison in it (a finding id, a scope, a cell). For
every dataset the row reads the newest report folder of that study (the full preset
when there is one), takes the cell's paired difference (mean, interval, n, verdict) and
derives the recommendation from the verdict: the method where it clearly helps, the
baseline where it clearly hurts, and where there is no clear difference it says only
that: at a few seeds that is not evidence that the two are equivalent
(``docs/guide/statistics.md``). A row whose study has not been run says so.
:func:`write_index` writes ``reports/index.md`` and ``index.html``: the answer table, then
a gallery of every report with its headline figure and findings; and ``answer.json``: the
rows and the time they were computed (what the README's answer is filled from).
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .data import MODELS
from .report import markdown_to_html, write_text

DATASET_NAMES = {"mnist1d": "MNIST-1D", "mnist": "MNIST"}


@dataclass(frozen=True)
class Row:
    """A situation and where its answer is: the ``study``, its finding ``finding`` whose
    scope contains every string of ``scope`` (``{model}`` stands for the dataset's
    ``model_role`` network), the cell whose ``condition`` includes ``cell``; the finding
    compares ``method`` with ``baseline`` (positive: the method is better)."""

    situation: str
    study: str
    finding: str
    method: str
    baseline: str
    scope: tuple = ("{model}",)
    cell: dict = field(default_factory=dict)
    model_role: str = "cnn"
    cell_label: str | None = None


ROWS = [
    Row("iid, in-distribution test data after full training (batch 64)", "momentum-batch-size",
        "ema-default-vs-population", "the running EMA (PyTorch's default, m=0.1)",
        "the population statistics (or PreciseBN)", cell={"batch_size": 64}),
    Row("small training batches (batch 2)", "momentum-batch-size",
        "ema-default-vs-population", "the running EMA (m=0.1)",
        "the population statistics (or PreciseBN)", cell={"batch_size": 2}),
    Row("training with batches of 2 samples: Batch Renorm instead of BN", "normalization-batch-size",
        "renorm-vs-bn", "Batch Renorm with its own statistics", "BN with population statistics",
        scope=("{model}, iid",), cell={"batch_size": 2}),
    Row("a mid-training checkpoint (batch 512)", "training-dynamics", "mid-training-gap",
        "the running EMA (m=0.1)", "the checkpoint's population statistics",
        scope=("{model}", "ema m=0.1"), cell={"batch_size": 512}),
    Row("a deep network (32 BN layers)", "training-dynamics", "final-gap-by-depth",
        "the running EMA (m=0.1)", "the population statistics",
        scope=("ema m=0.1",), cell={"depth": 32}, model_role="resnet"),
    Row("covariate shift, test batches of 16", "covariate-shift",
        "test-batch-vs-source-shifted", "each test batch's own statistics (prediction-time BN)",
        "the source statistics", scope=("{model}", "mean over corruptions"),
        cell={"test_batch_size": 16}),
    Row("covariate shift, test batches of 1", "covariate-shift", "prior-heldout-vs-source",
        "Schneider et al.'s prior (N chosen on held-out corruptions)", "the source statistics",
        scope=("{model}",), cell={"test_batch_size": 1}),
    Row("a class-correlated test stream (batches of 16)", "test-streams",
        "stream-method-vs-source", "prediction-time BN", "the source statistics",
        scope=("{model}", "class_correlated"), cell_label="pred-time BN"),
    Row("a stream mixing corruptions (batches of 16)", "test-streams",
        "stream-method-vs-source", "prediction-time BN", "the source statistics",
        scope=("{model}", "mixed"), cell_label="pred-time BN"),
    Row("a continual stream, TENT instead of statistics alone (batches of 16)", "test-streams",
        "tent-vs-statistics", "TENT", "the best statistics-only method",
        scope=("{model}",), cell={"stream": "continual"}),
    Row("after checkpoint averaging (last 5)", "weight-surgery", "stale-vs-population",
        "the stale running buffers", "re-estimated population statistics (or update_bn)",
        cell={"surgery": "average 5"}),
    Row("after magnitude pruning (70%)", "weight-surgery", "stale-vs-population",
        "the stale running buffers", "re-estimated population statistics (or update_bn)",
        cell={"surgery": "prune 0.7"}),
    Row("after 4-bit weight quantization", "weight-surgery", "stale-vs-population",
        "the stale running buffers", "re-estimated population statistics (or update_bn)",
        cell={"surgery": "quantize 4-bit"}),
]  # fmt: skip


def report_folder(reports, study, dataset):
    """The report folder of ``study`` on ``dataset`` under ``reports``: the full preset's
    if it exists, else the quick one's; ``(None, None)`` if neither was run."""
    tag = "" if dataset == "mnist1d" else f"-{dataset}"
    for preset in ("full", "quick"):
        folder = Path(reports) / f"{study}{tag}-{preset}"
        if (folder / "findings.json").is_file():
            return folder, preset
    return None, None


def _cell(findings, row, model):
    scope = [s.format(model=model) for s in row.scope]
    for f in findings:
        if f["id"] != row.finding or not all(s in f["scope"] for s in scope):
            continue
        if f.get("model") not in (None, model):
            continue
        for c in f["cells"]:
            if row.cell_label is not None and c["label"] != row.cell_label:
                continue
            if all(c["condition"].get(k) == v for k, v in row.cell.items()):
                return f, c
    return None, None


def recommend(row, cell):
    """The recommendation a verdict supports."""
    verdict = cell.get("verdict")
    if verdict == "helps":
        return row.method
    if verdict == "hurts":
        return row.baseline
    if verdict == "no clear difference":
        return (
            f"no clear difference between {row.method} and {row.baseline} "
            "(neither is shown better, nor shown equivalent)"
        )
    return "no verdict (fewer than 3 seeds)"


def answer(reports="reports", datasets=("mnist1d", "mnist")):
    """One dict per row and dataset: situation, dataset, recommendation, effect text,
    the cell's numbers and the link to the report (``None`` where not run)."""
    out = []
    for row in ROWS:
        for dataset in datasets:
            folder, preset = report_folder(reports, row.study, dataset)
            model = MODELS[dataset].get(row.model_role)
            entry = {"situation": row.situation, "dataset": dataset, "study": row.study,
                     "preset": preset, "link": None, "recommendation": None, "effect": None}  # fmt: skip
            if folder is None:
                flag = "" if dataset == "mnist1d" else f" --dataset {dataset}"
                entry["recommendation"] = f"not run yet (bnbench study {row.study}{flag})"
                out.append(entry)
                continue
            findings = json.loads((folder / "findings.json").read_text())["findings"]
            finding, cell = _cell(findings, row, model)
            entry["link"] = f"{folder.relative_to(reports).as_posix()}/report.html"
            if cell is None:
                entry["recommendation"] = "not measured by this preset"
                out.append(entry)
                continue
            unit = finding.get("unit", "points")
            effect = "n/a" if cell.get("mean") is None else (
                f"{cell['mean']:+.1f} [{cell['low']:+.1f}, {cell['high']:+.1f}] {unit}, "
                f"n={cell['n']}" if cell.get("low") is not None else
                f"{cell['mean']:+.1f} {unit}, n={cell['n']}")  # fmt: skip
            entry |= {"recommendation": recommend(row, cell), "effect": effect,
                      "comparison": f"{row.method} minus {row.baseline} ({model})",
                      "verdict": cell.get("verdict"), "mean": cell.get("mean"),
                      "low": cell.get("low"), "high": cell.get("high"), "n": cell.get("n")}  # fmt: skip
            out.append(entry)
    return out


def answer_markdown(rows):
    """The decision table as markdown (one line per situation and dataset)."""
    lines = ["| situation | data | use | measured: method minus baseline | evidence |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        data = DATASET_NAMES.get(r["dataset"], r["dataset"])
        effect = f"{r['effect']} ({r['verdict']}): {r['comparison']}" if r["effect"] else ""
        link = f"[{r['study']} ({r['preset']})]({r['link']})" if r["link"] else ""
        lines.append(f"| {r['situation']} | {data} | {r['recommendation']} | {effect} | {link} |")
    return "\n".join(lines)


def gallery(reports="reports"):
    """Markdown: every report folder under ``reports`` with its headline figure and its
    findings (from ``findings.json``)."""
    parts = []
    for folder in sorted(Path(reports).glob("*/report.md")):
        folder = folder.parent
        title = folder.joinpath("report.md").read_text().splitlines()[0].lstrip("# ")
        pngs = sorted(folder.glob("*.png"))
        parts.append(f"### [{title}]({folder.name}/report.html)\n\n`{folder.name}`")
        if pngs:
            parts.append(f"![{folder.name}]({folder.name}/{pngs[0].name})")
        found = folder / "findings.json"
        if found.is_file():
            texts = [f["text"] for f in json.loads(found.read_text())["findings"]]
            parts.append("\n".join(texts[:6]) + (f"\n\n({len(texts) - 6} more in the report)"
                                                 if len(texts) > 6 else ""))  # fmt: skip
    return "\n\n".join(parts) if parts else "No report has been written yet."


def write_index(reports="reports"):
    """Write ``index.md`` and ``index.html`` in ``reports``; returns the markdown path."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    rows = answer(reports)
    text = "\n\n".join([
        "# Which statistics should BN use at test time?",
        "Each row is computed from a study's findings.json: the recommendation follows the "
        "verdict of a paired comparison over seeds (mean, simultaneous 95% t interval, n); "
        "follow the link for the figures, the method and the other models. MNIST-1D and "
        "MNIST side by side; a row whose study was not run says so.",
        answer_markdown(rows),
        "## Every report", gallery(reports),
    ])  # fmt: skip
    write_text(reports / "index.md", text + "\n")
    write_text(reports / "index.html", markdown_to_html(text, reports, embed=False))
    written = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_text(
        reports / "answer.json", json.dumps({"written": written, "rows": rows}, indent=2) + "\n"
    )
    return reports / "index.md"
