"""Report folders: ``report.md``, figures as PNG, ``results.csv`` and ``provenance.json``.

A study hands over its tidy results table, the markdown body and its figures; this
module writes them atomically enough that a reader never sees a half-written file.
"""

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written headless
import matplotlib.pyplot as plt  # noqa: E402

from .sysinfo import provenance  # noqa: E402


def markdown_table(df, floatfmt="{:.3g}"):
    """A GitHub-flavoured markdown table of a DataFrame (index dropped)."""

    def cell(v):
        if isinstance(v, float):
            return "" if v != v else floatfmt.format(v)
        return str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join([header, rule, *rows])


def _write_text(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(out_dir, title, body, results, figures=(), command=None):
    """Write a report folder and return its path.

    ``body``: markdown after the title; ``results``: the tidy DataFrame (one row per
    measurement); ``figures``: ``(file_name, matplotlib Figure)`` pairs, saved as PNG
    and closed. ``provenance.json`` records git state, versions, CPU, threads, time and
    ``command``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures:
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
    csv_tmp = out / "results.csv.tmp"
    results.to_csv(csv_tmp, index=False)
    os.replace(csv_tmp, out / "results.csv")
    _write_text(out / "provenance.json", json.dumps(provenance(command), indent=2) + "\n")
    _write_text(out / "report.md", f"# {title}\n\n{body.strip()}\n")
    return out
