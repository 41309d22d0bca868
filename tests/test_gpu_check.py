"""``python3 tasks.py gpu`` without a GPU: one line, exit status 0, nothing installed; the
GPU detection with a stand-in ``nvidia-smi``; what the task runs where a GPU is found."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tasks():
    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_smi(folder, output, status=0):
    """A stand-in ``nvidia-smi`` in ``folder`` that prints ``output`` and exits ``status``."""
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {status}\n")
    smi.chmod(0o755)
    return folder


def path_without_nvidia_smi():
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(p) / "nvidia-smi").exists())  # fmt: skip


def test_without_a_gpu_the_task_prints_one_line_and_succeeds():
    venv_before = (ROOT / "build" / "venv-gpu").exists()
    env = {**os.environ, "PATH": path_without_nvidia_smi()}
    p = subprocess.run([sys.executable, "tasks.py", "gpu"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no NVIDIA GPU here"), p.stdout
    assert p.stderr == ""
    assert (ROOT / "build" / "venv-gpu").exists() == venv_before  # nothing installed


def test_gpu_detection(tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without_nvidia_smi())
    assert tasks.gpu_present() == (False, "nvidia-smi not found")
    found = fake_smi(tmp_path / "gpu", "GPU 0: NVIDIA H200 (UUID: GPU-0000)")
    monkeypatch.setenv("PATH", str(found))
    assert tasks.gpu_present() == (True, "GPU 0: NVIDIA H200 (UUID: GPU-0000)")
    broken = fake_smi(tmp_path / "broken", "NVIDIA-SMI has failed: no driver", status=9)
    monkeypatch.setenv("PATH", str(broken))
    present, why = tasks.gpu_present()
    assert not present and "exit status 9" in why
    empty = fake_smi(tmp_path / "empty", "No devices were found")
    monkeypatch.setenv("PATH", str(empty))
    assert not tasks.gpu_present()[0]


def test_with_a_gpu_the_check_runs_on_the_hardware(tasks, monkeypatch):
    """The check runs with the simulator switched off and the checkout importable."""
    monkeypatch.setattr(tasks, "gpu_present", lambda: (True, "GPU 0: stand-in"))
    monkeypatch.setattr(tasks, "gpu_python", lambda: "/gpu/python")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    calls = []

    def fake_run(cmd, cwd, env):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(tasks.subprocess, "run", fake_run)
    assert tasks.main(["gpu", "--quick"]) == 0
    ((cmd, env),) = calls
    assert cmd == ["/gpu/python", "-m", "bnbench.gpu_check", "--out", "reports/gpu-check",
                   "--quick"]  # fmt: skip
    assert "NUMBA_ENABLE_CUDASIM" not in env and str(ROOT) in env["PYTHONPATH"]


def test_the_torch_pin_is_what_a_gpu_machine_installs_with_cuda(tasks):
    assert tasks._extra("torch") == ["torch==2.13.0"]
    assert "pytest>=8" in tasks._extra("test") and not any(
        r.startswith("bnbench") for r in tasks._extra("test"))  # fmt: skip


def test_the_check_module_without_a_gpu_says_so():
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    p = subprocess.run([sys.executable, "-m", "bnbench.gpu_check", "--out", "/nonexistent"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0 and p.stdout.startswith("no CUDA device visible"), p.stdout


def test_the_summary_renders_from_rows():
    from bnbench import gpu_check

    row = {"op": "backward", "shape": "4x3", "dtype": "float32", "repeats": 5,
           "device_copy_gbps": 4000.0, "bnbench_ms": 0.1, "bnbench_gbps": 1.0,
           "bnbench_pct_of_copy": 25.0, "torch_ms": 0.2, "torch_gbps": 0.5,
           "torch_pct_of_copy": 12.5, "bnbench_vs_torch": 2.0}  # fmt: skip
    tests = [{"target": "tests/cuda", "rc": 0, "seconds": 1.0, "summary": "9 passed"}]
    md = gpu_check.markdown({"gpu": "NVIDIA H200"}, tests, [row])
    assert "| backward | 4x3 | 0.100 | 0.200 | 2.00x |" in md and "9 passed" in md
    assert set(gpu_check.BYTE_MODEL) >= {"forward_train", "relu_backward"}
