"""Kernel timings of ghost batch norm and Batch Renorm against plain batch norm."""

import numpy as np
import pytest

from bnbench import registry
from bnbench.perf import kernels
from bnbench.registry import backends_supporting

SHAPES = [(64, 8), (6, 3, 10)]


@pytest.fixture(scope="module")
def variants():
    return kernels.measure_variants(SHAPES, budget_s=0.01)


def test_rows_for_every_variant_backend_and_shape(variants):
    own = [b for b in registry.available() if b != "reference"]
    assert set(variants.backend) == set(own)
    assert set(variants.op) == set(kernels.VARIANT_OPS.values())
    expected = sum(len(set(own) & set(backends_supporting(v))) for v, _ in kernels.VARIANT_OPS)
    assert len(variants) == len(SHAPES) * expected
    assert (variants.median_ms > 0).all() and (variants.plain_ms > 0).all()
    np.testing.assert_allclose(variants.vs_plain, variants.median_ms / variants.plain_ms)
    ghost = variants[variants.op.str.startswith("ghost")]
    assert set(ghost.ghost_batch_size) == {32, 3}
    if "torch" in registry.available(peers=True):
        assert (variants.torch_plain_ms > 0).all()
        np.testing.assert_allclose(
            variants.speedup_vs_torch_plain, variants.torch_plain_ms / variants.median_ms
        )


def test_run_job_times_the_variants_too():
    rows = kernels.run_job({"shape": [64, 8], "budget_s": 0.01})["rows"]
    ops = {r["op"] for r in rows}
    assert set(kernels.VARIANT_OPS.values()) <= ops and "forward_train" in ops


def test_a_wrong_variant_kernel_is_caught_before_timing(monkeypatch):
    import types

    from bnbench.kernels import cpu

    def broken(x, weight, bias, running_mean, running_var, rmax, dmax, eps, out):
        stats = cpu.forward_train_renorm(x, weight, bias, running_mean, running_var, rmax,
                                         dmax, eps, out)  # fmt: skip
        out[0, 0, 0] += 1.0
        return stats

    fake = types.SimpleNamespace(**{**vars(cpu), "forward_train_renorm": broken})
    real = registry.get_backend
    monkeypatch.setattr(registry, "available", lambda peers=False: ["reference", "cpu"])
    monkeypatch.setattr(registry, "get_backend", lambda n: fake if n == "cpu" else real(n))
    with pytest.raises(AssertionError, match="cpu renorm forward_train .* disagrees"):
        kernels.measure_variants([(32, 4)], budget_s=0.01)
