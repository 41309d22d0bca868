"""The contender table: every entry the timings read runs and matches the reference."""

import numpy as np
import pytest

from bnbench import registry
from bnbench.perf import contenders

HAVE_TORCH = "torch" in registry.available(peers=True)
SHAPES = [(12, 5), (6, 4, 7), (3, 4, 5, 6)]
CASES = [
    (op, library, layout, shape)
    for op in contenders.BYTE_MODEL
    for library in contenders.COMPARISONS
    for shape in SHAPES
    for layout in contenders.layouts(shape)
]


@pytest.mark.parametrize(("op", "library", "layout", "shape"), CASES)
def test_every_contender_matches_the_reference(op, library, layout, shape):
    if library == "aten" and not HAVE_TORCH:
        pytest.skip("PyTorch is not installed")
    data = contenders.inputs(shape, np.float32, seed=3)
    expected = contenders.api_call(op, "reference", data)()
    result = contenders.contender(op, library, layout, contenders.in_layout(data, layout))()
    got = contenders.to_channel_first(result, shape, library, layout)
    assert got.shape == shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_the_table_covers_both_libraries_and_layouts():
    assert set(contenders.COMPARISONS) == {"api", "aten"}
    assert all(set(t) == {"first", "last"} for t in contenders.COMPARISONS.values())
    assert contenders.layouts((4, 3)) == ["first"]  # no spatial axes, no channels-last
    with pytest.raises(ValueError, match="op must be one of"):
        contenders.contender("forward", "api", "first", contenders.inputs((4, 3), "f4", 0))


def test_inputs_are_aligned_and_seeded():
    x, dy, weight, bias, ref = contenders.inputs((8, 3, 5), np.float32, seed=1)
    again = contenders.inputs((8, 3, 5), np.float32, seed=1)[0]
    assert x.ctypes.data % 64 == 0 and dy.ctypes.data % 64 == 0
    np.testing.assert_array_equal(x, again)
    assert weight.shape == bias.shape == ref.mean.shape == (3,)


def test_channels_last_moves_the_channel_axis_last():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    last = contenders.channels_last(a)
    assert last.shape == (2, 4, 3) and last.flags.c_contiguous
    np.testing.assert_array_equal(contenders.to_channel_first(last, a.shape, "api", "last"), a)


def test_ghost_batch_size_divides_n_into_two_groups_or_more():
    assert contenders.ghost_batch_size(256) == 32
    assert contenders.ghost_batch_size(32) == 16
    assert contenders.ghost_batch_size(6) == 3
    assert contenders.ghost_batch_size(7) is None
    for N in range(2, 300):
        G = contenders.ghost_batch_size(N)
        assert G is None or (N % G == 0 and 2 <= G <= 32 and N // G >= 2)


@pytest.mark.parametrize("variant", ["plain", "ghost", "renorm"])
@pytest.mark.parametrize("direction", ["forward_train", "backward"])
def test_variant_calls_match_the_reference_variant(variant, direction):
    data = contenders.inputs((12, 4, 3), np.float64, seed=2)
    est = contenders.running(data)
    expected = contenders.variant_call(variant, direction, "reference", data, None, 4, est)()
    got = contenders.variant_call(variant, direction, "cpu", data, None, 4, est)()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_in_layout_makes_channels_last_copies_of_x_and_dy_only():
    data = contenders.inputs((2, 3, 4, 5), np.float32, seed=0)
    assert contenders.in_layout(data, "first") is data
    x, dy, *rest = contenders.in_layout(data, "last")
    assert x.shape == (2, 4, 5, 3) and x.flags.c_contiguous
    np.testing.assert_array_equal(np.moveaxis(x, -1, 1), data[0])
    np.testing.assert_array_equal(np.moveaxis(dy, -1, 1), data[1])
    assert all(a is b for a, b in zip(rest, data[2:], strict=True))
