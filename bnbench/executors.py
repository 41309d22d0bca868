"""Where runs execute: a local process pool, or a Dask cluster.

An executor is ``submit(fn, *args) -> future``, ``wait_first(futures, timeout) -> done``
and ``close()``; :func:`bnbench.sweep.run` drives either the same way. A scheduler
that cannot be reached within ``connect_timeout`` seconds is a
:class:`SchedulerUnreachable` error naming the address, raised before any run starts.
"""

import os

#: seconds to wait for a Dask scheduler before giving up (``$BNBENCH_CONNECT_TIMEOUT``)
DEFAULT_CONNECT_TIMEOUT = 10.0


class SchedulerUnreachable(ValueError):
    """The Dask scheduler address did not answer (a bad argument, exit status 2)."""


def connect_timeout():
    """``$BNBENCH_CONNECT_TIMEOUT`` seconds, else :data:`DEFAULT_CONNECT_TIMEOUT`."""
    text = os.environ.get("BNBENCH_CONNECT_TIMEOUT")
    if text is None:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"BNBENCH_CONNECT_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


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


def _init_worker():
    import signal

    _die_with_parent()
    # Ctrl-C goes to the whole process group: the study process handles it and stops
    # the pool, so a worker must not die half-way through writing nothing useful
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Local:
    """A pool of ``n_jobs`` spawned processes (spawn, not fork: forking after Numba's
    OpenMP pool started can deadlock)."""

    def __init__(self, n_jobs):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.n_jobs = n_jobs
        self.pool = ProcessPoolExecutor(
            n_jobs, mp_context=get_context("spawn"), initializer=_init_worker
        )

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def wait_first(self, futures, timeout):
        from concurrent.futures import FIRST_COMPLETED, wait

        return wait(futures, timeout, return_when=FIRST_COMPLETED).done

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def kill(self):
        """Stop at once (an interrupt): terminate the workers, wait for nothing."""
        for proc in list(getattr(self.pool, "_processes", {}).values()):
            proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)


class Dask:
    """A Dask client: ``"local"`` starts a ``LocalCluster`` of ``n_jobs`` processes."""

    def __init__(self, address, n_jobs, timeout=None):
        from distributed import Client, LocalCluster

        self.n_jobs = n_jobs
        self.cluster = None
        if address == "local":
            self.cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True,
                                        dashboard_address=None)  # fmt: skip
            self.client = Client(self.cluster)
            return
        timeout = connect_timeout() if timeout is None else timeout
        try:
            self.client = Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError, TypeError) as err:
            raise SchedulerUnreachable(
                f"scheduler {address!r} did not answer within {timeout:g} s ({err}); check "
                "the address and that the scheduler is running (a longer wait: "
                "BNBENCH_CONNECT_TIMEOUT=SECONDS)"
            ) from err

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait_first(self, futures, timeout):
        from distributed import wait

        try:
            wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return {f for f in futures if f.done()}

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    kill = close


def make(scheduler, n_jobs):
    """The executor for ``scheduler`` (``None``: local processes)."""
    return Local(n_jobs) if scheduler is None else Dask(scheduler, n_jobs)
