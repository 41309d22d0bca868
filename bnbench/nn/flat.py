"""Helpers of the image layers (:mod:`bnbench.nn.conv2d`, :mod:`bnbench.nn.pool`): inlined copy
loops over flat arrays with unsigned offsets, and an int-or-pair argument check."""

import numba
import numpy as np

# The copy loops index flat arrays with unsigned offsets (``u64``): Numba wraps a negative
# signed index around, a select on every access that kept LLVM from vectorising the
# loops. float32, one thread, im2col of (128, 14, 14, 16), 3x3: 3.5 ms signed, 1.9 ms
# unsigned; of (128, 7, 7, 32): 2.9 / 0.45 ms.
u64 = numba.uint64


@numba.njit(inline="always")
def copy_run(dst, d, src, s, m):
    for t in range(m):
        dst[d + t] = src[s + t]


@numba.njit(inline="always")
def add_run(dst, d, src, s, m):
    for t in range(m):
        dst[d + t] += src[s + t]


@numba.njit(inline="always")
def zero_run(dst, d, m):
    for t in range(m):
        dst[d + t] = 0


@numba.njit(inline="always")
def copy_strided(dst, d, d_step, src, s, s_step, m):
    for t in range(m):
        dst[d + t * d_step] = src[s + t * s_step]


def int_pair(value, name):
    """``value`` as ``(int, int)``, from an int or a pair of ints."""

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
