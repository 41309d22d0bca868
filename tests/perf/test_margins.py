"""Kernel margins: bnbench against PyTorch on aligned, NumPy-default and channels-last
arrays, validated before timing."""

import numpy as np
import pytest

from bnbench.perf import margins


def test_margin_rows_validate_and_tabulate():
    df = margins.measure_margins([(16, 6, 5), (32, 8)], budget_s=0.01)
    assert set(df.channels) == {"first", "last"}
    assert set(df[df["shape"] == "32x8"].channels) == {"first"}  # no spatial axes
    assert set(df.arrays) == {"aligned", "numpy default"}
    assert not df.bandwidth_bound.any()
    assert (df.median_ms > 0).all() and df.op.str.startswith("margin_").all()
    first = df[df.channels == "first"]
    assert set(first[first.arrays == "aligned"].alignment_bytes) == {0}
    assert df[df.channels == "last"].alignment_bytes.isna().all()


def test_a_wrong_contender_is_caught_before_timing(monkeypatch):
    from bnbench.perf import contenders

    real = contenders.contender

    def wrong(op, library, layout, data, backend="cpu", out=None):
        fn = real(op, library, layout, data, backend, out)
        if layout == "last" and library == "api":
            return lambda: fn() * np.float32(1.01)
        return fn

    monkeypatch.setattr(margins, "contender", wrong)
    with pytest.raises(AssertionError, match="cpu numpy default channels-last .* disagrees"):
        margins.measure_margins([(8, 3, 5)], budget_s=0.001)
