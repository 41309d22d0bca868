"""Set up the environment and run the project's jobs; needs only Python 3.11+.

    python3 tasks.py test    # ruff lint + format check, then the whole test suite (which
                             # includes a Sphinx build of the docs with warnings as errors)
    python3 tasks.py docs    # results pages from reports/, the README's generated blocks,
                             # then the documentation site: docs/_build/html/index.html
    python3 tasks.py study   # the headline study (quick preset): reports/momentum-batch-size-quick/
    python3 tasks.py gpu     # on a machine with an NVIDIA GPU: CUDA tests on the hardware and
                             # the CUDA kernels against PyTorch's: reports/gpu-check/summary.md

Each task creates ``.venv`` on first use and (re)installs bnbench into it, editable,
with the extras that task needs, whenever ``pyproject.toml`` has changed since.
Arguments after the task name go to the tool it runs (pytest, the study script).
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"

#: task -> (extras to install, commands). A command is an argv list, or ``(env, argv)``
#: to add environment variables; "{args}" takes the task's extra arguments and
#: "{python}" is the environment's interpreter.
TASKS = {
    "test": (
        # docs: tests/test_docs.py builds the site with Sphinx (warnings as errors)
        "test,bench,peers,docs",
        [
            ["ruff", "check", "."],
            ["ruff", "format", "--check", "."],
            # the asv suite is valid and runs once against this environment (nothing timed,
            # so benchmarks are forked from asv's server instead of spawned as asv.json asks)
            ["asv", "machine", "--yes", "--config", "asv.json"],
            ["asv", "check", "--config", "asv.json", "-E", "existing:{python}"],
            [
                "asv",
                "run",
                "--config",
                "asv.json",
                "-E",
                "existing:{python}",
                "--quick",
                "--dry-run",
                "--launch-method",
                "forkserver",
            ],
            # the peers extra is installed: a peer that does not load fails the run
            ({"BNBENCH_REQUIRE_PEERS": "1"}, ["python", "-m", "pytest", "{args}"]),
            # CUDA numerics under numba-cuda's simulator: numba reads the switch at import,
            # so these run in a pytest process of their own
            ({"NUMBA_ENABLE_CUDASIM": "1"}, ["python", "-m", "pytest", "tests/cuda"]),
            # the GPU check: without a GPU, one line and exit status 0
            ["python", "tasks.py", "gpu"],
        ],
    ),
    # docs/api/ cleared (autosummary would keep the page of a module since removed);
    # docs/generate.py: docs/results/ from the saved report folders reports/*/,
    # reports/answer.json copied to docs/data/answer.json (committed) and the README's
    # <!-- generated:NAME --> blocks filled from that copy; then the site (docs/conf.py
    # makes docs/results/ again, so a bare sphinx-build works too)
    "docs": (
        "docs,peers",  # peers: the API reference imports bnbench.torch
        [
            ["python", "-c", "import shutil; shutil.rmtree('docs/api', ignore_errors=True)"],
            ["python", "docs/generate.py"],
            [
                "sphinx-build",
                "-W",
                "--keep-going",
                "-b",
                "html",
                "docs",
                "docs/_build/html",
                "{args}",
            ],
        ],
    ),
    # peers: PyTorch's CPU build, so that `bnbench study all` afterwards runs the PyTorch
    # studies (rank-merging, torch-estimators, weight-surgery's PyTorch model) too
    "study": (
        "peers",
        [
            ["python", "studies/momentum_batch_size.py", "--preset", "quick", "{args}"],
        ],
    ),
}


def run(cmd, env=None):
    prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
    print("+", prefix + " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}).returncode


def ensure_env(extras):
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".installed-{extras or 'base'}"
    if stamp.exists() and stamp.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime:
        return
    for cmd in (
        [PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [PY, "-m", "pip", "install", "--quiet", "--editable", f".[{extras}]" if extras else "."],
    ):
        if run(cmd):
            sys.exit(f"installing bnbench with extras [{extras}] failed")
    stamp.touch()


# -- the GPU check (`python3 tasks.py gpu`), never part of `test`: the project needs no GPU

GPU_VENV = ROOT / "build" / "venv-gpu"  # ignored by git and ruff; .venv is never touched
#: what bnbench.gpu_check and the GPU test files import (torch: a CUDA build)
GPU_MODULES = ["numpy", "numba", "numba_cuda", "pandas", "scipy", "threadpoolctl", "matplotlib",
               "tqdm", "markdown", "pytest", "hypothesis"]  # fmt: skip
PROBE = (
    "import importlib.util as u, json, sys\n"
    "missing = [m for m in sys.argv[1:] if u.find_spec(m) is None]\n"
    "try:\n    import torch\n    cuda = bool(torch.cuda.is_available())\n"
    "except Exception:\n    cuda = False\n"
    "print(json.dumps({'missing': missing, 'torch_cuda': cuda}))"
)


def gpu_present():
    """``(True, the GPUs)`` where ``nvidia-smi -L`` lists one, else ``(False, why not)``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "nvidia-smi not found"
    try:
        p = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"nvidia-smi -L failed: {err}"
    gpus = [line.strip() for line in p.stdout.splitlines() if line.startswith("GPU ")]
    if p.returncode or not gpus:
        return False, f"nvidia-smi -L lists no GPU (exit status {p.returncode})"
    return True, "; ".join(gpus)


