"""Sphinx configuration: the bnbench documentation (myst-parser for markdown, autodoc and
autosummary for the API). Built by ``python3 tasks.py docs`` with warnings as errors."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import generate  # noqa: E402 (docs/generate.py, beside this file)

# docs/results/ (git-ignored) from the saved report folders, or one page naming the
# command that makes them: every build shows the reports of this checkout, a fresh clone's
# too; BNBENCH_REPORTS names another folder
generate.results_pages(out=HERE / "results")
# asv publish's HTML, when generate copied it: served as asv/ of the site
html_extra_path = [p for p in ["results/_extra"] if (HERE / p).is_dir()]

project = "bnbench"
author = "bnbench developers"
copyright = "2026, bnbench developers"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
autosummary_generate = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
# PyTorch's docstrings (e.g. autograd.Function.forward's) refer to labels of PyTorch's docs
autodoc_inherit_docstrings = False
# Not nitpicky: a cross-reference Sphinx cannot resolve (numpy.ndarray, a module-level
# constant, a study module outside the package, napoleon reading prose in a "Returns"
# section as a type) renders as plain text without a warning, so `-W` catches syntax
# errors and broken documents, not unresolved targets. `sphinx-build -n` lists them (about
# 200 on 2026-12-03, mostly numpy.ndarray and napoleon's prose-as-type); making the build
# nitpicky means fixing those docstrings or listing the rest in nitpick_ignore.
nitpicky = False
exclude_patterns = ["_build", "results/_extra"]
html_theme = "furo"
html_title = "bnbench"
suppress_warnings = ["myst.header"]


# A package that re-exports a function named like its own submodule (bnbench.torch.fold,
# the function, from bnbench.torch.fold, the module) would describe "bnbench.torch.fold"
# twice; the function is documented on its module's page, so the package page skips it.
_module = []


def _remember_module(app, what, name, obj, options, lines):
    if what == "module":
        _module[:] = [name]


def _skip_reexport_named_like_module(app, what, name, obj, skip, options):
    current = _module[0] if _module else None
    if current and getattr(obj, "__module__", None) == f"{current}.{name}":
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _remember_module)
    app.connect("autodoc-skip-member", _skip_reexport_named_like_module)
