"""Grid -> jobs -> results table: caching, resume, local or Dask execution.

A job is ``{"kind": KIND, "params": {...}}``; :data:`KINDS` maps a kind to the module
that runs it (``run_job``), turns its result into tidy rows (``result_rows``) and, if it
defines ``resolve_params``, fills in every default of its parameters. Every finished job is
written at once to ``runs/<key>.json`` (atomically: a temporary file, then a rename), so
that:

* re-running a study skips finished jobs (failed ones are tried again), and several
  study processes on one folder share the work (:mod:`bnbench.claims`);
* a study killed at any moment (``kill -9`` included) loses at most the jobs in flight
  and never leaves a partial or duplicated record;
* a job that raises is recorded with its traceback and the others go on.

The key (:func:`job_key`) hashes everything that can change a result: the fully
resolved parameters (canonical types: ``np.int64(64)`` and ``64`` hash alike), the
identity of the code (a hash of the package's source files), the versions of the
libraries that compute it, the Numba thread count (reductions merge per-thread partials,
so bits depend on it), the CPU model and, for machine-specific kinds (kernel timings),
the whole machine (:func:`environment` says what is not keyed).
Editing the code or upgrading numba therefore means re-running, never a silently stale
result. Each record also carries its own provenance (commit, dirty flag, host, CPU,
threads, versions), so a report can say when its runs disagree.
"""

import errno
import functools
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from .specs import grid, load_factory, source_hash  # noqa: F401  (part of the sweep API)

#: kind -> module with ``run_job``, ``result_rows`` and optionally ``resolve_params``
KINDS = {
    "train": "bnbench.train",
    "kernel": "bnbench.perf.kernels",
    "torch": "bnbench.torch.jobs",  # needs the torch extra
    "step": "bnbench.perf.steps",
    "surgery": "bnbench.surgery",
    "torch_surgery": "bnbench.torch.surgery",  # needs the torch extra
    "merging": "bnbench.torch.merging",  # needs the torch extra
}
#: kinds whose results belong to one machine (timings): the key includes the machine
MACHINE_SPECIFIC = {"kernel", "step"}
#: libraries whose version can change a result
RESULT_LIBRARIES = ("numpy", "numba", "llvmlite", "scipy", "mnist1d", "mlxtend", "torch")


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
    return source_tree_hash(Path(__file__).resolve().parent)


def source_tree_hash(root):
    """A hash of the names and bytes of every ``.py`` file under ``root``."""
    root = Path(root)
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
    """Everything besides the parameters that can change a job's result: the code, the
    library versions, the thread count and the CPU model (Numba's fastmath flags allow
    reassociation, so the SIMD width of another CPU can change the last bits, and
    training amplifies them); for machine-specific kinds (timings) the whole machine
    (host, CPU, core count). Not keyed: the operating system, the BLAS build behind
    SciPy/NumPy beyond their versions, environment variables other than the thread
    count (e.g. ``NUMBA_THREADING_LAYER``)."""
    env = {"code": code_hash(), "versions": library_versions(), "threads": int(threads)}
    env["machine"] = machine() if kind in MACHINE_SPECIFIC else {"cpu": machine()["cpu"]}
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
        self.unreadable = []

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
        """Every readable record; the unreadable files are listed in ``unreadable``."""
        self.unreadable = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                with open(path) as f:
                    record = json.load(f)
            except (OSError, ValueError):  # truncated or corrupted: treated as not done
                self.unreadable.append(path)
                continue
            if isinstance(record, dict):
                yield record
            else:
                self.unreadable.append(path)

    def done(self, key):
        record = self.read(key)
        return record is not None and record.get("status") == "ok"


class SweepStopped(Exception):
    """The sweep stopped before every run was done, for ``reason`` (``"interrupted"``,
    ``"disk full"`` or ``"unwritable"``): every finished run is saved; ``saved`` of
    ``total`` runs are done (this call's and earlier ones')."""

    def __init__(self, reason, saved, total, detail=""):
        super().__init__(
            f"{reason}: {saved} of {total} runs saved" + (f" ({detail})" if detail else "")
        )
        self.reason, self.saved, self.total, self.detail = reason, saved, total, detail


