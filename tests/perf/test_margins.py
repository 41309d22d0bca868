"""Kernel margins: bnbench against PyTorch on aligned, NumPy-default and channels-last
arrays, validated before timing."""

import numpy as np
import pytest

from bnbench import registry
from bnbench.perf import margins

HAVE_TORCH = "torch" in registry.available(peers=True)


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
    libraries = {"cpu", "torch"} if HAVE_TORCH else {"cpu"}
    for _, cell in df.groupby(["shape", "op", "arrays", "channels"]):
        assert set(cell.backend) == libraries  # every cell has both libraries when torch is


def test_both_libraries_time_the_same_memory(monkeypatch):
    """Each (arrays, layout) case hands one data tuple to every library: a channels-last
    copy is made once, so the contenders time the same buffers (same alignment)."""
    from bnbench.perf import contenders

    seen = {}
    real = contenders.contender

    def recording(op, library, layout, data, backend="cpu", out=None):
        seen.setdefault((op, layout, id(data[0])), set()).add(library)
        return real(op, library, layout, data, backend, out)

    monkeypatch.setattr(margins, "contender", recording)
    margins.measure_margins([(8, 3, 5)], budget_s=0.001)
    libraries = {"api", "aten"} if HAVE_TORCH else {"api"}
    assert {layout for _, layout, _ in seen} == {"first", "last"}
    assert all(libs == libraries for libs in seen.values())


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
