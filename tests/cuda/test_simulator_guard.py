"""A simulator run cannot pass by skipping: with ``NUMBA_ENABLE_CUDASIM=1`` an unavailable
CUDA backend fails the CUDA tests; without it (no GPU, no simulator) they skip.

Each case runs one CUDA test in a pytest process of its own, with a plugin that points
the ``cuda`` backend at a module that does not exist."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.without_cuda_backend

ROOT = Path(__file__).resolve().parents[2]
BREAK_CUDA = """
from bnbench import registry

registry.BACKENDS["cuda"] = "bnbench.kernels.no_such_module"
"""


def run_cuda_test(tmp_path, simulator):
    (tmp_path / "break_cuda.py").write_text(BREAK_CUDA)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    test = "tests/cuda/test_cuda_backend.py::test_deterministic"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "break_cuda",
           "-p", "no:cacheprovider", test]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_unavailable_backend_fails_a_simulator_run(tmp_path):
    proc = run_cuda_test(tmp_path, simulator=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # an error in the fixture
    assert "NUMBA_ENABLE_CUDASIM=1 is set, but backend 'cuda' is not available" in proc.stdout


def test_unavailable_backend_skips_without_the_simulator(tmp_path):
    proc = run_cuda_test(tmp_path, simulator=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout and "backend 'cuda' is not available" in proc.stdout
