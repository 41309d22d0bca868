"""The training-step timing job (sweep kind "step") and the kernel margins rows."""

import numpy as np
import pytest

from bnbench import kernel_margins, step_timing


def test_step_job_times_both_libraries():
    rows = step_timing.run_job({"model": "mlp", "batch_size": 4, "budget_s": 0.01})["rows"]
    libraries = {r["library"] for r in rows}
    assert "bnbench" in libraries
    try:
        import torch  # noqa: F401

        assert libraries == {"bnbench", "torch"}
    except ImportError:
        assert libraries == {"bnbench"}
    for r in rows:
        assert r["model"] == "mlp" and r["batch_size"] == 4 and r["repeats"] >= 5
        assert 0 < r["q25_ms"] <= r["median_ms"] <= r["q75_ms"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"model": "vgg", "batch_size": 8}, "model must be"),
        ({"model": "cnn", "batch_size": 1}, "batch_size must be"),
        ({"model": "cnn"}, "step job params"),
        ({"model": "cnn", "batch_size": 8, "lr": 0.1}, "step job params"),
    ],
)
def test_step_job_refuses_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        step_timing.resolve_params(params)


def test_bnbench_step_trains():
    step = step_timing.bnbench_step("cnn", 8)
    before = [p.copy() for p in (step.model.layers[1].params["weight"],)]
    step()
    assert not np.array_equal(before[0], step.model.layers[1].params["weight"])


def test_margin_rows_validate_and_tabulate():
    df = kernel_margins.measure_margins([(16, 6, 5), (32, 8)], budget_s=0.01)
    assert set(df.channels) == {"first", "last"}
    assert set(df[df["shape"] == "32x8"].channels) == {"first"}  # no spatial axes
    assert set(df.arrays) == {"aligned", "numpy default"}
    assert not df.bandwidth_bound.any()
    table = kernel_margins.margin_table(df, "backward")
    assert list(table["shape"]) == ["16x6x5", "32x8"]
    assert (table["cpu ms (NumPy default)"] > 0).all()
    found = kernel_margins.margin_findings(df)
    assert len(found.splitlines()) == (3 if "torch" in set(df.backend) else 0)


def test_margin_findings_state_the_measured_ratios_and_misses():
    """Synthetic timings whose ratios are known: backward on a spatial shape at 1.2x
    (target 1.5x) and channels-last at 0.8x (floor 1x), a bandwidth-bound shape at 85%
    of the triad (target 90%), everything else comfortably met."""
    import pandas as pd

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
    (line,) = kernel_margins.margin_findings(pd.DataFrame(rows)).splitlines()
    assert line.startswith("- Backward: bnbench is 0.80x to 1.20x PyTorch's speed")
    assert "16x6x5 (1.20x, target 1.5x)" in line
    assert "16x6x5 channels-last (0.80x, floor 1x)" in line
    assert "64x64x56x56 (85% of triad)" in line


def test_the_image_cnn_step_runs_against_its_torch_twin():
    """cnn2d takes 784-value rows; its PyTorch twin has the same parameter count."""
    torch = pytest.importorskip("torch")
    from bnbench_studies.training_throughput import torch_network

    step = step_timing.bnbench_step("cnn2d", 4)
    step()
    ours = sum(layer.params[name].size for layer, name in step.model.parameters())
    twin = torch_network("cnn2d")
    assert ours == sum(p.numel() for p in twin.parameters() if p.requires_grad)
    torch_step = step_timing.torch_step(twin, 4, features=step_timing.INPUT_FEATURES["cnn2d"])
    torch_step()
    assert torch is not None
