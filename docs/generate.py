"""The generated parts of the documentation: standard library only, so ``tasks.py`` and
``docs/conf.py`` can both run it.

``python docs/generate.py`` (run by ``python3 tasks.py docs`` before Sphinx) does two things:

- :func:`results_pages`: ``docs/results/`` from the saved report folders ``reports/*/``
  (each ``report.md`` with its figures and ``findings.json``) and the answer page
  ``reports/index.md``; without report folders, one page naming the command that makes
  them. ``docs/results/`` is git-ignored: it is made anew on every build (``docs/conf.py``
  calls this too, so a bare ``sphinx-build`` on a fresh clone works).
- :func:`fill_readme`: copies ``reports/answer.json`` (written by ``bnbench study all``)
  to ``docs/data/answer.json``, which is committed, then fills the README's ``<!--
  generated:NAME -->`` ... ``<!-- /generated:NAME -->`` blocks from that copy: every number
  in the README comes from a report, none is typed, and a fresh clone can check them
  (``tests/test_docs.py`` renders the block again and compares). Without
  ``reports/answer.json`` the committed copy is used; without either, the block says the
  studies have not been run yet.

``BNBENCH_REPORTS`` names another reports folder (the tests point it at an empty one).
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
README = ROOT / "README.md"
MAKE_REPORTS = "bnbench study all --preset quick"
DATASET_NAMES = {"mnist1d": "MNIST-1D", "mnist": "MNIST"}
#: files of a report folder copied beside its page (figures and the data behind them)
COPIED = ("*.png", "findings.json", "provenance.json")

BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)",
    re.S,
)
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def reports_dir():
    return Path(os.environ.get("BNBENCH_REPORTS") or ROOT / "reports")


def report_folders(reports):
    """The report folders under ``reports`` (those with a ``report.md``), by name."""
    return sorted(p.parent for p in Path(reports).glob("*/report.md"))


def _relink(text, here, dest, known):
    """``text`` with its markdown links made valid inside the docs page in ``dest``:
    ``X/report.html`` -> ``X/report.md`` where report ``X`` (in ``known``) has a page, links
    to files copied beside the page kept, anything else (``results.csv``, ``report.html``)
    written as its path in the report folder ``here``, in code, without a link."""

    def sub(m):
        bang, label, target = m.groups()
        if re.match(r"[a-z]+://|#|mailto:", target):
            return m.group(0)
        path = target.partition("#")[0]
        page = (dest / path).resolve()
        if page.name == "report.html" and page.parent.name in known:
            return f"{bang}[{label}]({path.removesuffix('.html')}.md)"
        if path and page.is_file() and page.suffix != ".html":
            return m.group(0)
        shown = f"`{(here / path).as_posix()}`"
        return f"{label} ({shown})" if label and not bang else shown

    return LINK.sub(sub, text)


def _title(text, fallback):
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def _variant(folder):
    """``"MNIST, quick"``: what tells a report apart from the same study's others (its
    dataset where it is not the default, and its preset), from ``study.json``."""
    try:
        meta = json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        meta = {}
    dataset = (meta.get("options") or {}).get("dataset")
    preset = meta.get("preset") or folder.name.rsplit("-", 1)[-1]
    parts = [DATASET_NAMES.get(dataset, dataset)] if dataset and dataset != "mnist1d" else []
    return ", ".join([*parts, preset])


def _retitle(text, suffix):
    """``text`` with `` (suffix)`` added to its first level-1 heading."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# "):
            lines[i] = f"{line.rstrip()} ({suffix})"
            return "\n".join(lines) + "\n"
    return f"# {suffix}\n\n{text}"


#: MNIST's network for each MNIST-1D network (bnbench.data.MODELS), to pair findings
TWIN = {"cnn2d": "cnn", "resnet2d": "resnet"}


def _pair_key(finding):
    """A finding's id and scope with the dataset's network named by its MNIST-1D twin."""
    head, sep, rest = finding["scope"].partition(",")
    return finding["id"], TWIN.get(head, head) + sep + rest


def agreement(a, b):
    """Whether two verdicts agree: both the same clear direction, opposite directions, or
    not decided on one or both datasets."""
    clear = ("helps", "hurts")
    if a in clear and b in clear:
        return "agree" if a == b else "**disagree**"
    if a in clear or b in clear:
        return "clear on one only"
    return "neither clear"


def _cell_text(c):
    if c.get("verdict") is None or c.get("mean") is None:
        return "n/a"
    return f"{c['mean']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}] {c['verdict']}, n={c['n']}"


