"""The README and the documentation site: short, generated where it states numbers,
examples that run, links that resolve, and a Sphinx build without warnings.

The site is built here (``sphinx-build -W``) twice into a temporary folder from a copy of
the committed sources: as a fresh clone sees it (no ``reports/``: the results section is
one page naming the command) and with a small report folder and answer page written by
``bnbench.answer`` (the generated results pages). ``python3 tasks.py docs`` builds the real
site from ``reports/``.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: relative links in the README that point at files made by a command, not committed:
#: prefix -> the command that makes them (a link is checked to start with one of these)
GENERATED = {
    "reports/": "bnbench study NAME / bnbench study all (reports/index.html)",
    "docs/_build/": "python3 tasks.py docs",
}


def _generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme():
    return README.read_text()


def test_the_readme_is_short():
    lines = _readme().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the guide pages take the rest"


def test_every_generated_block_is_well_formed():
    text = _readme()
    generate = _generate()
    opens = re.findall(r"<!-- generated:([\w-]+) -->", text)
    closes = re.findall(r"<!-- /generated:([\w-]+) -->", text)
    assert opens, "the README has no generated block (the answer must be one)"
    assert opens == closes, f"generated blocks opened {opens} but closed {closes}"
    assert len(set(opens)) == len(opens), f"a generated block appears twice: {opens}"
    assert "answer" in opens
    blocks = list(generate.BLOCK.finditer(text))
    assert [m.group("name") for m in blocks] == opens, "a block is nested or not closed in order"
    for m in blocks:
        assert m.group("name") in generate.BLOCKS, f"no generator for block {m.group('name')!r}"
        assert "<!--" not in m.group("body"), f"block {m.group('name')!r} holds another marker"
    # the studies table is included by docs/guide/studies.md between these markers
    assert text.count("<!-- studies-table -->") == 1
    assert text.count("<!-- /studies-table -->") == 1


def test_fill_readme_copies_answer_json_and_fills_the_blocks_from_the_copy(tmp_path):
    generate = _generate()
    readme, data = tmp_path / "README.md", tmp_path / "docs" / "data" / "answer.json"
    readme.write_text(
        "intro\n<!-- generated:answer -->\nold text\n<!-- /generated:answer -->\nend\n"
    )
    # neither reports/answer.json nor the committed copy: the block says so
    said = generate.fill_readme(readme, tmp_path / "reports", data)
    assert "answer.json is missing" in said[0] and not data.exists()
    assert "Not run yet" in readme.read_text() and "old text" not in readme.read_text()

    reports = tmp_path / "reports"
    reports.mkdir()
    rows = [
        {"situation": "iid data", "dataset": "mnist1d", "study": "s", "preset": "quick",
         "link": "s-quick/report.html", "recommendation": "the population statistics",
         "effect": "-1.2 [-2.0, -0.4] points, n=3", "comparison": "EMA minus population (cnn)",
         "verdict": "hurts", "mean": -1.2, "low": -2.0, "high": -0.4, "n": 3},
        {"situation": "iid data", "dataset": "mnist", "study": "s", "preset": None,
         "link": None, "recommendation": "not run yet (bnbench study s --dataset mnist)",
         "effect": None},
        {"situation": "small batches", "dataset": "mnist1d", "study": "s", "preset": "quick",
         "link": "s-quick/report.html",
         "recommendation": "no clear difference between EMA and population",
         "effect": "+0.1 [-0.4, +0.5] points, n=3", "comparison": "EMA minus population (mlp)",
         "verdict": "no clear difference", "mean": 0.1, "low": -0.4, "high": 0.5, "n": 3},
        {"situation": "small batches", "dataset": "mnist", "study": "s", "preset": "full",
         "link": "s-mnist-full/report.html", "recommendation": "the population statistics",
         "effect": "-0.5 [-0.9, -0.1] points, n=5", "comparison": "EMA minus population (cnn2d)",
         "verdict": "hurts", "mean": -0.5, "low": -0.9, "high": -0.1, "n": 5},
    ]  # fmt: skip
    (reports / "answer.json").write_text(
        json.dumps({"written": "2026-12-03T06:00:00Z", "rows": rows})
    )
    generate.fill_readme(readme, reports, data)
    assert data.read_text() == (reports / "answer.json").read_text(), "the committed copy"
    text = readme.read_text()
    assert "old text" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "computed 2026-12-03T06:00:00Z" in text
    # the number, its verdict and its report folder as text: no link into git-ignored reports/
    assert (
        "- **iid data**, EMA minus population: MNIST-1D (cnn) -1.2 [-2.0, -0.4] points, n=3, "
        "hurts: use the population statistics (`s-quick`); "
        "MNIST not run yet (bnbench study s --dataset mnist)\n" in text
    ), "each dataset names the network it measured"
    assert "](reports/s-quick" not in text
    # no clear difference is rendered as such, with n and the interval, not as advice
    assert (
        "- **small batches**, EMA minus population: MNIST-1D (mlp) +0.1 [-0.4, +0.5] points, "
        "n=3, no clear difference: the cheaper is not shown to cost accuracy, nor shown not "
        "to (`s-quick`); MNIST (cnn2d) -0.5 [-0.9, -0.1] points, n=5, hurts: use the "
        "population statistics (`s-mnist-full`)\n" in text
    )
    assert "either" not in text.replace("neither", "")
    generate.fill_readme(readme, reports, data)
    assert readme.read_text() == text, "filling twice changes nothing"
    # without reports/ (a fresh clone): filled from the committed copy, the same text
    shutil.rmtree(reports)
    said = generate.fill_readme(readme, reports, data)
    assert "as committed" in said[0] and readme.read_text() == text


def test_the_readme_answer_is_the_committed_answer_json_rendered():
    """The README's answer block is exactly what docs/generate.py renders from the committed
    docs/data/answer.json (or the not-run-yet text without it): a hand edit fails here."""
    generate = _generate()
    blocks = {m.group("name"): m.group("body") for m in generate.BLOCK.finditer(_readme())}
    expected = generate.block_answer(generate.DATA).rstrip("\n") + "\n"
    assert blocks["answer"] == expected, (
        "README.md's answer block differs from docs/data/answer.json rendered: run "
        "`python3 tasks.py docs` (or `python docs/generate.py`), never edit the block by hand"
    )


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_readme_examples_run(capsys):
    blocks = _python_blocks(_readme())
    assert len(blocks) >= 2, "the README shows a kernel example and a PyTorch example"
    for i, code in enumerate(blocks):
        if "import torch" in code and importlib.util.find_spec("torch") is None:
            pytest.skip("PyTorch is not installed (the peers extra): its example cannot run")
        exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": "__readme__"})
    assert "accuracy" in capsys.readouterr().out


def test_every_relative_link_in_the_readme_resolves():
    text = _readme()
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    assert targets
    missing = []
    for target in targets:
        if re.match(r"[a-z]+:|#", target):
            continue
        path = target.split("#")[0]
        if any(path.startswith(prefix) for prefix in GENERATED):
            continue
        if not (ROOT / path).exists():
            missing.append(target)
    assert not missing, f"README links to files that do not exist: {missing}"


def _copy_sources(dest):
    """The committed documentation sources (no build output, no generated pages)."""
    shutil.copytree(
        ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns("_build", "api", "results")
    )
    shutil.copy2(README, dest / "README.md")  # docs/guide/studies.md includes its table
    return dest / "docs"


def _sphinx(docs, out, reports):
    env = {**os.environ, "BNBENCH_REPORTS": str(reports), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           str(docs), str(out)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _fake_reports(reports):
    """A report folder as a study writes it (report.md linking its figure, report.html
    and results.csv; findings.json) and the answer page bnbench.answer writes from it."""
    from bnbench import answer

    folder = reports / "momentum-batch-size-quick"
    folder.mkdir(parents=True)
    shutil.copy2(ROOT / "docs" / "headline-accuracy-vs-batch-size.png", folder / "fig.png")
    (folder / "report.md").write_text(
        "# Test-time BN statistics: a small report\n\n![accuracy](fig.png)\n\n"
        "## Findings\n\n- **cnn**: a finding.\n\n#### A deep heading\n\n"
        "Data: [results.csv](results.csv), [the HTML report](report.html), "
        "[elsewhere](https://example.org).\n"
    )
    (folder / "findings.json").write_text(json.dumps({"findings": []}))
    answer.write_index(reports)


def test_the_docs_build_without_warnings(tmp_path):
    if (
        importlib.util.find_spec("sphinx") is None
        or importlib.util.find_spec("myst_parser") is None
    ):
        pytest.skip("Sphinx or myst-parser is not installed (the docs extra): no docs build")
    docs = _copy_sources(tmp_path / "repo")
    out = tmp_path / "html"
    # as a fresh clone: no reports, the results section says how to make them
    fresh = _sphinx(docs, out, tmp_path / "no-reports")
    assert fresh.returncode == 0, f"sphinx-build -W failed:\n{fresh.stdout}\n{fresh.stderr}"
    assert "No report folder was found" in (out / "results" / "index.html").read_text()
    for page in ["index", "api", "guide/statistics", "guide/studies"]:
        assert (out / f"{page}.html").is_file(), page
    assert (out / "api" / "bnbench.html").is_file(), "the API reference has no bnbench page"
    assert "momentum-batch-size" in (out / "guide" / "studies.html").read_text()
    # with a saved report and the answer page: the generated results pages (incremental)
    reports = tmp_path / "reports"
    _fake_reports(reports)
    built = _sphinx(docs, out, reports)
    assert built.returncode == 0, f"sphinx-build -W failed:\n{built.stdout}\n{built.stderr}"
    page = (out / "results" / "momentum-batch-size-quick" / "report.html").read_text()
    assert "fig.png" in page and "results.csv" in page
    assert (out / "results" / "answer.html").is_file()


def test_the_asv_page_links_the_published_history_when_there_is_one(tmp_path):
    generate = _generate()
    asv, out = tmp_path / ".asv", tmp_path / "results"
    out.mkdir()
    assert "`.asv/results` is missing" in generate.asv_page(out, asv).read_text()
    (asv / "results" / "machine").mkdir(parents=True)
    (asv / "results" / "machine" / "abc.json").write_text("{}")
    assert "no published HTML" in generate.asv_page(out, asv).read_text()
    (asv / "html").mkdir()
    (asv / "html" / "index.html").write_text("<html>asv</html>")
    text = generate.asv_page(out, asv).read_text()
    assert 'href="../asv/index.html"' in text and "asv publish" in text
    assert (out / "_extra" / "asv" / "index.html").read_text() == "<html>asv</html>"


def _findings(folder, dataset, model, verdicts):
    """A report folder whose one finding has cells A and B with ``verdicts``."""
    folder.mkdir(parents=True)
    cells = [{"label": label, "mean": 1.0, "low": 0.5, "high": 1.5, "n": 3, "verdict": v}
             for label, v in zip("AB", verdicts, strict=True)]  # fmt: skip
    finding = {"id": "x-vs-y", "scope": f"{model}, clean", "claim": "X minus Y",
               "cells": cells, "dataset": dataset, "text": ""}  # fmt: skip
    (folder / "findings.json").write_text(json.dumps({"findings": [finding]}))


def test_both_datasets_pairs_cells_by_finding_and_twin_network(tmp_path):
    generate = _generate()
    _findings(tmp_path / "s-quick", "mnist1d", "cnn", ["helps", "no clear difference"])
    _findings(tmp_path / "s-mnist-quick", "mnist", "cnn2d", ["hurts", "no clear difference"])
    _findings(tmp_path / "alone-quick", "mnist1d", "cnn", ["helps", "helps"])
    text = generate.both_datasets(sorted(tmp_path.iterdir()))
    assert "## s (quick)" in text and "alone" not in text
    assert "| cnn, clean: X minus Y | A |" in text and "| **disagree** |" in text
    assert "| B |" in text and "neither clear" in text
    assert "0 agree, 1 disagree, 0 clear on one only, 1 neither clear" in text
    assert generate.both_datasets([tmp_path / "alone-quick"]) is None
    assert generate.agreement("helps", "helps") == "agree"
    assert generate.agreement("helps", "no clear difference") == "clear on one only"
