"""The sweep engine: cache keys, resume after a kill, failures, Dask, partial reports."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from bnbench import cli, study, sweep

TINY = {"dataset": "gaussian_mixture", "model": "mlp", "epochs": 1, "bn_momenta": [0.1],
        "estimators": ["ema", "population"], "test_batch_sizes": [300]}  # fmt: skip


def tiny_jobs(n, **extra):
    return [{"kind": "train", "params": {**TINY, "seed": s, **extra}} for s in range(n)]


def test_grid_is_the_cartesian_product():
    g = sweep.grid(a=[1, 2], b=["x", "y", "z"])
    assert len(g) == 6 and {"a": 2, "b": "z"} in g
    with pytest.raises(ValueError, match="grid axis 'b' must be a non-empty list"):
        sweep.grid(a=[1], b=[])


def test_cache_key_changes_with_every_parameter():
    base = tiny_jobs(1)[0]
    keys = {sweep.job_key(base)}
    for field, value in [("seed", 7), ("epochs", 2), ("model", "cnn"), ("bn_momenta", [0.2]),
                         ("test_batch_sizes", [100]), ("lr", 0.01)]:  # fmt: skip
        job = {"kind": "train", "params": {**base["params"], field: value}}
        keys.add(sweep.job_key(job))
    keys.add(sweep.job_key({"kind": "kernel", "params": base["params"]}))
    assert len(keys) == 8
    assert sweep.job_key(base) == sweep.job_key(json.loads(json.dumps(base)))


def test_run_skips_finished_jobs_and_collects_tidy_rows(tmp_path):
    jobs = tiny_jobs(3)
    assert sweep.run(jobs, tmp_path, n_jobs=2, progress=False) == (3, 0, 0)
    assert sweep.run(jobs, tmp_path, n_jobs=2, progress=False) == (0, 0, 3)
    df = sweep.collect(tmp_path)
    assert len(df) == 3 * 2  # ema and population per run
    assert set(df.seed) == {0, 1, 2} and df.job_key.nunique() == 3
    assert {
        "model",
        "batch_size",
        "estimator",
        "momentum",
        "test_accuracy",
        "train_seconds",
    } <= set(df.columns)


def test_failing_run_is_recorded_and_others_go_on(tmp_path):
    jobs = tiny_jobs(2) + [{"kind": "train", "params": {**TINY, "model": "nope"}}]
    done, failed, _ = sweep.run(jobs, tmp_path, n_jobs=2, progress=False)
    assert (done, failed) == (2, 1)
    ((job, error),) = sweep.failures(tmp_path)
    assert job["params"]["model"] == "nope" and "model must be one of" in error
    assert sweep.collect(tmp_path).job_key.nunique() == 2
    # a re-run retries only the failed one
    assert sweep.run(jobs, tmp_path, n_jobs=1, progress=False) == (0, 1, 2)


def test_empty_grid_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="the grid is empty"):
        sweep.run([], tmp_path)


def test_dask_local_cluster_gives_the_same_table(tmp_path):
    pytest.importorskip("distributed")
    jobs = tiny_jobs(2)
    sweep.run(jobs, tmp_path / "local", n_jobs=2, progress=False)
    assert sweep.run(jobs, tmp_path / "dask", n_jobs=2, scheduler="local", progress=False)[0] == 2
    cols = [
        "job_key",
        "estimator",
        "momentum",
        "test_batch_size",
        "test_accuracy",
        "test_loss",
        "mean_error",
    ]
    a, b = (sweep.collect(tmp_path / d)[cols].sort_values(cols[:4]).reset_index(drop=True)
            for d in ("local", "dask"))  # fmt: skip
    pd.testing.assert_frame_equal(a, b)


STUDY_SCRIPT = textwrap.dedent(
    """
    import sys
    from bnbench.study import Study, main

    TINY = {tiny!r}

    def jobs(n):
        return [{{"kind": "train", "params": {{**TINY, "seed": s}}}} for s in range(n)]

    def analyse(df):
        return f"{{len(df)}} rows, seeds {{sorted(df.seed.unique().tolist())}}", []

    STUDY = Study(name="tiny", title="Tiny study", analyse=analyse,
                  presets={{"quick": lambda: jobs(2), "many": lambda: jobs(12),
                           "empty": lambda: []}})

    if __name__ == "__main__":
        sys.exit(main(STUDY))
    """
)


@pytest.fixture
def studies(tmp_path, monkeypatch):
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "tiny.py").write_text(STUDY_SCRIPT.format(tiny=TINY))
    monkeypatch.setenv("BNBENCH_STUDIES_DIR", str(folder))
    return folder


def test_study_via_cli_writes_a_report(studies, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# Tiny study") and "4 rows, seeds [0, 1]" in text
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    prov = json.loads((out / "provenance.json").read_text())
    assert "study tiny" in prov["command"]
    assert len(pd.read_csv(out / "results.csv")) == 4
    # the report rebuilds from the saved runs alone
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert "4 rows" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["study", "nope"], r"study must be one of \['tiny'\].*got 'nope'"),
        (["study", "tiny", "--preset", "huge"], r"preset must be one of \['empty', 'many', 'quick'\]"),
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
    done, failed, skipped = sweep.run(jobs, out / "runs", n_jobs=2, progress=False)
    assert skipped >= len(finished) and done + skipped == 12 and failed == 0
    df = sweep.collect(out / "runs")
    assert df.job_key.nunique() == 12 and len(df) == 12 * 2
    assert {p.name for p in (out / "runs").glob("*.json")} >= finished


def test_partial_results_build_a_report(studies, tmp_path):
    out = tmp_path / "partial"
    sweep.run(study.load("tiny").jobs("quick")[:1], out / "runs", n_jobs=1, progress=False)
    (out / "study.json").write_text(json.dumps({"study": "tiny", "preset": "quick", "jobs": 2}))
    path = study.build_report(study.load("tiny"), out)
    text = (path / "report.md").read_text()
    assert "1 finished run(s) of 2 (a partial study" in text and "2 rows" in text
