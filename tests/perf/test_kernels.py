"""The kernel throughput study machinery, on inputs small enough for a test."""

import json
import types

import numpy as np
import pytest

from bnbench import registry, report, throughput, timing

SHAPES = [(64, 8), (4, 3, 10)]


@pytest.fixture(scope="module")
def results():
    return throughput.measure(SHAPES, budget_s=0.01)


def test_measure_is_tidy_and_complete(results):
    backends = registry.available(peers=True)
    per_shape_op = len(backends) * 2 - 1  # reference only without out=
    # PyTorch has no out= backward: its backward runs only as PyTorch runs it
    missing = len(SHAPES) if "torch" in backends else 0
    assert len(results) == len(SHAPES) * len(throughput.BYTE_MODEL) * per_shape_op - missing
    assert set(results.backend) == set(backends)
    assert (results.median_ms > 0).all() and (results.repeats >= 3).all()
    assert (results.q25_ms <= results.median_ms).all()
    row = results.iloc[0]
    nbytes = 64 * 8 * 4
    factor = throughput.BYTE_MODEL[row.op]
    assert row.gbps == pytest.approx(factor * nbytes / (row.median_ms / 1e3) / 1e9)
    assert results.pct_of_triad.notna().all() and (results.triad_gbps > 0).all()


def test_report_folder(results, tmp_path):
    out = report.write_report(
        tmp_path / "r",
        "Kernel throughput",
        throughput.report_body(results),
        results,
        figures=[("throughput.png", throughput.figure(results))],
        command="test",
    )
    text = (out / "report.md").read_text()
    assert text.startswith("# Kernel throughput") and "## Findings" in text
    assert "| 64x8 |" in text and "![throughput](throughput.png)" in text
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["report"]["command"] == "test" and prov["report"]["numba_threads"] >= 1
    import pandas as pd

    assert len(pd.read_csv(out / "results.csv")) == len(results)


needs_torch = pytest.mark.skipif(
    "torch" not in registry.available(peers=True), reason="the torch peer is not installed"
)


@needs_torch
def test_torch_backward_is_timed_as_pytorch_runs_it(results):
    """PyTorch's backward allocates dx itself and has no out= form (its .out overload
    allocates and copies): the timed call is the plain one, with no copy into an out."""
    from torch.profiler import profile

    data = throughput._inputs((4, 3, 10), np.float32, seed=0)
    call = throughput._call("backward", "torch", data, None)
    with profile() as prof:
        dx = call()
    ops = {e.name for e in prof.events()}
    assert "aten::native_batch_norm_backward" in ops
    assert not ops & {"aten::copy_", "aten::_copy_from_and_resize"}, sorted(ops)
    expected = throughput._call("backward", "reference", data, None)()
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5)
    rows = results[(results.backend == "torch") & (results.op == "backward")]
    assert not rows.preallocated_out.any() and len(rows) == len(SHAPES)
    body = throughput.report_body(results)
    assert "PyTorch has no in-place or `out=` backward" in body


def test_wrong_backend_is_caught_before_timing(monkeypatch):
    from bnbench.kernels import cpu

    def broken_eval(x, weight, bias, mean, var, eps, out):
        cpu.forward_eval(x, weight, bias, mean, var, eps, out)
        out[0, 0, 0] += 1.0

    broken = types.SimpleNamespace(**{**vars(cpu), "forward_eval": broken_eval})
    monkeypatch.setattr(registry, "available", lambda peers=False: ["reference", "broken"])
    monkeypatch.setattr(registry, "get_backend", lambda name: broken if name == "broken" else cpu)
    with pytest.raises(
        AssertionError, match="broken forward_eval .* disagrees with the reference"
    ):
        throughput.measure([(32, 4)], budget_s=0.01)


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


def test_markdown_table():
    import pandas as pd

    df = pd.DataFrame({"shape": ["2x3"], "ms": [0.123456], "missing": [float("nan")]})
    assert (
        report.markdown_table(df) == "| shape | ms | missing |\n|---|---|---|\n| 2x3 | 0.123 |  |"
    )
