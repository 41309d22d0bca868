"""Faults a study survives, each real where this machine allows: a full disk (a small
tmpfs when root may mount one, else a write that raises), Ctrl-C (SIGINT to a study in
a subprocess), an unreachable scheduler, a Dask worker killed mid-study (scheduler and
workers started with Dask's own CLI on 127.0.0.1), a truncated run record, a read-only
output folder and two study processes on one folder. Each checks that no finished run
is lost, that the message names the fault in one line (no traceback), the exit status,
and that a re-run completes the study."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnbench import cli, study, sweep


def run_study(studies, out, *extra, env=None, timeout=300, popen=False, preset="many", **kwargs):
    """``python tiny.py --preset PRESET --out OUT --jobs 1 *extra`` in a subprocess: run to
    the end, or started (``popen``) with ``kwargs`` for ``subprocess.Popen``."""
    cmd = [sys.executable, str(studies / "tiny.py"), "--preset", preset, "--out", str(out),
           "--jobs", "1", *extra]  # fmt: skip
    full = {**os.environ, **(env or {})}
    if popen:
        return subprocess.Popen(cmd, env=full, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kwargs)  # fmt: skip
    return subprocess.run(cmd, env=full, text=True, capture_output=True, timeout=timeout)


def records(out):
    """Every record file of ``out/runs``, parsed (a file that does not parse fails)."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*.json"))]


