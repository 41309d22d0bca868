"""Datasets: MNIST-1D generated locally and cached; the synthetic mixture."""

import numpy as np
import pytest

from bnbench import data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_mnist1d_generated_cached_and_reloaded(cache):
    d = data.mnist1d(num_samples=200)
    assert d.x_train.shape == (160, 40) and d.x_test.shape == (40, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.num_classes == 10 and d.num_features == 40
    (path,) = cache.glob("*.npz")
    again = data.mnist1d(num_samples=200)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    assert path.stat().st_size > 0


def test_mnist1d_default_split(cache):
    d = data.load("mnist1d")
    assert (len(d.y_train), len(d.y_test)) == (4000, 1000)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_corrupt_cache_is_regenerated(cache, damage):
    d = data.mnist1d(num_samples=100)
    (path,) = cache.glob("*.npz")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file")
    else:  # a valid file whose arrays do not match the stored checksum
        arrays = dict(np.load(path))
        arrays["x_train"] = arrays["x_train"] + 1
        np.savez(path, **arrays)
    again = data.mnist1d(num_samples=100)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    assert data._load(path) is not None  # rewritten whole


def test_gaussian_mixture_is_seeded():
    a, b = data.gaussian_mixture(seed=3), data.gaussian_mixture(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.num_classes == 4 and a.x_train.shape == (900, 16)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="dataset must be one of .* got 'mnist2d'"):
        data.load("mnist2d")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 10, got 5"):
        data.mnist1d(num_samples=5)
