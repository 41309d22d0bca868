"""Weight surgery (bnbench.surgery, bnbench.torch.surgery): each surgery against a hand
computation, update_bn against torch.optim.swa_utils.update_bn, the forgetting schedule
by hand, validation by name, training unchanged, and the user's torch model untouched."""

import numpy as np
import pytest

from bnbench import surgery
from bnbench.nn import Sequential, build

torch = pytest.importorskip("torch")

from bnbench.torch import surgery as tsurgery  # noqa: E402


def test_average_is_the_mean_of_the_weight_sets():
    sets = [[np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)],
            [np.array([3.0, 6.0], np.float32), np.array([[3.0]], np.float32)],
            [np.array([5.0, 1.0], np.float32), np.array([[-3.0]], np.float32)]]  # fmt: skip
    got = surgery.average_weights(sets)
    np.testing.assert_array_equal(got[0], [3.0, 3.0])
    np.testing.assert_array_equal(got[1], [[0.0]])
    assert got[0].dtype == np.float32


def _mlp(seed=0):
    return build("mlp", 6, 3, np.random.default_rng(seed))


def test_average_surgery_sets_every_parameter_to_the_checkpoints_mean_and_restores():
    model = _mlp()
    pairs = model.parameters()
    checkpoints = [surgery.values(pairs)]
    for k in (1, 2):  # two more "checkpoints": every parameter shifted
        checkpoints.append([v + k for v in checkpoints[0]])
    with surgery.applied(model, "average", 2, checkpoints):
        for (layer, name), v in zip(pairs, checkpoints[0], strict=True):
            np.testing.assert_allclose(layer.params[name], v + 1.5, rtol=1e-6)  # BN affine too
    for (layer, name), v in zip(pairs, checkpoints[0], strict=True):
        np.testing.assert_array_equal(layer.params[name], v)
    with pytest.raises(ValueError, match="average_last 4 needs 4 checkpoints"):
        surgery.apply(model, "average", 4, checkpoints)


def test_pruning_keeps_exactly_the_largest_magnitude_fraction():
    a = np.array([[0.1, -5.0], [2.0, -0.3]], np.float32)
    b = np.array([1.0, -4.0, 0.2, 3.0], np.float32)
    glob = surgery.prune_weights([a, b], 0.5, "global")  # 4 of 8 zeroed: |.| < 1 and 1.0
    np.testing.assert_array_equal(glob[0], [[0, -5.0], [2.0, 0]])
    np.testing.assert_array_equal(glob[1], [0, -4.0, 0, 3.0])
    per = surgery.prune_weights([a, b], 0.5, "layer")  # 2 of each
    np.testing.assert_array_equal(per[0], [[0, -5.0], [2.0, 0]])
    np.testing.assert_array_equal(per[1], [0, -4.0, 0, 3.0])
    w = np.random.default_rng(0).normal(size=(37, 11)).astype(np.float32)
    for s in (0.3, 0.7, 0.9):
        (p,) = surgery.prune_weights([w], s)
        zeros = p == 0
        assert zeros.sum() == round(s * w.size)
        assert np.abs(w[~zeros]).min() >= np.abs(w[zeros]).max()  # the largest kept
        np.testing.assert_array_equal(p[~zeros], w[~zeros])
    ties = surgery.prune_weights([np.ones(10, np.float32)], 0.3)[0]  # exactly 3, by position
    np.testing.assert_array_equal(ties, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])


def test_quantization_scale_rounding_grid_and_error():
    w = np.array([[1.0, -0.5, 0.26], [0.0, 0.0, 0.0], [-2.0, 0.1, 1.0]], np.float32)
    q, scale = surgery.quantize_weights(w, 4)  # levels +-7
    np.testing.assert_allclose(scale, [1 / 7, 0, 2 / 7])
    # 1 -> 7, -0.5 -> -3.5 -> -4 (half to even), 0.26 -> 1.82 -> 2; a zero channel stays 0
    np.testing.assert_allclose(q[0], np.array([7, -4, 2]) / 7, rtol=1e-6)
    np.testing.assert_array_equal(q[1], 0)
    np.testing.assert_allclose(q[2], np.array([-7, 0, 4]) * 2 / 7, rtol=1e-6)  # 3.5 -> 4
    x = np.random.default_rng(1).normal(size=(16, 3, 5)).astype(np.float32)  # a conv weight
    for bits in (8, 4, 2):
        q, scale = surgery.quantize_weights(x, bits)
        levels = 2 ** (bits - 1) - 1
        steps = q.reshape(16, -1) / scale[:, None]
        np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)  # on the grid
        assert np.abs(steps).max() <= levels + 1e-3
        err = np.abs(q - x).reshape(16, -1).max(axis=1)
        assert np.all(err <= scale / 2 * (1 + 1e-5))
    q8, s8 = surgery.quantize_weights(x, 8)
    assert np.abs(q8 - x).max() <= np.abs(x).max() / 127 / 2 * (1 + 1e-5)


