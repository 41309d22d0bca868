"""Set up the environment and run the project's jobs; needs only Python 3.11+.

    python3 tasks.py test    # ruff lint + format check, then the whole test suite
    python3 tasks.py study   # the headline study (quick preset): reports/momentum-batch-size/

Each task creates ``.venv`` on first use and (re)installs bnbench into it, editable,
with the extras that task needs, whenever ``pyproject.toml`` has changed since.
Arguments after the task name go to the tool it runs (pytest, the study script).
"""

import os
import subprocess
import sys
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
        "test,bench,peers",
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
        ],
    ),
    "study": (
        "",
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


def main(argv):
    if not argv or argv[0] not in TASKS:
        sys.exit(f"usage: python3 tasks.py {{{','.join(TASKS)}}} [ARGS...]")
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
