"""The layout shows the architecture: imports run one way, privates stay private, and
every module has tests a maintainer finds by name.

Parsed with ``ast`` (no import runs): every ``import`` and ``from`` statement anywhere in a
module, lazy ones inside functions included (a lazy import still ties two modules
together), relative imports resolved against the module's package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bnbench"
TESTS = ROOT / "tests"


def _modules():
    """dotted name -> path, for every module of bnbench (packages by their __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _source(node, package):
    """The module an ``ImportFrom`` reads, relative imports resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package(name, path):
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name, path):
    """``(module imported, name imported from it or None)`` for every import of bnbench
    code in the module ``name``; ``from pkg import sub`` of a submodule is the submodule."""
    package = _package(name, path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bnbench":
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = _source(node, package)
            if source.split(".")[0] != "bnbench":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub, None) if sub in MODULES else (source, alias.name)


def _attribute_uses(name, path):
    """``(module, attribute)`` for every ``alias.attr`` in the module ``name`` whose
    ``alias`` an import bound to a bnbench module (``from . import data``, ``import
    bnbench.kernels.cpu as cpu``, ``import bnbench.data``, so ``bnbench.data.x``);
    dotted chains through submodules are followed."""
    package = _package(name, path)
    tree = ast.parse(path.read_text(), str(path))
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "bnbench":
                    continue
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound["bnbench"] = "bnbench"
        elif isinstance(node, ast.ImportFrom):
            source = _source(node, package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    bound[alias.asname or alias.name] = sub

    def module_of(expr):
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            outer = module_of(expr.value)
            if outer and f"{outer}.{expr.attr}" in MODULES:
                return f"{outer}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            module = module_of(node.value)
            if module and f"{module}.{node.attr}" not in MODULES:
                yield module, node.attr


def _named(path):
    """bnbench modules a module names in a string (``"bnbench.shift"``,
    ``"bnbench.torch.jobs:run"``): the registries that import by name are edges like any
    import, so that a registry cannot hide a cycle."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            target = node.value.split(":")[0]
            if target in MODULES:
                yield target


def _graph():
    graph = {}
    for name, path in MODULES.items():
        edges = {m for m, _ in _imports(name, path)} | set(_named(path))
        graph[name] = {m for m in edges if m in MODULES and m != name}
    return graph


def test_the_import_graph_is_acyclic():
    """No cycle, lazy imports and imports by name included."""
    graph = _graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_graph_sees_relative_and_lazy_imports():
    graph = _graph()
    assert "bnbench.perf.timing" in graph["bnbench.perf.contenders"]  # from .timing import
    assert "bnbench.functional" in graph["bnbench.perf.contenders"]  # from .. import functional
    assert "bnbench.perf.contenders" in graph["bnbench.gpu_check"]  # inside a function


#: The rule: a private *module* (``bnbench._checks``, ``bnbench.torch._core``) is its
#: package's internals, so a module of the same package may use any of its names
#: (``functional`` takes ``_check_tensor`` from ``_checks``); from any other module a
#: leading-underscore name is never used, neither imported (``from .cpu import _x``) nor
#: read off the module (``cpu._x``): what is shared is public where it belongs.


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def _private_imports():
    """``{(importer, source): [private names]}``, from ``from source import _name`` and
    from ``source._name`` on a name bound to the module ``source``."""
    found = {}
    for name, path in MODULES.items():
        uses = [(s, n) for s, n in _imports(name, path) if n]
        uses += list(_attribute_uses(name, path))
        for source, imported in uses:
            if not _private(imported) or source == name:
                continue
            private_module = source.rpartition(".")[2].startswith("_")
            if private_module and source.rpartition(".")[0] == name.rpartition(".")[0]:
                continue  # a private module's names, inside its own package
            names = found.setdefault((name, source), [])
            if imported not in names:
                names.append(imported)
    return found


def test_no_module_uses_a_private_name_of_another():
    found = _private_imports()
    assert not found, "\n".join(
        f"{a} uses {', '.join(v)} of {b}" for (a, b), v in sorted(found.items())
    )


def test_the_rule_sees_attribute_uses(tmp_path, monkeypatch):
    """``from . import data`` then ``data._x``, ``import bnbench.data as d`` then ``d._x``,
    ``import bnbench.kernels.cpu`` then ``bnbench.kernels.cpu._x``: private uses; a
    dunder, a public name and a submodule are not."""
    path = tmp_path / "probe.py"
    path.write_text(
        "from . import data\n"
        "import bnbench.nn.blas as b\n"
        "import bnbench.kernels.cpu\n"
        "def f():\n"
        "    from .kernels import cuda\n"
        "    return (data._x, b._y, bnbench.kernels.cpu._z, cuda._w, data.__doc__,\n"
        "            data.public, bnbench.kernels.cpu.SERIAL_BELOW)\n"
    )
    monkeypatch.setitem(MODULES, "bnbench.probe", path)
    uses = {(m, a) for m, a in _attribute_uses("bnbench.probe", path) if _private(a)}
    assert uses == {
        ("bnbench.data", "_x"), ("bnbench.nn.blas", "_y"),
        ("bnbench.kernels.cpu", "_z"), ("bnbench.kernels.cuda", "_w"),
    }  # fmt: skip
    assert ("bnbench.probe", "bnbench.data") in _private_imports()


def _test_files(name):
    """The names a maintainer looks for: ``bnbench/[sub/]stem.py`` is tested in
    ``tests/[sub/]test_<stem>.py``, ``tests/test_<sub>_<stem>.py`` (the flat form of
    ``tests/test_torch_jobs.py``) or a topic split of one, ``test_<stem>_<topic>.py``;
    a private ``_stem`` by the same names without the underscore. A CUDA module
    (``cuda`` in its stem) may also be tested in ``tests/cuda/``, the folder that runs in a
    pytest process of its own under the simulator (``tests/cuda/test_cuda_fused.py``)."""
    parts = name.split(".")[1:]
    stem, subs = parts[-1].lstrip("_"), parts[:-1]
    prefixes = [f"test_{stem}"]
    dirs = [TESTS] + ([TESTS / "/".join(subs)] if subs else [])
    if subs:
        prefixes.append(f"test_{'_'.join(subs)}_{stem}")
    if "cuda" in stem:
        dirs.append(TESTS / "cuda")
    return [
        p
        for d in dirs
        for prefix in prefixes
        for p in [d / f"{prefix}.py", *sorted(d.glob(f"{prefix}_*.py"))]
        if p.exists()
    ]


@pytest.mark.parametrize("name", [n for n, p in MODULES.items() if p.name != "__init__.py"])
def test_every_module_has_tests_found_by_its_name(name):
    assert _test_files(name), (
        f"{name} has no tests/{'/'.join(name.split('.')[1:-1]) or '.'}/test_<stem>.py "
        "(or tests/test_<subpackage>_<stem>.py, or test_<stem>_<topic>.py)"
    )


def test_the_names_the_rule_accepts():
    assert _test_files("bnbench.kernels.cpu_fused") == [TESTS / "kernels/test_cpu_fused.py"]
    assert TESTS / "cuda/test_cuda_fused.py" in _test_files("bnbench.kernels.cuda_fused")
    assert TESTS / "test_torch_jobs.py" in _test_files("bnbench.torch.jobs")
    assert TESTS / "test_mnist_c_ops.py" in _test_files("bnbench._mnist_c_ops")
    assert not any(p.parent.name == "cuda" for p in _test_files("bnbench.kernels.cpu"))