def both_datasets(folders):
    """Markdown: every finding measured on MNIST-1D and MNIST (the same study and preset),
    cell by cell side by side, with whether the verdicts agree; ``None`` if no study has
    both."""
    by_name = {f.name: f for f in folders}
    sections, counts = [], {}
    for name, folder in sorted(by_name.items()):
        study, _, preset = name.rpartition("-")
        twin = by_name.get(f"{study}-mnist-{preset}")
        if study.endswith("-mnist") or twin is None:
            continue
        load = [json.loads((f / "findings.json").read_text())["findings"] for f in (folder, twin)]
        other = {(_pair_key(f), c["label"]): c for f in load[1] for c in f["cells"]}
        rows = []
        for f in load[0]:
            for c in f["cells"]:
                d = other.get((_pair_key(f), c["label"]))
                if d is None or c.get("verdict") is None or d.get("verdict") is None:
                    continue
                agree = agreement(c["verdict"], d["verdict"])
                counts[agree] = counts.get(agree, 0) + 1
                rows.append(f"| {f['scope']}: {f['claim']} | {c['label']} | {_cell_text(c)} "
                            f"| {_cell_text(d)} | {agree} |")  # fmt: skip
        if rows:
            table = ["| finding (MNIST-1D's network; on MNIST its image twin) | cell | "
                     "MNIST-1D | MNIST | verdicts |", "|---|---|---|---|---|", *rows]  # fmt: skip
            sections += [f"## {study} ({preset})", "\n".join(table)]
    if not sections:
        return None
    kinds = ("agree", "**disagree**", "clear on one only", "neither clear")
    summary = ", ".join(f"{counts.get(k, 0)} {k.strip('*')}" for k in kinds)
    return "\n\n".join([
        "# MNIST-1D and MNIST side by side",
        "Every finding cell measured on both datasets by the same study and preset, paired by "
        "finding and cell label (MNIST's cnn2d and resnet2d stand for MNIST-1D's cnn and "
        "resnet; corruption cells are paired where MNIST-1D-C and MNIST-C share a name, e.g. "
        "shear and scale). Each cell: mean [interval] verdict, n seeds, from the two reports' "
        f"findings.json. In all: {summary}.", *sections,
    ]) + "\n"  # fmt: skip


def results_pages(reports=None, out=RESULTS):
    """Write ``out`` (``docs/results/``) from ``reports``; returns the pages written."""
    reports = Path(reports) if reports is not None else reports_dir()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    folders = report_folders(reports)
    index = reports / "index.md"
    pages = [asv_page(out)]
    if not folders and not index.is_file():
        (out / "index.md").write_text(
            "# Results\n\n"
            f"No report folder was found in `{reports.name}/`, so this site has no results "
            "pages yet. Run every study with the quick preset (a few minutes on 2 cores per "
            "study), then build the site again:\n\n"
            f"```sh\n.venv/bin/{MAKE_REPORTS}\npython3 tasks.py docs\n```\n\n"
            "Each study writes `reports/NAME-PRESET/` (`report.md`, `report.html`, figures, "
            "`findings.json`); `bnbench study all` also writes the answer page, "
            "`reports/index.html`. The pages here are made from those folders, never typed.\n"
            "\n```{toctree}\n:hidden:\n\nasv\n```\n"
        )
        return [out / "index.md", *pages]
    names = [f.name for f in folders]
    known = set(names)
    for folder in folders:
        dest = out / folder.name
        dest.mkdir()
        copied = set()
        for pattern in COPIED:
            for f in sorted(folder.glob(pattern)):
                shutil.copy2(f, dest / f.name)
                copied.add(f.name)
        text = _retitle((folder / "report.md").read_text(), _variant(folder))
        text = _relink(text, Path("reports") / folder.name, dest, known)
        data = [f"[{n}]({n})" for n in ("findings.json", "provenance.json") if n in copied]
        if data:
            text += (
                f"\n\n---\n\nGenerated from `reports/{folder.name}/` by `python3 tasks.py docs`;"
                f" the data behind this page: {', '.join(data)}.\n"
            )
        (dest / "report.md").write_text(text)
        pages.append(dest / "report.md")
    toc = [f"{n}/report" for n in names] + ["asv"]
    side_by_side = both_datasets(folders)
    if side_by_side:
        (out / "both-datasets.md").write_text(side_by_side)
        pages.append(out / "both-datasets.md")
        toc.insert(0, "both-datasets")
    if index.is_file():
        text = _relink(index.read_text(), Path("reports"), out, known)
        (out / "answer.md").write_text(
            text + "\n\n---\n\nGenerated from `reports/index.md` (`bnbench study all`) by "
            "`python3 tasks.py docs`.\n"
        )
        pages.append(out / "answer.md")
        toc.insert(0, "answer")
    listing = "\n".join(
        f"- [{_title((f / 'report.md').read_text(), f.name)} ({_variant(f)})]({f.name}/report.md) "
        f"(`reports/{f.name}/`)"
        for f in folders
    )
    (out / "index.md").write_text(
        "# Results\n\n"
        "These pages are made by `python3 tasks.py docs` from the report folders saved in "
        f"`{reports.name}/`: each study's `report.md`, its figures and `findings.json`, never "
        "typed. Run more studies (`" + MAKE_REPORTS + "`) and build again to add theirs.\n\n"
        + ("- [The answer page](answer.md): which statistics BN should use at test time\n"
           if index.is_file() else
           "The answer page is missing: `" + MAKE_REPORTS + "` writes it.\n\n")
        + ("- [MNIST-1D and MNIST side by side](both-datasets.md): every finding on both "
           "datasets, with whether the verdicts agree\n" if side_by_side else "")
        + listing
        + "\n\n```{toctree}\n:hidden:\n\n" + "\n".join(toc) + "\n```\n"
    )  # fmt: skip
    pages.insert(0, out / "index.md")
    return pages


