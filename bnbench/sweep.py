"""Grid -> jobs -> results table: caching, resume, local or Dask execution.

A job is ``{"kind": KIND, "params": {...}}``; :data:`KINDS` maps a kind to the module
that runs it (``run_job``), turns its result into tidy rows (``result_rows``) and, if it
defines ``resolve_params``, fills in every default of its parameters. Every finished job is
written at once to ``runs/<key>.json`` (atomically: a temporary file, then a rename), so
that:

* re-running a study skips finished jobs (failed ones are tried again);
* a study killed at any moment (``kill -9`` included) loses at most the jobs in flight
  and never leaves a partial or duplicated record;
* a job that raises is recorded with its traceback and the others go on.

The key (:func:`job_key`) hashes everything that can change a result: the fully
resolved parameters (canonical types: ``np.int64(64)`` and ``64`` hash alike), the
identity of the code (a hash of the package's source files), the versions of the
libraries that compute it, the Numba thread count (reductions merge per-thread partials,
so bits depend on it) and, for machine-specific kinds (kernel timings), the machine.
Editing the code or upgrading numba therefore means re-running, never a silently stale
result. Each record also carries its own provenance (commit, dirty flag, host, CPU,
threads, versions), so a report can say when its runs disagree.
"""

import functools
import hashlib
import importlib
import inspect
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

#: kind -> module with ``run_job``, ``result_rows`` and optionally ``resolve_params``
KINDS = {
    "train": "bnbench.train",
    "kernel": "bnbench.throughput",
    "torch": "bnbench.torch.jobs",  # needs the torch extra
    "step": "bnbench.step_timing",
}
#: kinds whose results belong to one machine (timings): the key includes the machine
MACHINE_SPECIFIC = {"kernel", "step"}
#: libraries whose version can change a result
RESULT_LIBRARIES = ("numpy", "numba", "llvmlite", "mnist1d", "torch")


def load_factory(path):
    """The callable named by ``"package.module:factory"``, or a clear error."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"a factory must be given as 'package.module:factory', got {path!r}")
    module, name = path.split(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load factory {path!r}: {err}") from err
    if not callable(factory):
        raise ValueError(f"factory {path!r} is not callable")
    return factory


def source_hash(path):
    """A hash of the source file of the module of factory ``path``
    (``"package.module:factory"``) and, if the factory is defined in another file, of
    that file too; a path that does not load is a ``ValueError``."""
    factory = load_factory(path)
    module = importlib.import_module(path.split(":")[0])
    files = []
    for obj in (module, factory):
        try:
            name = inspect.getsourcefile(obj) or getattr(obj, "__file__", None)
        except TypeError:  # a built-in, or a callable object of a built-in class
            name = None
        if obj is module and name is None:
            raise ValueError(f"factory {path!r}: module {module.__name__!r} has no source file")
        if name is not None and name not in files:
            files.append(name)
    h = hashlib.sha256()
    for name in files:
        with open(name, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


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


def canonical(value):
    """``value`` with JSON-native types only: NumPy scalars become Python numbers,
    tuples and arrays lists, mappings dicts with string keys."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [canonical(v) for v in value]
    return value


def _module(kind):
    if kind not in KINDS:
        raise ValueError(f"job kind must be one of {sorted(KINDS)}, got {kind!r}")
    return importlib.import_module(KINDS[kind])


def resolved(job):
    """The job with every parameter default filled in, in canonical types. A job whose
    parameters do not resolve (an invalid configuration) keeps them as given: it will
    fail when run, and its failure is recorded under that key."""
    kind, params = job["kind"], job["params"]
    resolve = getattr(_module(kind), "resolve_params", None)
    if resolve is not None:
        try:
            params = resolve(params)
        except (TypeError, ValueError):
            pass
    return {"kind": kind, "params": canonical(params)}


def _digest(obj):
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def code_hash():
    """A hash of every source file of the installed bnbench package."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def library_versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in RESULT_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def machine():
    """What identifies this machine for timings: host name, CPU model, core count."""
    import platform

    from .sysinfo import cpu_model

    return {"host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}


def environment(kind, threads):
    """Everything besides the parameters that can change a job's result."""
    env = {"code": code_hash(), "versions": library_versions(), "threads": int(threads)}
    if kind in MACHINE_SPECIFIC:
        env["machine"] = machine()
    return env


def config_key(job):
    """A hash of the resolved job alone: the same experiment, whatever code ran it."""
    return _digest(resolved(job))


def job_key(job, threads=1):
    """The cache key: the resolved job plus :func:`environment` (code, versions,
    thread count, machine where it matters)."""
    return _digest({"job": resolved(job), "env": environment(job["kind"], threads)})


