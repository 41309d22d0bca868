"""The training-step timing job (sweep kind "step")."""

import numpy as np
import pytest

from bnbench.perf import steps

PEER = "bnbench_studies.training_throughput:torch_network"


def test_step_job_times_both_libraries():
    params = {"model": "mlp", "batch_size": 4, "budget_s": 0.01, "peer": PEER}
    rows = steps.run_job(params)["rows"]
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
        steps.resolve_params(params)


def test_bnbench_step_trains():
    step = steps.bnbench_step("cnn", 8)
    before = [p.copy() for p in (step.model.layers[1].params["weight"],)]
    step()
    assert not np.array_equal(before[0], step.model.layers[1].params["weight"])


def test_the_image_cnn_step_runs_against_its_torch_twin():
    """cnn2d takes 784-value rows; its PyTorch twin has the same parameter count."""
    torch = pytest.importorskip("torch")
    from bnbench_studies.training_throughput import torch_network

    step = steps.bnbench_step("cnn2d", 4)
    step()
    ours = sum(layer.params[name].size for layer, name in step.model.parameters())
    twin = torch_network("cnn2d")
    assert ours == sum(p.numel() for p in twin.parameters() if p.requires_grad)
    torch_step = steps.torch_step(twin, 4, features=steps.INPUT_FEATURES["cnn2d"])
    torch_step()
    assert torch is not None


def test_a_job_without_a_peer_times_bnbench_alone():
    params = steps.resolve_params({"model": "mlp", "batch_size": 4, "budget_s": 0.01})
    assert params["peer"] is None and params["peer_source"] is None
    rows = steps.run_job(params)["rows"]
    assert [r["library"] for r in rows] == ["bnbench"]
