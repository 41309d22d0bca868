"""The answer page: computed from findings.json files, never typed; a row whose study has
not been run says so; ``bnbench study all`` runs every study then writes the index."""

import json
import re

from bnbench import answer, cli
from bnbench.findings import Cell, Finding, to_json
from bnbench.stats import paired_difference


def write_findings(folder, findings):
    folder.mkdir(parents=True)
    (folder / "findings.json").write_text(to_json(findings, study=folder.name))
    (folder / "report.md").write_text(f"# {folder.name}\n\nbody\n")


def test_rows_follow_the_verdicts(tmp_path):
    hurts = paired_difference([-2.0, -2.1, -1.9])
    unclear = paired_difference([0.5, -0.4, 0.1])
    ema = Finding("ema-default-vs-population", "cnn", "EMA minus population",
                  [Cell("64", hurts, condition={"batch_size": 64}),
                   Cell("2", unclear, condition={"batch_size": 2})], model="cnn")  # fmt: skip
    write_findings(tmp_path / "momentum-batch-size-full", [ema])
    rows = {(r["situation"], r["dataset"]): r for r in answer.answer(tmp_path)}
    iid = rows[("iid, in-distribution test data after full training (batch 64)", "mnist1d")]
    assert iid["recommendation"] == "the population statistics (or PreciseBN)"  # EMA hurts
    assert iid["effect"] == f"-2.0 [{hurts.low:+.1f}, {hurts.high:+.1f}] points, n=3"
    assert iid["link"] == "momentum-batch-size-full/report.html" and iid["preset"] == "full"
    small = rows[("small training batches (batch 2)", "mnist1d")]
    # no clear difference at n=3 is not equivalence: the row says only what was measured
    assert small["recommendation"].startswith("no clear difference between")
    assert (
        not small["recommendation"].startswith("either")
        and "cheaper" not in small["recommendation"]
    )
    mnist = rows[("iid, in-distribution test data after full training (batch 64)", "mnist")]
    assert mnist["recommendation"] == (
        "not run yet (bnbench study momentum-batch-size --dataset mnist)"
    )
    shift = rows[("covariate shift, test batches of 16", "mnist1d")]
    assert shift["recommendation"].startswith("not run yet")
    # the index: the table, then the gallery with the report's findings
    text = answer.write_index(tmp_path).read_text()
    assert (
        "| iid, in-distribution test data after full training (batch 64) | MNIST-1D | the population statistics"
        in text
    )
    assert "[momentum-batch-size-full](momentum-batch-size-full/report.html)" in text
    assert ema.text() in text
    assert (tmp_path / "index.html").read_text().startswith("<!DOCTYPE html>")
    saved = json.loads((tmp_path / "answer.json").read_text())
    assert saved["rows"][0]["verdict"] == "hurts"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", saved["written"])


def test_study_all_runs_every_study_then_writes_the_index(studies, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "all", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "== bnbench study tiny --preset quick" in out
    assert (tmp_path / "reports" / "tiny-quick" / "report.md").is_file()
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "Which statistics should BN use at test time?" in index and "tiny-quick" in index
    assert "not run yet (bnbench study momentum-batch-size)" in index


NEEDS_EXTRA = """
from bnbench.study import Study

def jobs():
    try:
        import a_missing_optional_extra  # noqa: F401
    except ImportError as err:
        raise ValueError(f"this study needs an extra: pip install 'bnbench[x]' ({err})") from err

STUDY = Study(name="needs-extra", title="Needs an extra", analyse=lambda df: ("", []),
              presets={"quick": jobs})
"""

BAD = """
from bnbench.study import Study

def jobs():
    raise ValueError("a genuinely bad grid")

STUDY = Study(name="bad", title="Bad", analyse=lambda df: ("", []), presets={"quick": jobs})
"""


def test_study_all_skips_a_study_missing_an_extra_and_fails_a_bad_one(
    studies, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (studies / "needs_extra.py").write_text(NEEDS_EXTRA)
    assert cli.main(["study", "all", "--jobs", "1"]) == 0, "a missing extra is no bad argument"
    captured = capsys.readouterr()
    assert "needs-extra: skipped: this study needs an extra" in captured.err
    summary = [line for line in captured.out.splitlines() if line.startswith("skipped")]
    assert summary == [
        "skipped (an optional extra is missing): needs-extra: this study needs an extra: "
        "pip install 'bnbench[x]' (No module named 'a_missing_optional_extra')"
    ]
    assert (tmp_path / "reports" / "tiny-quick" / "report.md").is_file()
    (studies / "bad.py").write_text(BAD)
    assert cli.main(["study", "all", "--jobs", "1"]) == 2, "a genuine bad argument stays 2"
    assert "bad: a genuinely bad grid" in capsys.readouterr().err