def wait_for_records(out, n, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((Path(out) / "runs").glob("*.json"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} runs finished in {timeout} s")


def no_temporary_files(out):
    left = [p for p in Path(out).rglob("*") if p.name.endswith(".tmp")]
    assert not left, f"temporary files left behind: {left}"


def one_line(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    return lines[-1]


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


def test_disk_full_on_a_small_tmpfs(studies, tmp_path):
    """The issue's reproduction: an output folder on a tiny tmpfs. The study stops with
    exit status 3 and one line saying the disk is full and how many runs are kept; no
    temporary file stays; after freeing space (a larger remount) the same command
    completes the study without recomputing the kept runs."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "40k"):
        pytest.skip("cannot mount a tmpfs here (not root): test_disk_full_when_a_write_fails")
    try:
        out = disk / "out"
        done = run_study(studies, out)
        assert done.returncode == study.EXIT_FAULT, done.stderr
        line = one_line(done.stderr)
        assert "disk is full" in line and "free space and re-run" in line
        kept = records(out)
        assert kept and all(r["status"] == "ok" for r in kept)
        assert f"{len(kept)} of 12 runs saved" in line or "runs are saved" in line
        no_temporary_files(disk)
        subprocess.run(["mount", "-o", "remount,size=50m", str(disk)], check=True)
        again = run_study(studies, out)
        assert again.returncode == 0, again.stderr
        assert f"{12 - len(kept)} run(s) done, {len(kept)} already done" in again.stdout
        assert len(records(out)) == 12 and (out / "report.md").is_file()
        no_temporary_files(disk)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_disk_full_when_a_write_fails(studies, tmp_path, capsys):
    """The same fault on any machine: the fourth record write raises ENOSPC, then the
    report's writes do too."""
    from bnbench import report

    out = tmp_path / "out"
    argv = ["study", "tiny", "--preset", "many", "--out", str(out), "--jobs", "1"]
    real_write = sweep.Store.write
    calls = {"n": 0}

    def full(self, record):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep.Store, "write", full)
        assert cli.main(argv) == study.EXIT_FAULT
    line = one_line(capsys.readouterr().err)
    assert "the disk is full" in line and "3 of 12 runs saved" in line
    assert len(records(out)) == 3
    no_temporary_files(out)

    def no_room(path, text):  # the runs fit, the report does not
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "write_text", no_room)
        assert cli.main(argv) == study.EXIT_FAULT
    line = one_line(capsys.readouterr().err)
    assert "the report in" in line and "disk is full" in line and "all 12 runs are saved" in line
    no_temporary_files(out)
    assert cli.main(["report", str(out)]) == 0
    assert len(records(out)) == 12


def test_ctrl_c_keeps_finished_runs_and_writes_a_partial_report(studies, tmp_path):
    out = tmp_path / "out"
    # runs of about a second: the interrupt lands mid-study however loaded the machine is;
    # SIGINT restored to its default in the child, as a terminal's Ctrl-C finds it (a test
    # runner started in the background by a non-interactive shell ignores SIGINT, and a
    # child would inherit that)
    proc = run_study(studies, out, popen=True, start_new_session=True, preset="slow",
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        wait_for_records(out, 2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == study.EXIT_INTERRUPTED == 130
    line = one_line(stderr)
    kept = records(out)
    assert line.startswith("tiny: interrupted:") and f"{len(kept)} of 8 runs saved" in line
    assert "re-run the same command to resume" in line and "partial report" in line
    assert all(r["status"] == "ok" for r in kept)
    assert "a partial study" in (out / "report.md").read_text()
    no_temporary_files(out)
    assert not list((out / "runs").glob("*.claim"))
    again = run_study(studies, out, preset="slow")
    assert again.returncode == 0 and len(records(out)) == 8
    assert f"{len(kept)} already done" in again.stdout


def test_an_unreachable_scheduler_fails_fast_naming_the_address(studies, tmp_path):
    t0 = time.perf_counter()
    done = run_study(studies, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:1",
                     env={"BNBENCH_CONNECT_TIMEOUT": "2"})  # fmt: skip
    assert time.perf_counter() - t0 < 60
    assert done.returncode == study.EXIT_BAD_ARGUMENT, done.stderr
    line = one_line(done.stderr)
    assert "scheduler 'tcp://127.0.0.1:1' did not answer within 2 s" in line
    assert "check the address" in line
    assert not list((tmp_path / "out" / "runs").glob("*.json"))


def _start(cmd, log):
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_dask_worker_killed_mid_study(studies, tmp_path):
    """Scheduler and two workers from Dask's own CLI on 127.0.0.1; one worker is killed
    with SIGKILL after a few runs: the study finishes every run on the other one."""
    dask = shutil.which("dask", path=str(Path(sys.executable).parent))
    if dask is None:
        pytest.skip("the dask command is not installed (bnbench[distributed])")
    scheduler_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 (closed in finally)
    procs = [_start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)], log)]  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not scheduler_file.exists():
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(_start([dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                 "--no-dashboard", "--host", "127.0.0.1"], log))  # fmt: skip
        out = tmp_path / "out"
        proc = run_study(studies, out, "--scheduler", address, "--jobs", "2", popen=True)
        wait_for_records(out, 3, timeout=180)
        victim = procs[1]
        for pid in [victim.pid, *_descendants(victim.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        kept = records(out)
        assert len(kept) == 12 and all(r["status"] == "ok" for r in kept)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid == parent:
                    out.append(int(entry))
                    todo.append(int(entry))
    return out


def test_a_truncated_record_is_named_and_recomputed(studies, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    first = sorted((out / "runs").glob("*.json"))[0]
    first.write_text(first.read_text()[:100])  # a crash mid-write on a file system without rename
    assert cli.main(["report", str(out)]) == 0
    head = (out / "report.md").read_text().splitlines()[2]
    assert f"1 run record(s) cannot be read and count as not done: {first.name}" in head
    assert "1 finished run(s) of 2" in head
    capsys.readouterr()
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    assert "1 run(s) done, 1 already done" in capsys.readouterr().out
    assert all(r["status"] == "ok" for r in records(out)) and len(records(out)) == 2


def test_a_read_only_output_folder(studies, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0
    before = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    (out / "study.json").unlink()  # another preset would be refused anyway; make it writable work
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "--bind", "-o", "ro", str(out), str(out)], capture_output=True
    ).returncode == 0  # fmt: skip
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions and cannot bind-mount read-only here")
        out.chmod(0o555)
    try:
        code = cli.main(["study", "tiny", "--preset", "many", "--out", str(out), "--jobs", "1"])
        assert code == study.EXIT_BAD_ARGUMENT
        line = one_line(capsys.readouterr().err)
        assert "out must be a writable folder" in line and str(out) in line
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=True)
        else:
            out.chmod(0o755)
    assert {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")} == before
    assert cli.main(["study", "tiny", "--preset", "quick", "--out", str(out), "--jobs", "1"]) == 0


def test_two_study_processes_share_one_folder(studies, tmp_path):
    """Two identical commands on one folder: every run is computed once, by one of them,
    and both end with the full report."""
    out = tmp_path / "out"
    procs = [run_study(studies, out, popen=True, preset="slow") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outputs]
    done = [int(o.split("tiny: ")[1].split(" run(s) done")[0]) for o, _ in outputs]
    assert sum(done) == 8 and min(done) >= 1  # both worked, none twice
    assert len(records(out)) == 8 and not list((out / "runs").glob("*.claim"))
    assert "8 finished run(s)" in (out / "report.md").read_text()


def test_a_dead_owners_claim_is_taken_over(tmp_path):
    from bnbench.claims import Claims

    claims = Claims(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = {**claims.me, "pid": dead.pid}
    claims.path("k").write_text(json.dumps({"owner": owner, "claimed_unix": time.time()}))
    assert claims.acquire("k") and claims.read("k")["owner"] == claims.me
    other = Claims(tmp_path)
    other.me = {**other.me, "pid": os.getppid()}  # a live process that is not this one
    assert not other.acquire("k") and other.held_elsewhere("k")
    claims.release("k")
    assert other.acquire("k")


def test_a_local_worker_killed_mid_study(studies, tmp_path):
    """kill -9 of the local pool's worker: its run is recorded as failed with the reason,
    the study goes on with a new pool and ends with exit status 1; a re-run completes."""
    out = tmp_path / "out"
    proc = run_study(studies, out, popen=True, preset="slow")
    try:
        wait_for_records(out, 2)
        workers = [p for p in _descendants(proc.pid)]
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == study.EXIT_FAILED_RUNS, stderr
    kept = records(out)
    lost = [r for r in kept if r["status"] == "failed"]
    assert len(kept) == 8 and lost and all("died or was lost" in r["error"] for r in lost)
    again = run_study(studies, out, preset="slow")
    assert again.returncode == 0 and all(r["status"] == "ok" for r in records(out))
