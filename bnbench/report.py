"""Report folders: ``report.md``, a self-contained ``report.html``, figures as PNG,
``results.csv`` and ``provenance.json``.

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


def markdown_table(df, floatfmt="{:.3g}", index=False):
    """A GitHub-flavoured markdown table of a DataFrame (its index as leading columns if
    ``index``)."""
    if index:
        df = df.reset_index()

    def cell(v):
        if isinstance(v, float):
            return "" if v != v else floatfmt.format(v)
        return str(v)

    header = (
        "| " + " | ".join(f"{c:g}" if isinstance(c, float) else str(c) for c in df.columns) + " |"
    )
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join([header, rule, *rows])


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
        padding: 0 1em; line-height: 1.45; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head><body>
{body}
</body></html>
"""


def markdown_to_html(text, folder, embed=True):
    """HTML for a report's markdown, with its PNG figures embedded as data URIs (a
    self-contained file; ``embed=False``: linked, as an index of many reports does)."""
    import base64
    import html
    import re

    import markdown

    body = markdown.markdown(text, extensions=["tables"])

    def embed_png(match):
        path = Path(folder) / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    if embed:
        body = re.sub(r'src="([^"]+\.png)"', embed_png, body)
    title = html.escape(text.splitlines()[0].lstrip("# ").strip())
    return _HTML.format(title=title, body=body)


def _atomic(path, write):
    """``write(tmp_path)``, then rename over ``path``; the temporary file never stays
    behind, even when ``write`` fails (a full disk)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    _atomic(Path(path), lambda tmp: tmp.write_text(text))


def write_report(out_dir, title, body, results, figures=(), command=None, extra_provenance=None,
                 texts=None):  # fmt: skip
    """Write a report folder and return its path.

    ``body``: markdown after the title; ``results``: the tidy DataFrame (one row per
    measurement); ``figures``: ``(file_name, matplotlib Figure)`` pairs, saved as PNG
    and closed; ``texts``: more files, ``{name: text}`` (e.g. ``findings.json``).
    ``provenance.json`` records the machine writing the report (git state, versions,
    CPU, threads), the time and ``command``, plus ``extra_provenance`` (a study adds
    where its runs came from). Every file is written atomically, and a write that fails
    (a full disk) leaves no temporary file behind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, fig in figures:
            _atomic(out / name,
                    lambda tmp, fig=fig: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))  # fmt: skip
    finally:
        for _, fig in figures:
            plt.close(fig)
    _atomic(out / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    prov = {"report": provenance(command), **(extra_provenance or {})}
    write_text(out / "provenance.json", json.dumps(prov, indent=2, default=str) + "\n")
    for name, text in (texts or {}).items():
        write_text(out / name, text)
    text = f"# {title}\n\n{body.strip()}\n"
    write_text(out / "report.md", text)
    write_text(out / "report.html", markdown_to_html(text, out))
    return out


def single(df, column):
    """The one value of ``column`` in ``df`` (e.g. the dataset of a report), or a clear
    error when the table mixes several."""
    values = df[column].dropna().unique()
    if len(values) != 1:
        raise ValueError(f"expected one {column} in the results, got {sorted(map(str, values))}")
    return values[0]


def mean_and_spread(df, by, value):
    """Mean, standard deviation and count of ``value`` over the seeds, per ``by``."""
    g = df.groupby(by, dropna=False)[value]
    return g.agg(mean="mean", std="std", n="count").reset_index()


def heatmap_panel(ax, table, title, fmt="{:.1f}", cmap="viridis", vmin=None, vmax=None):
    """Draw a pivoted DataFrame (rows -> y, columns -> x) as an annotated heatmap."""
    im = ax.imshow(table.values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
    ax.set_xticks(range(table.shape[1]), [f"{c:g}" for c in table.columns], rotation=45)
    ax.set_yticks(range(table.shape[0]), [f"{r:g}" for r in table.index])
    ax.set_title(title, fontsize=10)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.values[i, j]
            if v == v:  # dark text on the bright end of the colormap, light elsewhere
                color = "k" if im.norm(v) > 0.6 else "w"
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color=color)
    return im


def lines_with_spread(ax, df, x, hue, value="mean", spread="std", logx=True):
    """One line per ``hue`` value against ``x``, with a band of +-``spread``."""
    for label, sub in df.groupby(hue, sort=False):
        sub = sub.sort_values(x)
        ax.plot(sub[x], sub[value], marker="o", ms=3, label=str(label))
        if spread in sub and sub[spread].notna().any():
            ax.fill_between(
                sub[x], sub[value] - sub[spread].fillna(0), sub[value] + sub[spread].fillna(0),
                alpha=0.15,
            )  # fmt: skip
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
