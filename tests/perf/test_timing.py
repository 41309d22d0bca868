"""Timing helpers: aligned arrays, interleaved repeats, validation, timing rows."""

import numpy as np
import pytest

from bnbench.perf import timing


def test_aligned_empty_is_aligned():
    for shape in [(3,), (5, 7), (2, 3, 4)]:
        a = timing.aligned_empty(shape, np.float32)
        assert a.shape == shape and a.flags.c_contiguous and a.ctypes.data % timing.ALIGN == 0


def test_interleaved_timings_runs_each_contender_repeats_times():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1

        return fn

    times = timing.interleaved_timings({"a": make("a"), "b": make("b")}, repeats=7, warmup=2)
    assert calls == {"a": 9, "b": 9}
    assert all(len(t) == 7 and (t >= 0).all() for t in times.values())


def test_repeats_within_fits_the_budget_and_clips():
    import time

    def sleeper():
        time.sleep(0.002)

    assert timing.repeats_within(0.0, {"a": sleeper}) == 5  # at least 5
    assert timing.repeats_within(1e6, {"a": sleeper}, high=40) == 40
    assert 5 <= timing.repeats_within(0.05, {"a": sleeper, "b": sleeper}) <= 13


def test_validate_catches_a_wrong_result_and_names_it():
    expected = np.linspace(-1.0, 1.0, 12)
    timing.validate("close enough", (expected * (1 + 1e-6)).astype(np.float32), expected)
    wrong = expected.copy()
    wrong[3] += 0.01
    with pytest.raises(AssertionError, match="cpu backward .* disagrees with the reference"):
        timing.validate("cpu backward (4, 3)", wrong, expected)


def test_timing_row_reports_quartiles_and_bandwidth():
    times = np.array([0.004, 0.001, 0.002, 0.003, 0.005])  # seconds
    row = timing.timing_row((8, 4, 2), "backward", "cpu", True, np.float32, 2, times, 5)
    assert row["shape"] == "8x4x2" and row["layout"] == "(N, C, *spatial)"
    assert row["median_ms"] == pytest.approx(3.0) and row["repeats"] == 5
    assert row["q25_ms"] == pytest.approx(2.0) and row["q75_ms"] == pytest.approx(4.0)
    assert row["gbps"] == pytest.approx(5 * 8 * 4 * 2 * 4 / 0.003 / 1e9)
    assert (
        timing.timing_row((8, 4), "x", "cpu", False, "float64", 1, times, 1)["layout"] == "(N, C)"
    )


def test_triad_moves_three_arrays():
    fn, nbytes = timing.triad(1000)
    fn()
    assert nbytes == 3 * 1000 * 4
