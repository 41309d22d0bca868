"""What a study's jobs are made of: grids of parameters, callables named by import path
(``"package.module:factory"``, how a study names a user's model, data or a PyTorch peer
network) and a hash of their source, part of a run's cache key. A leaf module: the job
kinds import it, and :mod:`bnbench.sweep` names the job kinds."""

import hashlib
import importlib
import inspect
import itertools


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
