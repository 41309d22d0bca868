"""Tunables in one place.

Numba freezes globals into compiled code, so these are read when a kernel is *defined*
(decorator arguments) or passed to kernels as arguments, never read inside a kernel body.
Environment variables override the defaults; set them before importing bnbench.
"""

import os

#: Fast-math flags for the CPU kernels. ``reassoc`` lets LLVM vectorise the float64
#: reductions; ``nnan``/``ninf`` are deliberately absent so that NaN and inf propagate.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Cache compiled kernels on disk (``BNBENCH_NUMBA_CACHE=0`` turns it off).
CACHE = os.environ.get("BNBENCH_NUMBA_CACHE", "1") != "0"

#: CUDA: threads per block (a power of two), a target for the number of blocks that keep
#: every SM busy, and how many values one thread should fold before another block is
#: worth launching. Kernels are built per threads-per-block value, so tests may patch it.
CUDA_THREADS_PER_BLOCK = int(os.environ.get("BNBENCH_CUDA_TPB", "256"))
CUDA_TARGET_BLOCKS = 1024
CUDA_VALUES_PER_THREAD = 8

#: numba-cuda's simulator (runs kernels as Python threads, no GPU needed); numba reads
#: the variable at import, so it must be set before anything imports numba.
CUDA_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
