"""Backends and peers by name: read by the public functions, the tests, the benchmarks
and the studies alike. A new backend is one module with the kernel contract (see
``bnbench.kernels``) and one line here. A module may define ``available() -> (ok,
reason)`` for what its import cannot tell (a GPU, a driver).
"""

import importlib
from functools import cache

#: Backends of bnbench itself.
BACKENDS = {
    "reference": "bnbench.kernels.reference",
    "cpu": "bnbench.kernels.cpu",
    "cuda": "bnbench.kernels.cuda",
}

#: Other libraries' kernels behind the same contract, used when installed.
PEERS = {
    "torch": "bnbench.kernels.torch_peer",
}


class BackendUnavailable(RuntimeError):
    """A known backend whose dependencies are missing on this machine."""


@cache
def get_backend(name):
    """Return the module implementing backend ``name`` (imported on first use)."""
    modules = BACKENDS | PEERS
    if not isinstance(name, str) or name not in modules:
        raise ValueError(f"backend must be one of {sorted(modules)}, got {name!r}")
    try:
        module = importlib.import_module(modules[name])
    except ImportError as err:
        raise BackendUnavailable(f"backend {name!r} is not available: {err}") from err
    ok, reason = module.available() if hasattr(module, "available") else (True, "")
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available: {reason}")
    return module


def available(peers=False):
    """Names of the backends (and, with ``peers=True``, peers) that import here."""
    names = list(BACKENDS) + (list(PEERS) if peers else [])
    out = []
    for name in names:
        try:
            get_backend(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return out