ASV = ROOT / ".asv"
PUBLISH = ".venv/bin/asv publish --config asv.json"


def asv_page(out=RESULTS, asv=ASV):
    """``out/asv.md``: a link to the asv history (``asv publish``'s HTML, copied to
    ``out/_extra/asv/``, which ``conf.py`` serves as ``asv/`` of the site) when
    ``.asv/results`` exist, else how to make it."""
    results, html = asv / "results", asv / "html"
    has_results = results.is_dir() and any(results.rglob("*.json"))
    if has_results and (html / "index.html").is_file():
        shutil.copytree(html, out / "_extra" / "asv")
        text = (
            "The benchmark history of this checkout, as `asv publish` last wrote it "
            f"(`{PUBLISH}`, into `.asv/html/`): "
            '<a href="../asv/index.html">open the asv pages</a>. Publish again after '
            "`asv run` to update it, then rebuild the docs."
        )
    elif has_results:
        text = (
            "This checkout has asv results in `.asv/results` but no published HTML: run "
            f"`{PUBLISH}`, then `python3 tasks.py docs`, and the history is linked here."
        )
    else:
        text = (
            "No asv results in this checkout (`.asv/results` is missing). Run the suite "
            "(`.venv/bin/asv run --config asv.json -E existing:.venv/bin/python`, see "
            f"{{doc}}`../guide/asv`), then `{PUBLISH}` and `python3 tasks.py docs`."
        )
    (out / "asv.md").write_text("# Benchmark history (asv)\n\n" + text + "\n")
    return out / "asv.md"


# -- the README's generated blocks

#: the committed copy of ``reports/answer.json`` (``reports/`` is git-ignored): the README's
#: answer is filled from it, so its numbers can be checked from a fresh clone
DATA = DOCS / "data" / "answer.json"
NOT_MEASURED = "the cheaper is not shown to cost accuracy, nor shown not to"


def _verdict(r):
    """What a measured row's verdict supports, in words that do not claim more than it."""
    if r.get("verdict") == "no clear difference":
        return f"no clear difference: {NOT_MEASURED}"
    if r.get("verdict") in ("helps", "hurts"):
        return f"{r['verdict']}: use {r['recommendation']}"
    return r["recommendation"]


