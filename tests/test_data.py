"""Datasets: MNIST-1D generated locally and cached; the synthetic mixture."""

import numpy as np
import pytest

from bnbench import cache as store
from bnbench import data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def generator_calls(monkeypatch):
    """Counts calls of mnist1d's generator (and of bnbench's raw replay of it)."""
    import mnist1d.data

    calls = {"make_dataset": 0, "raw": 0}
    make_dataset, generate_raw = mnist1d.data.make_dataset, data._generate_raw

    def counted_make_dataset(*args, **kwargs):
        calls["make_dataset"] += 1
        return make_dataset(*args, **kwargs)

    def counted_raw(*args, **kwargs):
        calls["raw"] += 1
        return generate_raw(*args, **kwargs)

    monkeypatch.setattr(mnist1d.data, "make_dataset", counted_make_dataset)
    monkeypatch.setattr(data, "_generate_raw", counted_raw)
    return calls


def test_mnist1d_generated_cached_and_reloaded(cache, generator_calls):
    d = data.mnist1d(num_samples=200)
    assert generator_calls["make_dataset"] == 1
    assert d.x_train.shape == (160, 40) and d.x_test.shape == (40, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.num_classes == 10 and d.num_features == 40
    (path,) = cache.glob("*.npz")
    assert store._load(path) is not None
    again = data.mnist1d(num_samples=200)
    assert generator_calls["make_dataset"] == 1  # read from the cache, not regenerated
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(d, name))
    data.mnist1d(num_samples=200, seed=7)  # another key: generated
    assert generator_calls["make_dataset"] == 2 and len(list(cache.glob("*.npz"))) == 2


def test_cache_is_read_not_regenerated(cache, generator_calls):
    """What a second call returns is the file's content (so a stale generator cannot hide
    behind it): overwrite the cached arrays with a valid, checksummed file and see them."""
    data.mnist1d(num_samples=100)
    (path,) = cache.glob("*.npz")
    arrays = store._load(path)
    arrays["x_test"] = np.full_like(arrays["x_test"], 7.0)
    store._save(path, arrays)
    assert (data.mnist1d(num_samples=100).x_test == 7.0).all()
    assert generator_calls["make_dataset"] == 1


def test_raw_test_set_standardizes_to_the_clean_test_set(cache, generator_calls):
    raw = data.mnist1d_raw_test(num_samples=300, seed=5)
    clean = data.mnist1d(num_samples=300, seed=5)
    assert raw.x.dtype == np.float64 and raw.x.shape == (60, 40) and raw.shear.shape == (60,)
    np.testing.assert_array_equal(raw.standardize(raw.x), clean.x_test)  # bit for bit
    np.testing.assert_array_equal(raw.y, clean.y_test)
    assert (np.abs(raw.shear) <= 0.375).all()  # mnist1d's shear_scale 0.75 * (u - 0.5)
    again = data.mnist1d_raw_test(num_samples=300, seed=5)
    assert generator_calls["raw"] == 1
    np.testing.assert_array_equal(again.x, raw.x)
    assert (again.mean, again.std) == (raw.mean, raw.std)


def test_raw_replay_matches_mnist1d_make_dataset():
    """The replay keeps what make_dataset discards; what make_dataset returns it must
    reproduce exactly: the standardization constants over the whole set, the test split
    and the shear ramp each signal carries."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 250, 11
    reference = make_dataset(args)
    x, y, shear, mean, std = data._generate_raw(250, 11)
    np.testing.assert_array_equal((x - mean) / std, reference["x_test"])
    np.testing.assert_array_equal(y, reference["y_test"])
    assert np.isfinite(shear).all() and len(shear) == len(y)


def test_raw_replay_mismatch_is_an_error(cache, monkeypatch):
    generate_raw = data._generate_raw

    def drifted(*args):
        x, *rest = generate_raw(*args)
        return (x * 1.0000001, *rest)

    monkeypatch.setattr(data, "_generate_raw", drifted)
    with pytest.raises(RuntimeError, match="no longer reproduces mnist1d"):
        data.mnist1d_raw_test(num_samples=100)
    assert not list(cache.glob("mnist1d-raw-*"))


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
    assert store._load(path) is not None  # rewritten whole


def test_gaussian_mixture_is_seeded():
    a, b = data.gaussian_mixture(seed=3), data.gaussian_mixture(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.num_classes == 4 and a.x_train.shape == (900, 16)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="dataset must be one of .* got 'mnist2d'"):
        data.load("mnist2d")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 10, got 5"):
        data.mnist1d(num_samples=5)
    for fn in (data.mnist1d, data.mnist1d_raw_test):
        for seed in (1.5, "42", -1, 2**32, True, None):
            with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
                fn(num_samples=100, seed=seed)


def test_cache_keys_cover_the_generator(cache, generator_calls, monkeypatch):
    """An upgrade of mnist1d or SciPy, or other generator arguments, regenerates the data
    instead of reading a file generated by the old one (before, the key named only the
    sample count and the seed)."""
    import importlib.metadata

    import mnist1d.data

    data.mnist1d(num_samples=200)
    real_version = importlib.metadata.version
    for package in ("mnist1d", "scipy"):
        monkeypatch.setattr(importlib.metadata, "version",
                            lambda name, p=package: "999" if name == p else real_version(name))  # fmt: skip
        data.mnist1d(num_samples=200)
        monkeypatch.setattr(importlib.metadata, "version", real_version)
    real_args = mnist1d.data.get_dataset_args

    def other_args():
        args = real_args()
        args.iid_noise_scale = 0.5
        return args

    monkeypatch.setattr(mnist1d.data, "get_dataset_args", other_args)
    data.mnist1d(num_samples=200)
    assert generator_calls["make_dataset"] == 4
    assert len(list(cache.glob("mnist1d-n200-*.npz"))) == 4
