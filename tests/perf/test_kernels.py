"""Kernel timings (sweep kind "kernel"), on inputs small enough for a test."""

import types

import numpy as np
import pytest

from bnbench import registry
from bnbench.perf import contenders, kernels

SHAPES = [(64, 8), (4, 3, 10)]


@pytest.fixture(scope="module")
def results():
    return kernels.measure(SHAPES, budget_s=0.01)


def test_measure_is_tidy_and_complete(results):
    backends = registry.available(peers=True)
    per_shape_op = len(backends) * 2 - 1  # reference only without out=
    # PyTorch has no out= backward: its backward runs only as PyTorch runs it
    missing = len(SHAPES) if "torch" in backends else 0
    assert len(results) == len(SHAPES) * len(contenders.BYTE_MODEL) * per_shape_op - missing
    assert set(results.backend) == set(backends)
    assert (results.median_ms > 0).all() and (results.repeats >= 3).all()
    assert (results.q25_ms <= results.median_ms).all()
    row = results.iloc[0]
    nbytes = 64 * 8 * 4
    factor = contenders.BYTE_MODEL[row.op]
    assert row.gbps == pytest.approx(factor * nbytes / (row.median_ms / 1e3) / 1e9)
    assert results.pct_of_triad.notna().all() and (results.triad_gbps > 0).all()


needs_torch = pytest.mark.skipif(
    "torch" not in registry.available(peers=True), reason="the torch peer is not installed"
)


@needs_torch
def test_torch_backward_is_timed_as_pytorch_runs_it(results):
    """PyTorch's backward allocates dx itself and has no out= form (its .out overload
    allocates and copies): the timed call is the plain one, with no copy into an out."""
    from torch.profiler import profile

    data = contenders.inputs((4, 3, 10), np.float32, seed=0)
    call = contenders.api_call("backward", "torch", data, None)
    with profile() as prof:
        dx = call()
    ops = {e.name for e in prof.events()}
    assert "aten::native_batch_norm_backward" in ops
    assert not ops & {"aten::copy_", "aten::_copy_from_and_resize"}, sorted(ops)
    expected = contenders.api_call("backward", "reference", data, None)()
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5)
    rows = results[(results.backend == "torch") & (results.op == "backward")]
    assert not rows.preallocated_out.any() and len(rows) == len(SHAPES)


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
        kernels.measure([(32, 4)], budget_s=0.01)


def test_a_job_resolves_its_defaults_and_refuses_unknown_params():
    assert kernels.resolve_params({"shape": (8, 4)}) == {
        "shape": [8, 4], "budget_s": 1.0, "dtype": "float32"}  # fmt: skip
    with pytest.raises(ValueError, match="kernel job params"):
        kernels.resolve_params({"shape": [8, 4], "repeats": 3})
