"""Datasets: MNIST-1D generated locally (and cached), and a synthetic Gaussian mixture.

Nothing is downloaded: MNIST-1D comes from the ``mnist1d`` package's generator
(``make_dataset``), seeded. Generated sets are cached as ``.npz`` files in
``$BNBENCH_CACHE_DIR`` (default: ``$XDG_CACHE_HOME/bnbench`` or ``~/.cache/bnbench``),
written atomically with a checksum; a corrupt or partial file is regenerated.
"""

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


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


def _checksum(arrays):
    h = hashlib.sha256()
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load(path):
    """The cached arrays, or ``None`` if the file is missing, partial or corrupt."""
    try:
        with np.load(path) as f:
            arrays = {name: f[name] for name in _ARRAYS}
            stored = str(f["checksum"])
    except Exception:  # missing, truncated, not a zip, missing keys: all mean regenerate
        return None
    return arrays if stored == _checksum(arrays) else None


def _save(path, arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, checksum=_checksum(arrays), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached(key, make):
    path = cache_dir() / f"{key}.npz"
    arrays = _load(path)
    if arrays is None:
        arrays = make()
        _save(path, arrays)
    return arrays


def mnist1d(num_samples=5000, seed=42):
    """MNIST-1D (Greydanus 2020): 40-sample 1-D digit signals, 10 classes, 80/20 split.

    ``num_samples`` (default 5000: 4000 train, 1000 test) and ``seed`` (the package's
    default 42) go to ``mnist1d.data.make_dataset``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10:
        raise ValueError(f"num_samples must be an integer >= 10, got {num_samples!r}")

    def make():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        d = make_dataset(args)
        return {
            "x_train": d["x"].astype(np.float32),
            "y_train": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32),
            "y_test": d["y_test"].astype(np.int64),
        }

    arrays = _cached(f"mnist1d-n{num_samples}-s{seed}", make)
    return Dataset("mnist1d", **arrays)


def gaussian_mixture(num_samples=1200, num_classes=4, num_features=16, seed=0, spread=1.0):
    """A synthetic classification set for fast tests: one Gaussian blob per class
    (centres drawn from N(0, 3^2), within-class std ``spread``), 75/25 split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (num_classes, num_features))
    y = rng.integers(0, num_classes, num_samples)
    x = (centres[y] + rng.normal(0.0, spread, (num_samples, num_features))).astype(np.float32)
    split = num_samples * 3 // 4
    return Dataset("gaussian_mixture", x[:split], y[:split], x[split:], y[split:])


DATASETS = {"mnist1d": mnist1d, "gaussian_mixture": gaussian_mixture}


def load(name, num_samples=None, seed=None):
    """A dataset by name; ``num_samples``/``seed`` of ``None`` keep the defaults."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    kwargs = {k: v for k, v in (("num_samples", num_samples), ("seed", seed)) if v is not None}
    return DATASETS[name](**kwargs)
