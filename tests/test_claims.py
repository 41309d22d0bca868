"""bnbench.claims: a run claimed once per runs folder; a live owner's claim respected
(this host's by pid and start time, another host's always), a dead or recycled owner's
claim and a stale unreadable one taken over, a claim being written left alone."""

import json
import os
import subprocess
import sys
import time

from bnbench import claims


def write_claim(folder, key, who):
    (folder / f"{key}{claims.SUFFIX}").write_text(json.dumps({"owner": who}))


def test_a_run_is_claimed_once_and_released(tmp_path):
    a, b = claims.Claims(tmp_path), claims.Claims(tmp_path)
    assert a.acquire("run1")
    assert json.loads((tmp_path / "run1.claim").read_text())["owner"] == claims.owner()
    assert not b.acquire("run1")  # held by a live owner (this very process)
    assert not a.held_elsewhere("run1")  # its own claim
    assert a.acquire("run2") and a.held == {"run1", "run2"}
    a.release("run1")
    assert not (tmp_path / "run1.claim").exists() and a.held == {"run2"}
    b.release("run2")  # not b's: left alone
    assert (tmp_path / "run2.claim").exists()
    a.release_all()
    assert not list(tmp_path.iterdir()) and a.held == set()


def test_owner_is_this_process_with_its_start_time():
    me = claims.owner()
    assert me["pid"] == os.getpid() and isinstance(me["start"], int)
    assert claims.alive(me)


def test_a_dead_owners_claim_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid names no process now
    me = claims.owner()
    dead = {**me, "pid": child.pid, "start": None}
    assert not claims.alive(dead)
    write_claim(tmp_path, "k", dead)
    c = claims.Claims(tmp_path)
    assert not c.held_elsewhere("k")
    assert c.acquire("k") and c.read("k")["owner"] == me


def test_a_recycled_pid_is_not_the_owner(tmp_path):
    recycled = {**claims.owner(), "start": claims.owner()["start"] + 1}
    assert not claims.alive(recycled)
    write_claim(tmp_path, "k", recycled)
    assert claims.Claims(tmp_path).acquire("k")


def test_another_live_process_or_another_host_is_respected(tmp_path):
    parent = os.getppid()
    live = {"host": claims.owner()["host"], "pid": parent, "start": claims._start_time(parent)}
    elsewhere = {"host": claims.owner()["host"] + "-other", "pid": 1, "start": 0}
    for key, who in (("live", live), ("elsewhere", elsewhere)):
        write_claim(tmp_path, key, who)
        c = claims.Claims(tmp_path)
        assert claims.alive(who) and c.held_elsewhere(key) and not c.acquire(key), key
    for unreadable in (None, "someone", {"host": claims.owner()["host"], "pid": "x"}):
        assert claims.alive(unreadable)


def test_an_unreadable_claim_is_left_while_young_and_taken_over_when_stale(tmp_path):
    path = tmp_path / "k.claim"
    path.write_text("{half a claim")  # as if being written right now
    c = claims.Claims(tmp_path)
    assert c.read("k") is None and c.held_elsewhere("k") and not c.acquire("k")
    old = time.time() - 60
    os.utime(path, (old, old))
    assert not c.held_elsewhere("k") and c.acquire("k")
    assert c.read("k")["owner"] == claims.owner()
