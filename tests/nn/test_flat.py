"""bnbench.nn.flat: the inlined copy loops of the image layers against NumPy slicing, with
the unsigned offsets they take, and the int-or-pair check."""

import numba
import numpy as np
import pytest

from bnbench.nn.flat import add_run, copy_run, copy_strided, int_pair, u64, zero_run


@numba.njit
def _apply(dst, src):
    copy_run(dst, u64(1), src, u64(2), u64(3))  # dst[1:4] = src[2:5]
    add_run(dst, u64(5), src, u64(0), u64(2))  # dst[5:7] += src[0:2]
    zero_run(dst, u64(8), u64(2))  # dst[8:10] = 0
    copy_strided(dst, u64(10), u64(2), src, u64(1), u64(3), u64(3))  # dst[10:16:2] = src[1:10:3]


def test_copy_loops_match_numpy_slicing():
    src = np.arange(1.0, 13.0)
    dst = np.full(16, -1.0)
    expected = dst.copy()
    expected[1:4] = src[2:5]
    expected[5:7] += src[0:2]
    expected[8:10] = 0
    expected[10:16:2] = src[1:10:3]
    _apply(dst, src)
    np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize(("value", "pair"), [(3, (3, 3)), ((1, 2), (1, 2)), ([2, 5], (2, 5)),
                                             (np.int64(4), (4, 4))])  # fmt: skip
def test_int_pair_takes_an_int_or_two(value, pair):
    got = int_pair(value, "stride")
    assert got == pair and all(type(v) is int for v in got)


@pytest.mark.parametrize("value", [True, 1.5, (1, 2, 3), (1, "2"), "3", None])
def test_int_pair_refuses_by_name(value):
    with pytest.raises(ValueError, match=r"kernel_size must be an int or a pair of ints, got"):
        int_pair(value, "kernel_size")
