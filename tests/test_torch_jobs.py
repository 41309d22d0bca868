"""The sweep job kind "torch" (bnbench.torch.jobs): prediction-time BN on test batches
of exactly the asked size, PreciseBN on whole batches only, and a cache key that follows
the user's model and data code."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnbench import metrics, sweep  # noqa: E402
from bnbench.evaluate import exact_batches  # noqa: E402
from bnbench.torch import evaluation  # noqa: E402
from bnbench.torch import jobs as torch_jobs  # noqa: E402

TINY = {"model": "torch_tiny_model:model", "data": "torch_tiny_model:data"}
SHORT = {**TINY, "epochs": 1, "momenta": [0.1], "precise_samples": [0]}


def test_prediction_time_scores_use_exact_shuffled_batches():
    """Every prediction comes from a batch of exactly the size asked for (200 test
    examples, size 64: the last batch is the last 64 shuffled examples, predicting 8),
    the same batches as bnbench.evaluate.exact_batches with that rng."""
    import torch_tiny_model

    torch.manual_seed(0)
    model = torch_tiny_model.model().train()
    _, _, x, y = (torch.as_tensor(a) for a in torch_tiny_model.data())
    x, y = x.float(), y.long()
    got = torch_jobs.prediction_time_scores(model, x, y, 64, np.random.default_rng(7))
    ref = copy.deepcopy(model).train()  # training mode: each batch's own statistics
    logits = np.empty((len(x), 3), dtype=np.float32)
    sizes = []
    with torch.no_grad():
        for idx, keep in exact_batches(len(x), 64, "iid", None, np.random.default_rng(7)):
            sizes.append(len(idx))
            logits[idx[keep]] = ref(x[torch.from_numpy(idx)]).numpy()[keep]
    assert sizes == [64] * 4
    s = metrics.scores(logits, y.numpy())
    assert got["test_accuracy"] == s["accuracy"]
    np.testing.assert_allclose([got["test_nll"], got["test_ece"]], [s["nll"], s["ece"]],
                               rtol=1e-5)  # fmt: skip


def test_run_job_predicts_test_batches_of_exactly_the_size_shuffled(monkeypatch):
    seen = []
    predict = evaluation.predict

    def spy(model, batches, statistics=None, device=None):
        if isinstance(statistics, evaluation.Adaptation):
            batches = list(batches)
            seen.append([b[1] for b in batches])
        return predict(model, batches, statistics, device)

    monkeypatch.setattr(evaluation, "predict", spy)
    params = {**SHORT, "batch_size": 50, "test_batch_sizes": [64, 16]}
    rows = torch_jobs.run_job(params)["evaluations"]
    tb = {r["test_batch_size"]: r for r in rows if r["estimator"] == "test_batch"}
    assert set(tb) == {64, 16} and all(0 <= r["test_accuracy"] <= 1 for r in tb.values())
    (big, small) = seen  # 200 test examples
    assert [len(b) for b in big] == [64] * 4 and [len(b) for b in small] == [16] * 13
    _, _, _, y = __import__("torch_tiny_model").data()
    assert not torch.equal(big[0], torch.as_tensor(y[:64]).long())  # shuffled
    # seeded: the same run gives the same batches
    seen.clear()
    torch_jobs.run_job(params)
    assert torch.equal(seen[0][0], big[0])


def test_prediction_time_on_a_size_beyond_the_test_set_is_a_recorded_error():
    rows = torch_jobs.run_job({**SHORT, "batch_size": 50, "test_batch_sizes": [500, 16]})
    tb = {r["test_batch_size"]: r for r in rows["evaluations"] if r["estimator"] == "test_batch"}
    assert "test batch size must be an integer in [1, 200]" in tb[500]["error"]
    assert "test_accuracy" not in tb[500] and 0 <= tb[16]["test_accuracy"] <= 1


def test_precise_bn_leaves_out_a_ragged_last_batch():
    """400 training examples in batches of 3 leave one: a BatchNorm1d after a Linear
    refuses a batch of one in training mode (and its Bessel-corrected variance is NaN),
    so PreciseBN uses the 133 whole batches and records 399 samples."""
    params = {**SHORT, "batch_size": 3, "precise_samples": [0, 7], "test_batch_sizes": [16]}
    result = torch_jobs.run_job(params)
    precise = [r for r in result["evaluations"] if r["estimator"] == "precise"]
    assert {(r["precise_request"], r["precise_samples"]) for r in precise} == {(0, 399), (7, 9)}
    for r in precise:
        assert np.isfinite(r["var_error"]) and np.isfinite(r["mean_error"])
        assert 0 <= r["test_accuracy"] <= 1


MODULE = """import numpy as np
import torch


def model():
    return torch.nn.Sequential(torch.nn.Linear(6, {width}), torch.nn.BatchNorm1d({width}),
                               torch.nn.Linear({width}, 3))


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    return x[:40], y[:40], x[40:], y[40:]
"""


def test_cache_key_follows_the_model_and_data_source(tmp_path, monkeypatch):
    path = tmp_path / "bnbench_key_probe_net.py"
    path.write_text(MODULE.format(width=8))
    monkeypatch.syspath_prepend(str(tmp_path))
    job = {"kind": "torch", "params": {"model": "bnbench_key_probe_net:model",
                                       "data": "bnbench_key_probe_net:data"}}  # fmt: skip
    p = torch_jobs.resolve_params(job["params"])
    assert set(p) == set(torch_jobs.DEFAULTS) | {"model_source", "data_source"}
    assert p["model_source"] == p["data_source"] and p["lr"] == 0.025
    assert torch_jobs.resolve_params(p) == p  # resolving twice changes nothing
    before = sweep.job_key(job), sweep.config_key(job)
    assert sweep.job_key(job) == before[0]
    path.write_text(MODULE.format(width=5))  # the user edits the model
    after = sweep.job_key(job), sweep.config_key(job)
    assert after[0] != before[0] and after[1] != before[1]
    assert "model_source" not in torch_jobs.resolve_params({"batch_size": 8})
    with pytest.raises(ValueError, match="cannot load factory 'no_such_module_xyz:f'"):
        torch_jobs.resolve_params({"model": "no_such_module_xyz:f"})
    with pytest.raises(ValueError, match=r"unknown torch job parameter\(s\) \['modle'\]"):
        torch_jobs.resolve_params({"modle": "x"})
