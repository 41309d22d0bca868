"""CUDA backend tests: on a real GPU when there is one, else under numba-cuda's simulator.

The simulator needs ``NUMBA_ENABLE_CUDASIM=1`` before numba is imported, so the test
command runs this folder in its own pytest process with it set; in the main process (no
GPU, no simulator) these tests skip with the reason.
"""

import pytest

from bnbench import config, registry


@pytest.fixture(autouse=True)
def cuda_or_skip(monkeypatch):
    try:
        registry.get_backend("cuda")
    except registry.BackendUnavailable as err:
        pytest.skip(f"{err} (run this folder with NUMBA_ENABLE_CUDASIM=1 for the simulator)")
    if config.CUDA_SIMULATOR:
        # tiny blocks: small inputs still span several blocks, a ragged last block and
        # the multi-block merge (kernels are built per threads-per-block value)
        monkeypatch.setattr(config, "CUDA_THREADS_PER_BLOCK", 8)
        monkeypatch.setattr(config, "CUDA_TARGET_BLOCKS", 16)
        monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)