def threads_per_job(n_jobs=None):
    """Numba threads each of ``n_jobs`` parallel jobs gets: ``cores // n_jobs``, at least 1."""
    cores = os.cpu_count() or 1
    return max(1, cores // (n_jobs or cores))


def _outcome(future, job, meta):
    """The record a finished future holds; a future that raised (its worker died, was
    killed or lost) becomes a failed record saying so, never a crash of the sweep."""
    try:
        return future.result()
    except Exception as err:  # BrokenProcessPool, distributed.KilledWorker, ...
        return {
            "config_key": config_key(job), "job": job, **(meta or {}), "seconds": None,
            "finished_unix": time.time(), "provenance": run_provenance(), "status": "failed",
            "error": f"{type(err).__name__}: {err} (the worker process running this job "
            "died or was lost: killed, or out of memory?)",
        }  # fmt: skip


def run(jobs, folder, n_jobs=None, scheduler=None, progress=True, meta=None):
    """Run every job not yet finished in ``folder``; returns ``(done, failed, skipped)``.

    ``n_jobs`` workers (default: the number of cores) each get ``cores // n_jobs`` Numba
    threads so the machine is not oversubscribed; the thread count is part of the cache
    key. ``scheduler``: a Dask scheduler address, or ``"local"`` for a ``LocalCluster``;
    ``None`` uses a local process pool. ``meta`` (e.g. study and preset) is stored in
    every record.

    Several processes may run the same jobs into one folder: each run is claimed before
    it starts (:mod:`bnbench.claims`), a claimed run is left to its owner and its record
    awaited (a dead owner's claim is taken over), so every run is computed once;
    ``skipped`` counts the runs found done, by earlier calls or by another process.
    Stops with :class:`SweepStopped` on Ctrl-C or when a record cannot be written (disk
    full), every finished run saved.
    """
    from . import executors
    from .claims import Claims

    if not jobs:
        raise ValueError("the grid is empty: no jobs to run")
    store = Store(folder)
    n_jobs = n_jobs or os.cpu_count() or 1
    if n_jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {n_jobs}")
    threads = threads_per_job(n_jobs)
    unique = {job_key(j, threads): j for j in jobs}
    pending = [k for k in unique if not store.done(k)]
    skipped = len(unique) - len(pending)
    done = failed = 0
    if not pending:
        return done, failed, skipped
    from tqdm import tqdm

    started = time.time()
    claims, executor, running, waiting = Claims(store.folder), None, {}, set()
    bar = tqdm(total=len(pending), unit="run", disable=not (progress and sys.stderr.isatty()))

    def finished_elsewhere(key):
        record = store.read(key)
        return record is not None and (record.get("status") == "ok"
                                       or record.get("finished_unix", 0) >= started)  # fmt: skip

    try:
        while pending or running or waiting:
            while pending and len(running) < n_jobs:
                key = pending.pop(0)
                if finished_elsewhere(key):
                    skipped += 1
                    bar.update(1)
                elif not claims.acquire(key):
                    waiting.add(key)
                else:
                    executor = executor or executors.make(scheduler, n_jobs)
                    running[executor.submit(execute, unique[key], threads, meta)] = key
            finished = set(executor.wait_first(running, 1.0)) if running else set()
            broken = any(_broken(fut) for fut in finished)
            if broken:  # a local pool with a dead worker fails every job it holds
                finished |= set(running)
            for fut in finished:
                key = running.pop(fut)
                record = _outcome(fut, unique[key], meta) if fut.done() else _outcome(
                    _Lost(), unique[key], meta)  # fmt: skip
                record["key"] = key  # the key the parent looks for when resuming
                store.write(record)
                claims.release(key)
                done, failed = (
                    done + (record["status"] == "ok"),
                    failed + (record["status"] != "ok"),
                )
                bar.set_postfix(done=done, running=len(running), failed=failed, skipped=skipped)
                bar.update(1)
            if broken:
                executor.kill()  # it takes no more jobs; the next submission starts a new one
                executor = None
            for key in list(waiting):
                if finished_elsewhere(key):
                    waiting.discard(key)
                    skipped += 1
                    bar.update(1)
                elif not claims.held_elsewhere(key):  # its owner died: take it over
                    waiting.discard(key)
                    pending.append(key)
            if waiting and not running and not pending:
                time.sleep(0.5)
    except KeyboardInterrupt:
        if executor is not None:
            executor.kill()
            executor = None
        raise SweepStopped("interrupted", skipped + done + failed, len(unique)) from None
    except OSError as err:
        reason = "disk full" if err.errno == errno.ENOSPC else "unwritable"
        if executor is not None:
            executor.kill()
            executor = None
        raise SweepStopped(reason, skipped + done + failed, len(unique), str(err)) from err
    finally:
        bar.close()
        claims.release_all()
        if executor is not None:
            executor.close()
    return done, failed, skipped


class _Lost:
    """A job that a broken pool will never finish: its result is that loss."""

    def result(self):
        from concurrent.futures.process import BrokenProcessPool

        raise BrokenProcessPool("its process pool broke before it ran")


def _broken(future):
    """Whether ``future`` failed because its local process pool broke."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return isinstance(future.exception(timeout=0), BrokenProcessPool)
    except Exception:
        return False


def attempts(folder, jobs=None):
    """The newest attempt of each experiment (:func:`config_key`) in ``folder``, finished
    or failed; with ``jobs``, only those of the given jobs. Several attempts of one
    experiment (before and after a code change, say) reduce to the newest, so a job that
    now fails is reported as failed, never with an older code's numbers. Records written
    by an older bnbench (no ``config_key``) are left out."""
    wanted = None if jobs is None else {config_key(j) for j in jobs}
    newest = {}
    for record in Store(folder).records():
        ck = record.get("config_key")
        if ck is None or (wanted is not None and ck not in wanted):
            continue
        if ck not in newest or record.get("finished_unix", 0) > newest[ck].get("finished_unix", 0):
            newest[ck] = record
    return list(newest.values())


def latest(folder, jobs=None):
    """The experiments of :func:`attempts` whose newest attempt finished."""
    return [r for r in attempts(folder, jobs) if r.get("status") == "ok"]


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
    """``(job, error)`` for every experiment (of ``jobs``, if given) whose newest attempt
    failed, even if an older attempt (older code) had finished."""
    return [(r["job"], r.get("error", ""))
            for r in attempts(folder, jobs) if r.get("status") != "ok"]  # fmt: skip


def unreadable(folder):
    """Paths of the record files in ``folder`` that cannot be read (truncated,
    corrupted): each counts as not done, and a report names them."""
    store = Store(folder)
    list(store.records())
    return store.unreadable
