"""Studies (bnbench.study): the `bnbench study` command, reports of a folder's runs, resume
after a kill, presets that never mix, partial and disagreeing runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import TINY

from bnbench import cli, study, sweep


def tiny_jobs(n, **extra):
    return [{"kind": "train", "params": {**TINY, "seed": s, **extra}} for s in range(n)]


def test_study_via_cli_writes_a_report(studies, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# Tiny study") and "4 rows, seeds [0, 1]" in text
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    prov = json.loads((out / "provenance.json").read_text())
    assert "study tiny" in prov["report"]["command"]
    assert len(pd.read_csv(out / "results.csv")) == 4
    # the report rebuilds from the saved runs alone
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert "4 rows" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["study", "nope"], r"study must be one of \['tiny'\].*got 'nope'"),
        (["study", "tiny", "--preset", "huge"], r"preset must be one of \['empty', 'many', 'quick', 'slow'\]"),
        (["study", "tiny", "--preset", "empty"], r"the grid is empty"),
        (["study", "tiny", "--out", "/proc/forbidden"], r"out must be a writable folder"),
    ],
)  # fmt: skip
def test_bad_study_arguments(studies, argv, match, capsys):
    assert cli.main(argv) == 2
    assert pytest.importorskip("re").search(match, capsys.readouterr().err)


def test_report_from_a_folder_without_runs(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "cannot build a report" in capsys.readouterr().err


def _children(pid):
    """Pids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_kill_9_loses_only_runs_in_flight(studies, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(studies / "tiny.py"),
        "--preset",
        "many",
        "--out",
        str(out),
        "--jobs",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 3:
        time.sleep(0.05)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the study process alone, as a user's kill -9 would
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(
        os.path.exists(f"/proc/{w}") and not _zombie(w) for w in workers
    ):
        time.sleep(0.1)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and not _zombie(w)]
    os.killpg(proc.pid, signal.SIGKILL) if alive else None
    assert not alive, "workers must not outlive a killed study"
    finished = {p.name for p in (out / "runs").glob("*.json")}
    assert 3 <= len(finished) < 12, "the kill should land mid-study"
    for p in (out / "runs").glob("*.json"):
        assert json.loads(p.read_text())["status"] == "ok"  # no partial record
    # resume: finished runs are skipped, nothing is duplicated
    jobs = study.load("tiny").jobs("many")
    done, failed, skipped = sweep.run(jobs, out / "runs", n_jobs=1, progress=False)
    assert skipped >= len(finished) and done + skipped == 12 and failed == 0
    df = sweep.collect(out / "runs")
    assert df.job_key.nunique() == 12 and len(df) == 12 * 2
    assert {p.name for p in (out / "runs").glob("*.json")} >= finished


def test_default_out_names_the_preset_and_a_folder_never_mixes_presets(
    studies, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "tiny", "--preset", "quick", "--jobs", "1"]) == 0
    out = tmp_path / "reports" / "tiny-quick"
    assert "Preset `quick`: 2 finished run(s)" in (out / "report.md").read_text()
    # another preset into the same folder is refused, naming both
    code = cli.main(["study", "tiny", "--preset", "many", "--out", str(out), "--jobs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds runs of study 'tiny', preset 'quick'" in err and "'many'" in err
    assert len(list((out / "runs").glob("*.json"))) == 2  # nothing was run


def test_report_holds_only_its_presets_runs(studies, tmp_path):
    # a run of another configuration left in runs/ (e.g. copied in) is not reported
    out = tmp_path / "out"
    s = study.load("tiny")
    sweep.run(s.jobs("quick") + tiny_jobs(1, epochs=3), out / "runs", n_jobs=1, progress=False)
    (out / "study.json").write_text(json.dumps({"study": "tiny", "preset": "quick"}))
    text = (study.build_report(s, out) / "report.md").read_text()
    assert "Preset `quick`: 2 finished run(s)." in text and "4 rows" in text


def test_report_says_when_its_runs_disagree(studies, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    assert "runs from" not in (out / "report.md").read_text().split("\n")[2]
    first = sorted((out / "runs").glob("*.json"))[0]
    record = json.loads(first.read_text())
    record["provenance"]["git_commit"] = "0" * 40
    first.write_text(json.dumps(record))
    assert cli.main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "runs from 2 commits" in text and "0" * 40 in text
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["preset"] == "quick" and len(prov["runs"]["git_commit"]) == 2
    assert any("2 commits" in n for n in prov["runs_disagree"])


def test_partial_results_build_a_report(studies, tmp_path):
    out = tmp_path / "partial"
    sweep.run(study.load("tiny").jobs("quick")[:1], out / "runs", n_jobs=1, progress=False)
    (out / "study.json").write_text(json.dumps({"study": "tiny", "preset": "quick", "jobs": 2}))
    path = study.build_report(study.load("tiny"), out)
    text = (path / "report.md").read_text()
    assert "1 finished run(s) of 2 (a partial study" in text and "2 rows" in text


def test_the_newest_attempt_wins_and_stale_runs_are_flagged(studies, tmp_path):
    """After a code change a job that now fails is reported as failed, not with the old
    code's numbers; and a report flags runs computed by another source or library
    versions than the environment building it."""
    out = tmp_path / "out"
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    old, other = sorted((out / "runs").glob("*.json"))
    record = json.loads(old.read_text())
    # the same experiment, attempted later by edited code, failed
    failed = {**record, "key": "newer" + record["key"][5:], "status": "failed",
              "error": "Traceback ...\nValueError: the edited code breaks",
              "finished_unix": record["finished_unix"] + 60}  # fmt: skip
    failed.pop("result")
    (out / "runs" / f"{failed['key']}.json").write_text(json.dumps(failed))
    assert [r["key"] for r in sweep.latest(out / "runs")] == [json.loads(other.read_text())["key"]]
    ((job, error),) = sweep.failures(out / "runs")
    assert "the edited code breaks" in error
    assert cli.main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Failed runs" in text and "ValueError: the edited code breaks" in text
    assert "Preset `quick`: 1 finished run(s) of 2" in text
    # a record from another bnbench source is flagged on the report's first line
    record = json.loads(other.read_text())
    record["provenance"]["code"] = "0123456789abcdef"
    other.write_text(json.dumps(record))
    assert cli.main(["report", str(out)]) == 0
    head = (out / "report.md").read_text().splitlines()[2]
    assert "1 of 1 runs were computed by another version of the bnbench source" in head
