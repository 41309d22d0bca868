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