def _function(kind, which):
    return getattr(_module(kind), "run_job" if which == "run" else "result_rows")


def run_provenance():
    """Where and with what a job ran: commit and dirty flag, host, CPU, Numba threads
    (of the calling thread) and library versions."""
    import numba

    from .sysinfo import git_state

    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "code": code_hash(),
        **machine(),
        "threads": numba.get_num_threads(),
        "versions": library_versions(),
    }


def execute(job, threads=1, meta=None):
    """Run one job with ``threads`` Numba threads, never raising: returns its record
    (status, result or error, seconds, provenance, and ``meta`` such as the study); the
    caller adds the cache ``key``.

    The thread count is set here, in the thread that runs the job: Numba's setting is
    per thread, and Dask runs jobs on its pool threads, not the worker's main thread."""
    import numba

    numba.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        result = _function(job["kind"], "run")(job["params"])
        record = {"status": "ok", "result": result}
    except Exception:
        record = {"status": "failed", "error": traceback.format_exc()}
    return {
        "config_key": config_key(job),
        "job": job,
        **(meta or {}),
        "seconds": time.perf_counter() - t0,
        "finished_unix": time.time(),
        "provenance": run_provenance(),
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


def _init_worker():
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
    pool = ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init_worker)

    def submit(job, meta):
        return pool.submit(execute, job, threads, meta)

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

    def submit(job, meta):
        return client.submit(execute, job, threads, meta, pure=False)

    def close():
        client.close()
        if cluster is not None:
            cluster.close()

    return submit, as_completed, close


def threads_per_job(n_jobs=None):
    """Numba threads each of ``n_jobs`` parallel jobs gets: ``cores // n_jobs``, at least 1."""
    cores = os.cpu_count() or 1
    return max(1, cores // (n_jobs or cores))


def run(jobs, folder, n_jobs=None, scheduler=None, progress=True, meta=None):
    """Run every job not yet finished in ``folder``; returns ``(done, failed, skipped)``.

    ``n_jobs`` workers (default: the number of cores) each get ``cores // n_jobs`` Numba
    threads so the machine is not oversubscribed; the thread count is part of the cache
    key. ``scheduler``: a Dask scheduler address, or ``"local"`` for a ``LocalCluster``;
    ``None`` uses a local process pool. ``meta`` (e.g. study and preset) is stored in
    every record.
    """
    if not jobs:
        raise ValueError("the grid is empty: no jobs to run")
    store = Store(folder)
    n_jobs = n_jobs or os.cpu_count() or 1
    if n_jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {n_jobs}")
    threads = threads_per_job(n_jobs)
    unique = {job_key(j, threads): j for j in jobs}
    todo = {k: j for k, j in unique.items() if not store.done(k)}
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
        keys = {submit(j, meta): k for k, j in todo.items()}
        for fut in completed(list(keys)):
            record = fut.result()
            record["key"] = keys[fut]  # the key the parent looks for when resuming
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


def latest(folder, jobs=None):
    """The newest finished record of each experiment (:func:`config_key`) in ``folder``;
    with ``jobs``, only those of the given jobs. Records written by an older bnbench (no
    ``config_key``) are left out. Several records of one experiment (say, before and
    after a code change) reduce to the newest."""
    wanted = None if jobs is None else {config_key(j) for j in jobs}
    newest = {}
    for record in Store(folder).records():
        ck = record.get("config_key")
        if record.get("status") != "ok" or ck is None or (wanted is not None and ck not in wanted):
            continue
        if ck not in newest or record["finished_unix"] > newest[ck]["finished_unix"]:
            newest[ck] = record
    return list(newest.values())


def table(records):
    """The tidy results table of ``records``: one row per (job, evaluation), every
    parameter a column."""
    rows = []
    for record in records:
        job = record["job"]
        for row in _function(job["kind"], "rows")(record["result"]):
            rows.append({"job_key": record["key"], **row})
    return pd.DataFrame(rows)


def collect(folder, jobs=None):
    """The tidy results table of the newest finished record of each experiment in
    ``folder`` (of ``jobs`` only, if given); partial studies too."""
    return table(latest(folder, jobs))


def failures(folder, jobs=None):
    """``(job, error)`` for every job (of ``jobs``, if given) whose last attempt failed
    and that has no finished record."""
    records = list(Store(folder).records())
    wanted = None if jobs is None else {config_key(j) for j in jobs}
    ok = {r.get("config_key") for r in records if r.get("status") == "ok"}
    return [
        (r["job"], r["error"])
        for r in records
        if r.get("status") == "failed"
        and r.get("config_key") not in ok
        and (wanted is None or r.get("config_key") in wanted)
    ]