def _torch_twin(model):
    """The bnbench MLP (Linear no bias, BN, ReLU, Linear no bias, BN, ReLU, Linear; the
    ReLU a layer of its own or applied by the BN layer) as a torch model with the same
    weights and BN affine parameters."""
    nn = torch.nn
    layers = []
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Linear":
            w = layer.params["weight"]
            lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in layer.params)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                if "bias" in layer.params:
                    lin.bias.copy_(torch.from_numpy(layer.params["bias"]))
            layers.append(lin)
        elif name == "BatchNorm":
            bn = nn.BatchNorm1d(layer.num_features)
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(layer.params["weight"]))
                bn.bias.copy_(torch.from_numpy(layer.params["bias"]))
            layers.append(bn)
            if getattr(layer, "relu", False):  # a BN layer that applies the ReLU itself
                layers.append(nn.ReLU())
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def test_update_bn_statistics_equal_swa_utils_update_bn():
    model = _mlp(3)
    rng = np.random.default_rng(0)
    for layer in model.bn_layers:  # non-trivial affine parameters
        layer.params["weight"][...] = rng.uniform(0.5, 2, layer.num_features)
        layer.params["bias"][...] = rng.normal(size=layer.num_features)
    x = rng.normal(size=(203, 6)).astype(np.float32)
    stats, used = surgery.update_bn_statistics(model, x, 20, np.random.default_rng(7))
    assert used == 200  # whole batches only
    idx = np.random.default_rng(7).permutation(203)[:200]
    loader = [(torch.from_numpy(x[idx[s : s + 20]]),) for s in range(0, 200, 20)]
    twin = _torch_twin(model)
    torch.optim.swa_utils.update_bn(loader, twin)
    bns = [m for m in twin if isinstance(m, torch.nn.BatchNorm1d)]
    for (mean, var), bn in zip(stats, bns, strict=True):
        np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-4, atol=1e-5)
    # the torch path's update_bn is swa_utils' own, on a copy
    got = tsurgery.update_bn(_torch_twin(model), loader)
    for bn, (mean, var) in zip(bns, got.values(), strict=True):
        torch.testing.assert_close(mean, bn.running_mean.double())
        torch.testing.assert_close(var, bn.running_var.double())


def _hand_forget(h_batches, start, momenta):
    mean, var = (np.array(s, np.float64) for s in start)
    for h, m in zip(h_batches, momenta, strict=True):
        mean = (1 - m) * mean + m * h.mean(0)
        var = (1 - m) * var + m * h.var(0, ddof=1)
    return mean, var


def test_forgetting_schedule_by_hand():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    from bnbench.nn import BatchNorm, Linear

    lin = Linear(3, 4, rng, bias=False)
    lin.params["weight"][...] = w
    model = Sequential([lin, BatchNorm(4)])
    x = rng.normal(size=(50, 3)).astype(np.float32)
    start = [(np.full(4, 5.0), np.full(4, 9.0))]
    schedule = [[2, 0.9], [3, 0.1]]
    (got,), used = surgery.forget_statistics(
        model, x, start, 8, np.random.default_rng(4), schedule
    )
    assert used == 40 and not model.bn_layers[0].observers
    idx = np.random.default_rng(4).permutation(50)[:40]
    h = [x[idx[s : s + 8]].astype(np.float64) @ w.T.astype(np.float64) for s in range(0, 40, 8)]
    want = _hand_forget(h, start[0], [0.9, 0.9, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    with pytest.raises(ValueError, match="forget_schedule needs 120 samples"):
        surgery.forget_statistics(model, x, start, 8, np.random.default_rng(4), [[15, 0.1]])
    # the torch path: the layers' own running update, momentum set per phase
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w))
        net[1].running_mean.fill_(5.0)
        net[1].running_var.fill_(9.0)
    batches = [(torch.from_numpy(x[idx[s : s + 8]]),) for s in range(0, 40, 8)]
    mean, var = tsurgery.forget(net, batches, schedule)["1"]
    np.testing.assert_allclose(mean.numpy(), want[0], rtol=1e-5)
    np.testing.assert_allclose(var.numpy(), want[1], rtol=1e-5)
    assert float(net[1].running_mean[0]) == 5.0  # the model itself untouched


