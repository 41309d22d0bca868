"""Tunables in one place: their defaults, their environment overrides, and the
fast-math flags that must keep NaN and inf."""

import os
import subprocess
import sys

from bnbench import config


def test_fastmath_never_assumes_finite_values():
    assert not config.FASTMATH & {"nnan", "ninf", "fast"}
    assert "reassoc" in config.FASTMATH  # what lets LLVM vectorise the reductions


def test_cuda_threads_per_block_is_a_power_of_two():
    tpb = config.CUDA_THREADS_PER_BLOCK
    assert tpb > 0 and tpb & (tpb - 1) == 0


def test_environment_overrides_are_read_at_import():
    env = {**os.environ, "BNBENCH_NUMBA_CACHE": "0", "BNBENCH_CUDA_TPB": "64"}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    code = ("from bnbench import config; "
            "print(config.CACHE, config.CUDA_THREADS_PER_BLOCK, config.CUDA_SIMULATOR)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out == ["False", "64", "False"]
