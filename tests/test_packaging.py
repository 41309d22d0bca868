"""A regular (non-editable) install works outside the checkout: the studies are found,
every module imports from the installed copy, and the license ships with it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAVE_TORCH = importlib.util.find_spec("torch") is not None  # bnbench.torch needs the extra


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        pytest.fail(f"pip install . failed:\n{proc.stderr[-3000:]}")
    return target


def run_installed(target, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("BNBENCH_STUDIES_DIR", None)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip


def test_study_help_lists_the_studies_from_a_regular_install(installed, tmp_path):
    proc = run_installed(installed, "import sys; from bnbench import cli; "
                         "sys.exit(cli.main(['study', '--help']))", tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = "".join(proc.stdout.split())  # help text wraps long lines, even at hyphens
    for name in ("momentum-batch-size", "covariate-shift", "precise-bn-samples"):
        assert name in listed
    where = run_installed(installed, "import bnbench, bnbench.study as s; "
                          "print(bnbench.__file__); print(s.studies_dir())", tmp_path)  # fmt: skip
    module, studies = where.stdout.split()
    assert module.startswith(str(installed)) and studies.startswith(str(installed))


def test_every_module_imports_from_the_installed_copy(installed, tmp_path):
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "bnbench").rglob("*.py")
        if p.name != "__init__.py"
        and "torch_peer" not in p.name
        and p.stem != "cuda"
        and (HAVE_TORCH or "torch" not in p.parts)
    )
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    proc = run_installed(installed, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    licenses = list(installed.glob("bnbench-*.dist-info/licenses/LICENSE"))
    assert licenses and "MIT License" in licenses[0].read_text()
