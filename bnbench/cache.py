"""The dataset cache: generated arrays as ``.npz`` files in ``$BNBENCH_CACHE_DIR`` (default
``$XDG_CACHE_HOME/bnbench`` or ``~/.cache/bnbench``), written atomically with a checksum
under a key that names the generator's arguments and versions (:func:`generator_key`); a
corrupt or partial file is regenerated. Also the :class:`Dataset` type and the one seed
rule every dataset, corruption and stream shares (:func:`check_seed`)."""

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the arrays of a cached :class:`Dataset`
DATASET_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """Train and test split; x ``(N, features)`` float32, y ``(N,)`` int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self):
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def num_features(self):
        return self.x_train.shape[1]


def cache_dir():
    if path := os.environ.get("BNBENCH_CACHE_DIR"):
        return Path(path)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnbench"


def _checksum(arrays, names=DATASET_ARRAYS):
    h = hashlib.sha256()
    for name in names:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load(path, names=DATASET_ARRAYS):
    """The cached arrays, or ``None`` if the file is missing, partial or corrupt."""
    try:
        with np.load(path) as f:
            arrays = {name: f[name] for name in names}
            stored = str(f["checksum"])
    except Exception:  # missing, truncated, not a zip, missing keys: all mean regenerate
        return None
    return arrays if stored == _checksum(arrays, names) else None


def _save(path, arrays, names=DATASET_ARRAYS):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, checksum=_checksum(arrays, names), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_arrays(key, make, names):
    """The arrays ``names`` cached as ``<cache_dir()>/<key>.npz``, or ``make()``'s (a dict
    with at least those keys), then written atomically with a checksum over ``names``
    (name, dtype, shape and bytes, in that order). A file that is missing, partial, not
    an ``.npz``, lacks a name or fails its checksum is regenerated, never read. ``key``
    must change whenever what ``make`` produces does."""
    names = tuple(names)
    path = cache_dir() / f"{key}.npz"
    arrays = _load(path, names)
    if arrays is None:
        made = make()
        arrays = {name: made[name] for name in names}
        _save(path, arrays, names)
    return arrays


def generator_key(package, args=None, also=("numpy",)):
    """A short hash of what a generated dataset depends on beyond its own arguments: the
    version of the generating ``package`` and of the libraries in ``also``, and the
    generator's ``args`` (a dict or an ``argparse.Namespace``). Part of every cache key,
    so an upgrade regenerates the data instead of reading a stale file."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    args = vars(args) if hasattr(args, "__dict__") else dict(args or {})
    text = repr(sorted((k, repr(v)) for k, v in args.items()))
    text += repr([(name, ver(name)) for name in (package, *also)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_seed(seed, name="seed"):
    """``seed`` as an ``int`` if it is an integer in [0, 2**32) (what NumPy's generators
    take), else a ``ValueError`` naming ``name``: every dataset, corruption and stream
    seed is checked by this one rule."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)
