"""bnbench.executors: the connect timeout from the environment or refused by name, the
local process pool running submitted work, and a Dask scheduler that does not answer an
error naming its address."""

import operator
import time

import pytest

from bnbench import executors


def test_connect_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv("BNBENCH_CONNECT_TIMEOUT", raising=False)
    assert executors.connect_timeout() == executors.DEFAULT_CONNECT_TIMEOUT == 10.0
    monkeypatch.setenv("BNBENCH_CONNECT_TIMEOUT", "2.5")
    assert executors.connect_timeout() == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("BNBENCH_CONNECT_TIMEOUT", bad)
        with pytest.raises(ValueError, match=f"BNBENCH_CONNECT_TIMEOUT .* got '{bad}'"):
            executors.connect_timeout()


def test_the_local_pool_runs_submitted_work():
    pool = executors.make(None, 1)
    assert isinstance(pool, executors.Local) and pool.n_jobs == 1
    try:
        futures = {pool.submit(operator.mul, 6, 7), pool.submit(pow, 2, 10)}
        done, deadline = set(), time.monotonic() + 120
        while futures - done and time.monotonic() < deadline:
            done |= pool.wait_first(futures - done, timeout=10)
        assert sorted(f.result() for f in done) == [42, 1024]
    finally:
        pool.close()


def test_an_unreachable_scheduler_is_an_error_naming_it():
    pytest.importorskip("distributed")
    address = "tcp://127.0.0.1:9"  # the discard port: nothing listens here
    with pytest.raises(
        executors.SchedulerUnreachable,
        match=r"scheduler 'tcp://127\.0\.0\.1:9' did not answer within 0\.5 s",
    ):
        executors.Dask(address, 1, timeout=0.5)
    assert issubclass(executors.SchedulerUnreachable, ValueError)  # a bad argument
