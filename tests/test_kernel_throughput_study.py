"""The kernel-throughput study: its report rendered from the timing rows, the margin
targets of issue 11, and a study job end to end on tiny shapes."""

import json

import pandas as pd
import pytest
from bnbench_studies import kernel_throughput as kt

from bnbench import registry, report
from bnbench.perf import kernels, margins

SHAPES = [(64, 8), (6, 3, 10)]


@pytest.fixture(scope="module")
def rows():
    plain = kernels.measure(SHAPES, budget_s=0.01)
    variants = kernels.measure_variants(SHAPES, budget_s=0.01)
    margin = margins.measure_margins([(16, 6, 5), (32, 8)], budget_s=0.01)
    return pd.concat([plain, variants, margin], ignore_index=True)


def test_report_folder(rows, tmp_path):
    body, figures = kt.analyse(rows)
    out = report.write_report(tmp_path / "r", "Kernel throughput", body, rows,
                              figures=figures, command="test")  # fmt: skip
    text = (out / "report.md").read_text()
    assert text.startswith("# Kernel throughput") and "## Findings" in text
    assert "| 64x8 |" in text and "![throughput](throughput.png)" in text
    assert "## Margins on any caller's arrays" in text and "### Backward: margins" in text
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["report"]["command"] == "test"
    assert len(pd.read_csv(out / "results.csv")) == len(rows)


def test_the_variant_tables_and_findings(rows):
    body, _ = kt.analyse(rows)
    assert "## Ghost batch norm and Batch Renorm" in body
    assert "| 6x3x10 |" in body and "cpu ghost / plain" in body
    assert "- Ghost batch norm, forward, training mode, cpu:" in body
    assert "- Batch Renorm, backward, cpu:" in body
    assert len(kt.summary_tables(rows)["forward_train"]) == len(SHAPES)  # plain rows only


@pytest.mark.skipif("torch" not in registry.available(peers=True), reason="no torch peer")
def test_the_method_says_how_pytorch_backward_is_timed(rows):
    assert "PyTorch has no in-place or `out=` backward" in kt.analyse(rows)[0]


def test_margin_table_from_measured_rows(rows):
    df = rows[rows.op.str.startswith("margin_")]
    table = kt.margin_table(df, "backward")
    assert list(table["shape"]) == ["16x6x5", "32x8"]
    assert (table["cpu ms (NumPy default)"] > 0).all()
    assert list(table["target"]) == [
        ">= 1.5x (channels-last >= 1x)",
        ">= 1x (channels-last >= 1x)",
    ]
    found = kt.margin_findings(df)
    assert len(found.splitlines()) == (3 if "torch" in set(df.backend) else 0)


def test_margin_findings_state_the_measured_ratios_and_misses():
    """Synthetic timings whose ratios are known: backward on a spatial shape at 1.2x
    (target 1.5x) and channels-last at 0.8x (floor 1x), a bandwidth-bound shape at 85%
    of the triad (target 90%), everything else comfortably met."""
    rows = []
    for shape, bound in (("16x6x5", False), ("64x64x56x56", True)):
        for backend, arrays, channels in [(b, a, c) for b in ("cpu", "torch")
                                          for a, c in (("aligned", "first"),
                                                       ("numpy default", "first"),
                                                       ("numpy default", "last"))]:  # fmt: skip
            ms = 1.0
            if backend == "torch":
                ms = 1.2 if channels == "first" else 0.8
            rows.append({"op": "margin_backward", "shape": shape, "backend": backend,
                         "arrays": arrays, "channels": channels, "median_ms": ms,
                         "bandwidth_bound": bound, "pct_of_triad": 85.0})  # fmt: skip
    (line,) = kt.margin_findings(pd.DataFrame(rows)).splitlines()
    assert line.startswith("- Backward: bnbench is 0.80x to 1.20x PyTorch's speed")
    assert "16x6x5 (1.20x, target 1.5x)" in line
    assert "16x6x5 channels-last (0.80x, floor 1x)" in line
    assert "64x64x56x56 (85% of triad)" in line


def test_the_presets_are_kernel_jobs_of_the_library_shapes():
    jobs = kt.STUDY.presets["quick"]()
    assert [j["kind"] for j in jobs] == ["kernel"] * 6
    assert [tuple(j["params"]["shape"]) for j in jobs] == kernels.SHAPES[:6]
    assert kt.TARGETS[("backward", "spatial")] == 1.5  # the targets live in the study
