"""What machine and software a result came from: for ``bnbench info`` and provenance."""

import datetime
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import numba
import numpy as np


def _version(dist):
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threading_layer():
    """Numba's threading layer; it is chosen on the first parallel call, so make one."""
    from .kernels import cpu

    cpu.moments(np.ones((2, 1, 1)))
    return numba.threading_layer()


def device_name(device):
    """A CUDA device's name as text: numba-cuda's ``Device.name`` is ``str`` in current
    releases (0.30) and ``bytes`` in older ones; the simulator's device has no name."""
    name = getattr(device, "name", None)
    if name is None:
        cc = ".".join(map(str, getattr(device, "compute_capability", ())))
        return f"numba-cuda simulator (compute capability {cc or '?'})"
    return name.decode() if isinstance(name, bytes) else str(name)


def cuda_status():
    """``(available, description)``; imports numba's CUDA target only when asked."""
    try:
        from numba import cuda
    except ImportError as err:  # pragma: no cover - numba always ships a cuda module
        return False, f"numba CUDA target not importable ({err})"
    if _version("numba-cuda") is None:
        return False, "the cuda extra (numba-cuda) is not installed"
    try:
        if not cuda.is_available():
            return False, "no CUDA driver or device found"
        return True, device_name(cuda.get_current_device())
    except Exception as err:  # the driver can fail in many ways; report, don't crash
        return False, f"CUDA error: {err}"


def system_info():
    """Versions, CPU, threads and accelerator as a flat, JSON-ready dict."""
    cuda_ok, cuda_desc = cuda_status()
    return {
        "bnbench": _version("bnbench"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_cuda": _version("numba-cuda"),
        "torch": _version("torch"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": threading_layer(),
        "cuda_available": cuda_ok,
        "cuda": cuda_desc,
    }


def git_state(path="."):
    """``(commit, dirty)`` of the git work tree at ``path``, or ``(None, None)``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def provenance(command=None):
    """System info plus git state, UTC time and the exact command line."""
    commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)))
    return {
        **system_info(),
        "git_commit": commit,
        "git_dirty": dirty,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(sys.argv),
    }
