"""bnbench.cache: named arrays cached atomically with a checksum, the generator key and the
one seed rule."""

import numpy as np
import pytest

from bnbench import cache as store


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_cached_arrays_any_names(cache_folder):
    calls = []

    def make():
        calls.append(1)
        return {"a": np.arange(3.0), "b": np.float64(2.5), "ignored": np.zeros(2)}

    first = store.cached_arrays("thing-v1", make, ("a", "b"))
    second = store.cached_arrays("thing-v1", make, ("a", "b"))
    assert len(calls) == 1 and set(second) == {"a", "b"}
    np.testing.assert_array_equal(first["a"], second["a"])
    assert float(second["b"]) == 2.5
    (cache_folder / "thing-v1.npz").write_bytes(b"garbage")
    store.cached_arrays("thing-v1", make, ("a", "b"))
    assert len(calls) == 2 and store._load(cache_folder / "thing-v1.npz", ("a", "b")) is not None


def test_no_temporary_file_is_left_and_the_folder_is_made(cache_folder):
    store.cached_arrays("deep/thing", lambda: {"a": np.ones(2)}, ("a",))
    assert [p.name for p in (cache_folder / "deep").iterdir()] == ["thing.npz"]


def test_generator_key_changes_with_the_arguments_and_versions():
    base = store.generator_key("numpy", {"n": 1})
    assert store.generator_key("numpy", {"n": 1}) == base
    assert store.generator_key("numpy", {"n": 2}) != base
    assert store.generator_key("numpy", {"n": 1}, also=("scipy",)) != base


@pytest.mark.parametrize("seed", [1.5, "42", -1, 2**32, True, None])
def test_check_seed_refuses_by_name(seed):
    with pytest.raises(ValueError, match=r"stream_seed must be an integer in \[0, 2\*\*32\)"):
        store.check_seed(seed, "stream_seed")


def test_check_seed_returns_a_python_int():
    assert type(store.check_seed(np.uint32(7))) is int