@pytest.mark.parametrize("bad, name", [
    ({"surgeries": ["average", "distill"]}, "surgeries"),
    ({"sparsities": [0.5, 1.0]}, "sparsity"),
    ({"sparsities": [0]}, "sparsity"),
    ({"bits": [8, 16]}, "bits"),
    ({"bits": [4.0]}, "bits"),
    ({"average_last": [1]}, "average_last"),
    ({"prune_scope": "row"}, "prune_scope"),
    ({"precise_samples": [16]}, "precise_samples"),
    ({"forget_schedule": [[5, 1.5]]}, "forget_schedule"),
    ({"surgeon": 1}, "unknown surgery job parameter"),
    ({"batch_size": 1}, "batch_size"),
])  # fmt: skip
def test_invalid_parameters_are_named(bad, name):
    with pytest.raises(ValueError, match=name):
        surgery.resolve_params({"dataset": "gaussian_mixture", "model": "mlp", **bad})
    if "surgeon" not in bad:
        with pytest.raises(ValueError, match=name):
            tsurgery.resolve_params(bad)


def test_data_dependent_checks_come_before_training(monkeypatch):
    from bnbench import train

    def boom(*args, **kwargs):
        raise AssertionError("trained before validating")

    monkeypatch.setattr(train, "train_network", boom)
    tiny = {"dataset": "gaussian_mixture", "model": "mlp", "batch_size": 32}
    with pytest.raises(ValueError, match="average_last 5 checkpoints every 28 steps"):
        surgery.run_job({**tiny, "epochs": 2})
    with pytest.raises(ValueError, match="forget_schedule needs 960 samples"):
        surgery.run_job({**tiny, "surgeries": ["prune"], "forget_schedule": [[30, 0.1]]})
    with pytest.raises(ValueError, match="average_last 5 needs at least that many epochs"):
        tsurgery.resolve_params({"epochs": 3})


def test_training_is_that_of_bnbench_train(monkeypatch):
    """The surgery job's unchanged network ('none') scores what a train job scores:
    the checkpoints (average_last 3, every 8 steps) do not change training."""
    from bnbench import train

    tiny = {"dataset": "gaussian_mixture", "model": "mlp", "batch_size": 32, "epochs": 1}
    seen = []
    at = train.train_network

    def spy(config, data, progress=None, at_checkpoint=None):
        wrapped = lambda step, m, r: (seen.append(step), at_checkpoint(step, m, r))  # noqa: E731
        return at(config, data, progress, wrapped)

    monkeypatch.setattr(train, "train_network", spy)
    result = surgery.run_job({**tiny, "surgeries": ["average"], "average_last": [3],
                              "average_every": 8, "precise_samples": [0]})  # fmt: skip
    assert seen == [12, 20]  # 28 steps: checkpoints 8 and 16 steps before the end
    rows = {(e["surgery_label"], e["statistic"]): e for e in result["evaluations"]}
    ref = train.run(
        train.TrainConfig(
            **tiny, bn_momenta=[0.1], estimators=["ema", "population"], test_batch_sizes=[8]
        )
    )
    ref = {e["estimator"]: e for e in ref["evaluations"] if e["test_batch_size"] is None}
    for ours, theirs in (("stale", "ema"), ("population", "population")):
        assert rows[("none", ours)]["test_accuracy"] == ref[theirs]["test_accuracy"]
        assert rows[("none", ours)]["test_nll"] == pytest.approx(ref[theirs]["test_nll"])
    assert rows[("none", "population")]["var_error"] == 0.0
    assert rows[("average 3", "stale")]["weight_change"] > 0


def test_torch_path_leaves_the_model_as_it_was(one_thread):
    torch.manual_seed(0)
    model = tsurgery.torch_jobs.default_model()
    x = torch.randn(96, 1, 40)
    y = torch.randint(0, 10, (96,))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)  # buffers away from their initial values
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    batches = tsurgery.torch_jobs.loader(x, y, 16)
    other = tsurgery.prune(model, 0.5)
    averaged = tsurgery.average([model, other])
    tsurgery.quantize(model, 4)
    tsurgery.update_bn(model, batches)
    tsurgery.forget(model, batches, [[2, 0.9], [2, 0.1]])
    tsurgery.apply(model, "average", 2, [model, other])
    p = {**tsurgery.DEFAULTS, "batch_size": 16, "precise_samples": [32, 0],
         "forget_schedule": [[2, 0.9], [2, 0.1]]}  # fmt: skip
    stale = tsurgery._buffers(model)
    net = tsurgery.apply(model, "quantize", 8).train()
    rows = tsurgery.evaluate_statistics(net, (x, y), batches, stale, p)
    assert [r["statistic"] for r in rows] == ["stale", "update_bn", "precise", "precise",
                                              "population", "forget"]  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    # the average is AveragedModel's: the mean of the parameters
    for (name, a), b, c in zip(averaged.named_parameters(), model.parameters(),
                               other.parameters(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, (b + c) / 2, msg=name)
    # prune and quantize are the array functions on every Linear/Conv weight
    ws = [m.weight.detach().numpy() for _, m in tsurgery.weight_modules(model)]
    for (_, m), w in zip(tsurgery.weight_modules(other), surgery.prune_weights(ws, 0.5),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(m.weight.detach().numpy(), w)