def answer_bullets(rows):
    """One bullet per situation of the answer page: the comparison (method minus baseline,
    with the model), then on each dataset the measured effect (mean [interval], n), what
    its verdict supports and its report folder; a dataset whose study was not run says so."""
    by_situation = {}
    for r in rows:
        by_situation.setdefault(r["situation"], []).append(r)
    lines, not_run, not_in_preset = [], {}, {}
    for situation, entries in by_situation.items():
        measured = [r for r in entries if r.get("effect")]
        if not measured:
            ran = any(r.get("link") for r in entries)  # run, but its preset lacks the cell
            group = not_in_preset if ran else not_run
            group.setdefault(entries[0]["study"], []).append(situation)
            continue
        parts = []
        for r in entries:
            data = DATASET_NAMES.get(r["dataset"], r["dataset"])
            if r.get("effect"):
                folder = r["link"].rsplit("/", 1)[0] if r.get("link") else r["study"]
                net = r["comparison"].rsplit(" (", 1)[1].rstrip(")")
                parts.append(f"{data} ({net}) {r['effect']}, {_verdict(r)} (`{folder}`)")
            else:
                parts.append(f"{data} {r['recommendation']}")
        # bnbench.answer ends each comparison with its network in parentheses; the network
        # differs by dataset (cnn on MNIST-1D, cnn2d on MNIST), so each dataset names its own
        comparison = measured[0]["comparison"].rsplit(" (", 1)[0]
        lines.append(f"- **{situation}**, {comparison}: " + "; ".join(parts))
    if not_in_preset:
        situations = [s for group in not_in_preset.values() for s in group]
        lines.append(
            f"- Not measured by the preset that ran ({', '.join(not_in_preset)}; its full "
            "preset scores them): " + "; ".join(situations)
        )
    if not_run:
        situations = [s for group in not_run.values() for s in group]
        lines.append(
            f"- Not measured here yet (`{MAKE_REPORTS}` runs their studies: "
            f"{', '.join(not_run)}): " + "; ".join(situations)
        )
    return lines


def load_answer(path=DATA):
    """``(rows, written)`` from an ``answer.json`` (``written``: the UTC time
    ``bnbench.answer.write_index`` computed it; ``None`` in files older than that field);
    ``(None, None)`` if there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None, None
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return data, None
    return data["rows"], data.get("written")


def block_answer(path=DATA):
    """The README's answer block from ``path`` (``docs/data/answer.json``); without it, a
    block saying the studies have not been run yet."""
    rows, written = load_answer(path)
    if rows is None:
        return (
            "Not run yet: no `docs/data/answer.json` in this checkout. "
            f"`.venv/bin/{MAKE_REPORTS}` writes `reports/answer.json`, and `python3 tasks.py "
            "docs` copies it to `docs/data/answer.json` and fills this block from it."
        )
    presets = sorted({r["preset"] for r in rows if r.get("preset")})
    when = f"computed {written}" if written else "date not recorded"
    return "\n".join(
        [
            f"From `docs/data/answer.json` ({when}; presets: {', '.join(presets) or 'none'}), "
            "copied from `reports/answer.json` by `python3 tasks.py docs`: each effect is a "
            "paired difference over seeds, method minus baseline (network), mean [95% t interval, "
            "simultaneous over its finding's cells] and n seeds; the report folders are under `reports/` (the docs' results pages), and "
            "[the answer page](reports/index.html) has the table and the evidence.",
            "",
            *answer_bullets(rows),
        ]
    )


BLOCKS = {"answer": block_answer}


def copy_answer(reports, data=DATA):
    """Copy ``reports/answer.json`` to ``data`` (``docs/data/answer.json``, committed);
    returns a message, or ``None`` when ``reports`` has none (``data`` is kept)."""
    source = Path(reports) / "answer.json"
    if not source.is_file():
        return None
    data.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, data)
    return f"{Path(reports).name}/answer.json copied to {data.relative_to(data.parents[2])}"


def fill_readme(readme=README, reports=None, data=DATA):
    """Copy ``reports/answer.json`` to ``data`` where there is one, then fill the README's
    generated blocks from ``data``; returns the messages."""
    reports = Path(reports) if reports is not None else reports_dir()
    said = [m for m in [copy_answer(reports, data)] if m]
    if not said:
        said.append(
            f"{reports.name}/answer.json is missing: the README is filled from "
            + (f"{data.name} as committed" if data.is_file() else "nothing (not run yet)")
        )
    text = readme.read_text()

    def sub(m):
        name = m.group("name")
        make = BLOCKS.get(name)
        if make is None:
            said.append(f"README block {name!r}: no generator for it, left as it is")
            return m.group(0)
        said.append(f"README block {name!r} filled from {data.name}")
        return m.group(1) + make(data).rstrip("\n") + "\n" + m.group(4)

    new = BLOCK.sub(sub, text)
    if new != text:
        readme.write_text(new)
    return said


def main():
    reports = reports_dir()
    pages = results_pages(reports)
    print(f"docs/results/: {len(pages)} page(s) from {reports}")
    for line in fill_readme(README, reports):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
