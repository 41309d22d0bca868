"""bnbench.specs: grids of parameters, callables by import path and their source hash."""

import sys

import pytest

from bnbench import specs


def test_grid_is_the_cartesian_product():
    g = specs.grid(a=[1, 2], b=["x", "y", "z"])
    assert len(g) == 6 and {"a": 2, "b": "z"} in g
    with pytest.raises(ValueError, match="grid axis 'b' must be a non-empty list"):
        specs.grid(a=[1], b=[])


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module ``user_specs_mod`` on sys.path: ``factory`` and ``helper``."""
    (tmp_path / "user_specs_mod.py").write_text("def factory():\n    return 1\n\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_specs_mod", raising=False)
    return tmp_path / "user_specs_mod.py"


def test_load_factory_returns_the_named_callable(user_module):
    assert specs.load_factory("user_specs_mod:factory")() == 1


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("user_specs_mod", "must be given as 'package.module:factory'"),
        ("a:b:c", "must be given as 'package.module:factory'"),
        (":factory", "must be given as 'package.module:factory'"),
        (3, "must be given as 'package.module:factory'"),
        ("no_such_module_xyz:f", "cannot load factory 'no_such_module_xyz:f'"),
        ("user_specs_mod:missing", "cannot load factory 'user_specs_mod:missing'"),
        ("user_specs_mod:VALUE", "factory 'user_specs_mod:VALUE' is not callable"),
    ],
)
def test_load_factory_refuses_by_name(user_module, path, message):
    with pytest.raises(ValueError, match=message):
        specs.load_factory(path)


def test_source_hash_follows_the_module_source(user_module):
    before = specs.source_hash("user_specs_mod:factory")
    assert before == specs.source_hash("user_specs_mod:factory") and len(before) == 16
    user_module.write_text(user_module.read_text() + "# edited\n")
    sys.modules.pop("user_specs_mod")
    assert specs.source_hash("user_specs_mod:factory") != before
