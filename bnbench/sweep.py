"""Grid -> jobs -> results table: caching, resume, local or Dask execution.

A job is ``{"kind": KIND, "params": {...}}``; :data:`KINDS` maps a kind to the function
that runs it and the function that turns its result into tidy rows. Every finished job
is written at once to ``runs/<key>.json`` (atomically: a temporary file, then a rename),
keyed by a hash of the job and the package version, so that:

* re-running a study skips finished jobs (failed ones are tried again);
* a study killed at any moment (``kill -9`` included) loses at most the jobs in flight
  and never leaves a partial or duplicated record;
* a job that raises is recorded with its traceback and the others go on.
"""

import hashlib
import importlib
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd

#: kind -> (module, run function, rows function)
KINDS = {
    "train": ("bnbench.train", "run_job", "result_rows"),
    "kernel": ("bnbench.throughput", "run_job", "result_rows"),
}


def grid(**axes):
    """The Cartesian product of ``axes`` (name -> list of values) as a list of dicts."""
    for name, values in axes.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid axis {name!r} must be a non-empty list, got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def train_jobs(fixed, **axes):
    """Training jobs: ``fixed`` TrainConfig fields plus every combination of ``axes``
    (field -> list of values)."""
    return [{"kind": "train", "params": {**fixed, **g}} for g in grid(**axes)]


def _version():
    from . import __version__

    return __version__


def job_key(job):
    """A short hash of the job (every parameter) and the bnbench version."""
    text = json.dumps({"job": job, "version": _version()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _function(kind, which):
    if kind not in KINDS:
        raise ValueError(f"job kind must be one of {sorted(KINDS)}, got {kind!r}")
    module, run_fn, rows_fn = KINDS[kind]
    return getattr(importlib.import_module(module), run_fn if which == "run" else rows_fn)


def execute(job):
    """Run one job, never raising: returns its record (status, result or error, time)."""
    t0 = time.perf_counter()
    try:
        result = _function(job["kind"], "run")(job["params"])
        record = {"status": "ok", "result": result}
    except Exception:
        record = {"status": "failed", "error": traceback.format_exc()}
    return {
        "key": job_key(job),
        "job": job,
        "version": _version(),
        "seconds": time.perf_counter() - t0,
        "finished_unix": time.time(),
        **record,
    }


class Store:
    """One JSON file per job under ``folder``, written atomically."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key):
        return self.folder / f"{key}.json"

    def write(self, record):
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(record["key"]))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def read(self, key):
        try:
            with open(self.path(key)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def records(self):
        for path in sorted(self.folder.glob("*.json")):
            try:
                with open(path) as f:
                    yield json.load(f)
            except (OSError, ValueError):  # unreadable: treated as not done
                continue

    def done(self, key):
        record = self.read(key)
        return record is not None and record.get("status") == "ok"


def _init_worker(threads):
    import numba

    numba.set_num_threads(threads)
    _die_with_parent()


def _die_with_parent():
    """On Linux, have the kernel kill this worker when the study process dies (even by
    ``kill -9``), instead of leaving it orphaned; elsewhere a no-op."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _local_executor(n_jobs, threads):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # spawn, not fork: forking after Numba's OpenMP pool started can deadlock
    pool = ProcessPoolExecutor(
        n_jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)
    )

    def submit(job):
        return pool.submit(execute, job)

    def completed(futures):
        from concurrent.futures import as_completed

        return as_completed(futures)

    return submit, completed, lambda: pool.shutdown(cancel_futures=True)


def _dask_executor(address, n_jobs, threads):
    from distributed import Client, LocalCluster, as_completed

    if address == "local":
        cluster = LocalCluster(
            n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        cluster, client = None, Client(address)
    client.run(_init_worker, threads)

    def close():
        client.close()
        if cluster is not None:
            cluster.close()

    return (lambda job: client.submit(execute, job, pure=False)), as_completed, close


def run(jobs, folder, n_jobs=None, scheduler=None, progress=True):
    """Run every job not yet finished in ``folder``; returns ``(done, failed, skipped)``.

    ``n_jobs`` workers (default: the number of cores) each get ``cores // n_jobs`` Numba
    threads so the machine is not oversubscribed. ``scheduler``: a Dask scheduler
    address, or ``"local"`` for a ``LocalCluster``; ``None`` uses a local process pool.
    """
    if not jobs:
        raise ValueError("the grid is empty: no jobs to run")
    store = Store(folder)
    cores = os.cpu_count() or 1
    n_jobs = n_jobs or cores
    if n_jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {n_jobs}")
    threads = max(1, cores // n_jobs)
    unique = {job_key(j): j for j in jobs}
    todo = [j for k, j in unique.items() if not store.done(k)]
    skipped = len(unique) - len(todo)
    done = failed = 0
    if not todo:
        return done, failed, skipped
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="run", disable=not (progress and sys.stderr.isatty()))
    if scheduler is None:
        submit, completed, close = _local_executor(min(n_jobs, len(todo)), threads)
    else:
        submit, completed, close = _dask_executor(scheduler, n_jobs, threads)
    try:
        futures = [submit(j) for j in todo]
        for fut in completed(futures):
            record = fut.result()
            store.write(record)
            if record["status"] == "ok":
                done += 1
            else:
                failed += 1
            running = min(n_jobs, len(todo) - done - failed)
            bar.set_postfix(done=done, running=running, failed=failed, skipped=skipped)
            bar.update(1)
    finally:
        bar.close()
        close()
    return done, failed, skipped


def collect(folder):
    """The tidy results table of every finished job in ``folder`` (partial studies too):
    one row per (job, evaluation), every parameter a column."""
    rows = []
    for record in Store(folder).records():
        if record.get("status") != "ok":
            continue
        job = record["job"]
        for row in _function(job["kind"], "rows")(record["result"]):
            rows.append({"job_key": record["key"], **row})
    return pd.DataFrame(rows)


def failures(folder):
    """``(job, error)`` for every job whose last attempt failed."""
    return [(r["job"], r["error"]) for r in Store(folder).records() if r.get("status") == "failed"]
