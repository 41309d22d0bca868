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
def compiled_alike(monkeypatch):
    """The parallel gradient sums (spatial and dense), unfused and fused, compiled afresh
    in this process.

    Numba's cached machine code of a parallel kernel that reduces inside a loop (with
    ``reassoc``) rounds differently from the same kernel compiled in-process (the
    spatial gradient sums of (16, 8, 33) float64: the last bits of sum(dy); the serial
    twins agree). So right after an edit of one of the two modules, one kernel is fresh
    and the other cached, and they disagree in the last bits though they run the same
    operations. Both fresh here: the bound holds for kernels compiled alike. Used by
    tests/kernels/test_cpu_fused.py and tests/nn/test_models.py."""
    import numba

    from bnbench import config
    from bnbench.kernels import cpu, cpu_fused

    pairs = ((cpu, "_spatial_grad_sums"), (cpu_fused, "_spatial_grad_sums_relu"),
             (cpu, "_dense_grad_sums"), (cpu_fused, "_dense_grad_sums_relu"))  # fmt: skip
    for module, name in pairs:
        kernel = getattr(module, name)
        if kernel not in _FRESH:  # one compilation per kernel and session
            _FRESH[kernel] = numba.njit(parallel=True, fastmath=config.FASTMATH)(
                kernel.parallel.py_func
            )
        monkeypatch.setattr(kernel, "parallel", _FRESH[kernel])


_FRESH = {}


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


@pytest.fixture
def one_thread():
    """One thread for torch and Numba, for tests of tiny inputs: on a loaded 2-core machine,
    with 2 threads each, torch.conv2d took 15 ms a call and the Numba moments kernel 32 ms
    (their thread pools spinning against each other), against 80 us on one thread."""
    import numba
    import torch

    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads[0])
    numba.set_num_threads(threads[1])