def _probe(python):
    """``{"missing": [modules], "torch_cuda": bool}`` for interpreter ``python``."""
    p = subprocess.run([str(python), "-c", PROBE, *GPU_MODULES], capture_output=True, text=True)
    if p.returncode:
        return {"missing": GPU_MODULES, "torch_cuda": False}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _extra(name):
    """The requirements of ``pyproject.toml``'s extra ``name``, bnbench's own extras left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [r for r in project["optional-dependencies"][name] if not r.startswith("bnbench")]


def gpu_python():
    """An interpreter with a CUDA build of PyTorch, numba-cuda and the test tools.

    The one running this task if it has them all (a GPU machine's image often does; it
    then runs the checkout through ``PYTHONPATH``, nothing installed). Otherwise
    ``build/venv-gpu`` (a venv with system site packages), with the extras ``cuda`` and
    ``distributed``, the ``test`` extra's tools and, for ``peers``, a CUDA build of PyTorch
    at the project's pin: PyPI's Linux wheel of ``torch``, which bundles CUDA, not the CPU
    wheel ``.venv`` takes (``BNBENCH_GPU_TORCH_INDEX`` names another index). ``.venv`` is
    never changed."""
    found = _probe(sys.executable)
    if not found["missing"] and found["torch_cuda"]:
        print(f"using {sys.executable}: it has a CUDA build of PyTorch and the rest", flush=True)
        return sys.executable
    py = GPU_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
    if not py.exists():
        print(f"creating {GPU_VENV} (with {sys.executable}'s packages)", flush=True)
        venv.create(GPU_VENV, with_pip=True, system_site_packages=True)
    found = _probe(py)
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    if found["missing"]:
        if run([*pip, "--editable", ".[cuda,distributed]", *_extra("test")]):
            sys.exit("installing bnbench with the cuda extra and the test tools failed")
    if not found["torch_cuda"]:
        torch = _extra("torch")
        index = os.environ.get("BNBENCH_GPU_TORCH_INDEX")
        print(f"a GPU is present and {py} has no CUDA build of PyTorch: installing "
              f"{' '.join(torch)} with CUDA (PyPI's Linux wheel{', from ' + index if index else ''}"
              "), into build/venv-gpu only: .venv keeps its CPU wheel", flush=True)  # fmt: skip
        if run([*pip, *(["--index-url", index] if index else []), *torch]):
            sys.exit("installing a CUDA build of PyTorch failed")
    found = _probe(py)
    if found["missing"] or not found["torch_cuda"]:
        sys.exit(f"{py} still lacks {found['missing'] or 'a working CUDA build of PyTorch'}")
    return str(py)


def gpu(args):
    """The GPU check; without a GPU, one line and exit status 0."""
    present, what = gpu_present()
    if not present:
        print(f"no NVIDIA GPU here ({what}): the gpu task has nothing to check, skipped")
        return 0
    print(f"GPU: {what}", flush=True)
    python = gpu_python()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}  # the hardware
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [python, "-m", "bnbench.gpu_check", "--out", "reports/gpu-check", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv):
    if argv and argv[0] == "gpu":
        return gpu(argv[1:])
    if not argv or argv[0] not in TASKS:
        sys.exit(f"usage: python3 tasks.py {{{','.join([*TASKS, 'gpu'])}}} [ARGS...]")
    extras, commands = TASKS[argv[0]]
    ensure_env(extras)
    for cmd in commands:
        env, cmd = cmd if isinstance(cmd, tuple) else ({}, cmd)
        cmd = [a for part in cmd for a in (argv[1:] if part == "{args}" else [part])]
        cmd = [a.replace("{python}", str(PY)) for a in cmd]
        cmd[0] = str(BIN / cmd[0])
        if code := run(cmd, env):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
