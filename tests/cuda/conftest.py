"""CUDA backend tests: on a real GPU when there is one, else under numba-cuda's simulator.

The simulator needs ``NUMBA_ENABLE_CUDASIM=1`` before numba is imported, so the test
command runs this folder in its own pytest process with it set; in the main process (no
GPU, no simulator) these tests skip with the reason. With ``NUMBA_ENABLE_CUDASIM=1`` set,
an unavailable backend (numba-cuda missing, say) fails every test instead: a simulator run
never passes by skipping.
"""

import pytest

from bnbench import config, registry


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "without_cuda_backend: a test of this folder that needs no CUDA backend"
    )


@pytest.fixture(autouse=True)
def cuda_or_skip(request, monkeypatch):
    if request.node.get_closest_marker("without_cuda_backend"):
        return
    try:
        registry.get_backend("cuda")
    except registry.BackendUnavailable as err:
        if config.CUDA_SIMULATOR:  # asked for the simulator: a skip would pass silently
            pytest.fail(f"NUMBA_ENABLE_CUDASIM=1 is set, but {err}", pytrace=False)
        pytest.skip(f"{err} (run this folder with NUMBA_ENABLE_CUDASIM=1 for the simulator)")
    if config.CUDA_SIMULATOR:
        # tiny blocks: small inputs still span several blocks, a ragged last block and
        # the multi-block merge (kernels are built per threads-per-block value)
        monkeypatch.setattr(config, "CUDA_THREADS_PER_BLOCK", 8)
        monkeypatch.setattr(config, "CUDA_TARGET_BLOCKS", 16)
        monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)
