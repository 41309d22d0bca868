"""Backends and peers by name: lookup, unknown names, unavailable ones skipped."""

import pytest

from bnbench import registry


def test_the_host_backends_are_always_available():
    names = registry.available()
    assert names[:2] == ["reference", "cpu"]
    assert set(names) <= set(registry.BACKENDS)
    assert set(registry.available(peers=True)) - set(names) <= set(registry.PEERS)
    cpu = registry.get_backend("cpu")
    assert [m.__name__ for m in cpu.modules] == [
        "bnbench.kernels.cpu",
        "bnbench.kernels.cpu_fused",
    ]
    assert cpu.forward_train.__module__ == "bnbench.kernels.cpu"
    assert cpu.backward_relu.__module__ == "bnbench.kernels.cpu_fused"
    with pytest.raises(AttributeError, match="backend 'cpu' has no attribute 'nope'"):
        _ = cpu.nope


def test_a_backends_attributes_are_looked_up_on_every_access(monkeypatch):
    from bnbench.kernels import cpu_fused

    backend = registry.get_backend("cpu")
    monkeypatch.setattr(cpu_fused, "backward_relu", "patched")
    assert backend.backward_relu == "patched"


@pytest.mark.parametrize("name", ["gpu", "", None, 3])
def test_an_unknown_backend_is_a_value_error_naming_the_choices(name):
    with pytest.raises(ValueError, match=r"backend must be one of \['cpu', 'cuda'"):
        registry.get_backend(name)


def test_a_backend_that_says_it_is_unavailable_is_skipped(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("bnbench_fake_backend")
    fake.available = lambda: (False, "no device here")
    monkeypatch.setitem(sys.modules, "bnbench_fake_backend", fake)
    monkeypatch.setitem(registry.BACKENDS, "fake", "bnbench_fake_backend")
    registry.get_backend.cache_clear()
    try:
        with pytest.raises(registry.BackendUnavailable, match="no device here"):
            registry.get_backend("fake")
        assert "fake" not in registry.available()
    finally:
        registry.get_backend.cache_clear()
