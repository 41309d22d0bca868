"""Backends and peers by name: read by the public functions, the tests, the benchmarks
and the studies alike. A new backend is one module with the kernel contract (see
``bnbench.kernels``), or a few modules that together provide it (the fused BN + ReLU
kernels live in a module of their own that builds on the plain ones), and one line here.
A module may define ``available() -> (ok, reason)`` for what its import cannot tell (a
GPU, a driver).
"""

import importlib
from functools import cache

#: Backends of bnbench itself.
BACKENDS = {
    "reference": "bnbench.kernels.reference",
    "cpu": ("bnbench.kernels.cpu", "bnbench.kernels.cpu_fused"),
    "cuda": ("bnbench.kernels.cuda", "bnbench.kernels.cuda_fused"),
}

#: Other libraries' kernels behind the same contract, used when installed.
PEERS = {
    "torch": "bnbench.kernels.torch_peer",
}


class BackendUnavailable(RuntimeError):
    """A known backend whose dependencies are missing on this machine."""


class Backend:
    """A backend made of several modules: an attribute is the first module's that has it,
    looked up on every access (so a test that patches a module's function is seen)."""

    def __init__(self, name, modules):
        self.__name__ = name
        self.modules = tuple(modules)

    def __getattr__(self, attr):
        for module in self.modules:
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"backend {self.__name__!r} has no attribute {attr!r}")

    def __repr__(self):
        return f"<backend {self.__name__!r} from {', '.join(m.__name__ for m in self.modules)}>"


@cache
def get_backend(name):
    """The module implementing backend ``name``, or a :class:`Backend` over its modules
    (imported on first use)."""
    modules = BACKENDS | PEERS
    if not isinstance(name, str) or name not in modules:
        raise ValueError(f"backend must be one of {sorted(modules)}, got {name!r}")
    paths = (modules[name],) if isinstance(modules[name], str) else modules[name]
    try:
        loaded = [importlib.import_module(p) for p in paths]
    except ImportError as err:
        raise BackendUnavailable(f"backend {name!r} is not available: {err}") from err
    first = loaded[0]
    ok, reason = first.available() if hasattr(first, "available") else (True, "")
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available: {reason}")
    return first if len(loaded) == 1 else Backend(name, loaded)


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


def backends_supporting(operation, peers=False):
    """Names of the available backends (and peers) that implement ``operation`` (see
    :func:`bnbench.kernels.supports`)."""
    from .kernels import supports

    return [n for n in available(peers=peers) if supports(get_backend(n), operation)]
