import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def parallel_cpu_kernels(monkeypatch):
    """Every test runs the CPU backend's parallel kernels, whatever the input size (the
    inputs here are small, and would otherwise take the serial twins, which
    tests/test_cpu_serial.py checks on their own)."""
    from bnbench.kernels import cpu

    monkeypatch.setattr(cpu, "SERIAL_BELOW", 0)
    monkeypatch.setattr(cpu, "ELEMENTWISE_SERIAL_BELOW", 0)


@pytest.fixture
def studies(tmp_path, monkeypatch):
    """A studies folder holding ``tiny.py`` (presets ``quick``: 2 runs, ``many``: 12,
    ``slow``: 8 runs of about a second, ``empty``), found through ``$BNBENCH_STUDIES_DIR``."""
    folder = tmp_path / "studies"
    folder.mkdir()
    from helpers import TINY, TINY_STUDY

    (folder / "tiny.py").write_text(TINY_STUDY.format(tiny=TINY))
    monkeypatch.setenv("BNBENCH_STUDIES_DIR", str(folder))
    return folder
