"""The answer page: computed from findings.json files, never typed; a row whose study has
not been run says so; ``bnbench study all`` runs every study then writes the index."""

import json

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
    assert small["recommendation"].startswith("either: no clear difference")
    mnist = rows[("iid, in-distribution test data after full training (batch 64)", "mnist")]
    assert mnist["recommendation"] == "not run yet (bnbench study momentum-batch-size)"
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
    assert json.loads((tmp_path / "answer.json").read_text())[0]["verdict"] == "hurts"


def test_study_all_runs_every_study_then_writes_the_index(studies, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "all", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "== bnbench study tiny --preset quick" in out
    assert (tmp_path / "reports" / "tiny-quick" / "report.md").is_file()
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "Which statistics should BN use at test time?" in index and "tiny-quick" in index
    assert "not run yet (bnbench study momentum-batch-size)" in index
