"""The kernel throughput study's ghost batch norm and Batch Renorm rows."""

import numpy as np
import pytest

from bnbench import registry, throughput
from bnbench.kernels import backends_supporting

SHAPES = [(64, 8), (6, 3, 10)]


@pytest.fixture(scope="module")
def variants():
    return throughput.measure_variants(SHAPES, budget_s=0.01)


def test_ghost_batch_size_divides_n_into_two_groups_or_more():
    assert throughput.ghost_batch_size(256) == 32
    assert throughput.ghost_batch_size(32) == 16
    assert throughput.ghost_batch_size(6) == 3
    assert throughput.ghost_batch_size(7) is None
    for N in range(2, 300):
        G = throughput.ghost_batch_size(N)
        assert G is None or (N % G == 0 and 2 <= G <= 32 and N // G >= 2)


def test_rows_for_every_variant_backend_and_shape(variants):
    own = [b for b in registry.available() if b != "reference"]
    assert set(variants.backend) == set(own)
    assert set(variants.op) == set(throughput.VARIANT_OPS.values())
    expected = sum(len(set(own) & set(backends_supporting(v))) for v, _ in throughput.VARIANT_OPS)
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


def test_report_has_the_variant_tables_and_findings(variants):
    plain = throughput.measure(SHAPES[:1], budget_s=0.01)
    import pandas as pd

    df = pd.concat([plain, variants], ignore_index=True)
    body = throughput.report_body(df)
    assert "## Ghost batch norm and Batch Renorm" in body
    assert "| 6x3x10 |" in body and "cpu ghost / plain" in body
    assert "- Ghost batch norm, forward, training mode, cpu:" in body
    assert "- Batch Renorm, backward, cpu:" in body
    throughput.figure(df)  # the variant rows stay out of the plain panels
    assert len(throughput.summary_tables(df)["forward_train"]) == 1


def test_run_job_times_the_variants_too():
    rows = throughput.run_job({"shape": [64, 8], "budget_s": 0.01})["rows"]
    ops = {r["op"] for r in rows}
    assert set(throughput.VARIANT_OPS.values()) <= ops and "forward_train" in ops


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
        throughput.measure_variants([(32, 4)], budget_s=0.01)
