"""bnbench.torch.statistics: PreciseBN against fvcore's two estimators run the fvcore way,
the exact population statistics against one training-mode pass over the whole set, and
load_statistics; the model left exactly as it was."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")
nn = torch.nn

from test_torch_estimators import (  # noqa: E402
    assert_untouched,
    bn_inputs,
    cnn,
    data,
    moments,
    snapshot,
    train,
)

# PreciseBN against fvcore's estimators, run the fvcore way (momentum 1.0, buffers read)


def fvcore_precise(model, batches):
    """fvcore's update_bn_stats with both of its estimators, on a copy of the model:
    momentum 1.0 so running_mean/var hold the last batch's mean and unbiased variance."""
    model = copy.deepcopy(model)
    layers = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    for m in layers.values():
        m.momentum = 1.0
    sizes = {}
    for n, m in layers.items():
        m.register_forward_pre_hook(
            lambda m, a, n=n: sizes.__setitem__(n, a[0].numel() // a[0].shape[1])
        )
    old = {
        n: [torch.zeros(m.num_features, dtype=torch.float64)] * 2 + [0] for n, m in layers.items()
    }
    new = {
        n: [torch.zeros(m.num_features, dtype=torch.float64)] * 2 + [0] for n, m in layers.items()
    }
    with torch.no_grad():
        for x, _ in batches:
            model(x)
            for n, m in layers.items():
                bm, bv, bs = m.running_mean.double(), m.running_var.double(), sizes[n]
                # _MeanOfBatchVarianceEstimator: equal-weight mean of unbiased variances
                o = old[n]
                o[2] += 1
                o[0] = o[0] + (bm - o[0]) / o[2]
                o[1] = o[1] + (bv - o[1]) / o[2]
                # _PopulationVarianceEstimator: size-weighted, Bessel undone
                p = new[n]
                p[2] += bs
                sq = bm.square() + bv * (bs - 1) / bs
                p[0] = p[0] + (bm - p[0]) * (bs / p[2])
                p[1] = p[1] + (sq - p[1]) * (bs / p[2])
    return ({n: (o[0], o[1]) for n, o in old.items()},
            {n: (p[0], p[1] - p[0].square()) for n, p in new.items()})  # fmt: skip


def test_precise_statistics_match_fvcore_current_and_old():
    batches = data(n=128, batch=32)
    model = cnn()
    train(model, batches, epochs=1)
    snap = snapshot(model)
    old, current = fvcore_precise(model, batches[:3])
    total = bt.precise_statistics(model, batches, num_samples=96, aggregation="total_variance")
    mean_var = bt.precise_statistics(model, batches, 96, "mean_of_batch_variances")
    assert total.samples == 96 and total.passes == 1
    for ours, theirs in ((total, current), (mean_var, old)):
        for name, (mean, var) in theirs.items():
            # fvcore's float32 buffers and E[x^2] - E[x]^2 limit the agreement
            np.testing.assert_allclose(ours[name][0], mean, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ours[name][1], var, rtol=1e-4, atol=1e-5)
    assert_untouched(model, snap)


def test_precise_uses_whole_batches_until_num_samples():
    batches = data(n=96, batch=16)
    model = cnn()
    assert bt.precise_statistics(model, batches, num_samples=20).samples == 32
    assert bt.precise_statistics(model, batches).samples == 96
    with pytest.raises(ValueError, match="aggregation must be one of"):
        bt.precise_statistics(model, batches, aggregation="fvcore")


# exact population statistics


@pytest.mark.parametrize("kind", ["plain", "sync", "lazy", "2d", "3d"])
def test_population_statistics_equal_one_pass_over_the_whole_set(kind):
    torch.manual_seed(0)
    if kind in ("2d", "3d"):
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if kind == "2d" else (nn.Conv3d, nn.BatchNorm3d)
        model = nn.Sequential(conv(2, 4, 3), bn(4), nn.ReLU(), conv(4, 3, 1), bn(3),
                              nn.Flatten(), nn.LazyLinear(3))  # fmt: skip
        shape = (2, 6, 6) if kind == "2d" else (2, 5, 5, 5)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(48, *shape, generator=g) + 1
        batches = [(x[i : i + 12], torch.zeros(12, dtype=torch.long)) for i in range(0, 48, 12)]
    else:
        model, batches = cnn(dropout=0.5), data()
    if kind == "sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if kind == "lazy":
        model[1] = nn.LazyBatchNorm1d()
    model.train()
    with torch.no_grad():  # materialise lazy modules
        model(batches[0][0])
    train(model, batches, epochs=1)
    model.train()
    snap = snapshot(model)
    pop = bt.population_statistics(model, batches)
    n_layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert pop.passes == n_layers and pop.samples == sum(len(b[1]) for b in batches)
    # the oracle: one training-mode pass with the whole set as a single batch (dropout off)
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    whole = [(torch.cat([b[0] for b in batches]), None)]
    for name, (x,) in bn_inputs(ref, whole).items():
        mean, var, _ = moments(x)
        np.testing.assert_allclose(pop[name][0], mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(pop[name][1], var, rtol=1e-5, atol=1e-7)
    assert_untouched(model, snap)


def test_load_statistics_then_eval_equals_evaluate():
    batches = data()
    model = cnn()
    train(model, batches)
    model.train()
    pop = bt.population_statistics(model, batches)
    scores = bt.evaluate(model, batches, pop)
    bt.load_statistics(model, pop)
    own = bt.evaluate(model, batches)  # the model's own (now loaded) buffers
    assert own == pytest.approx(scores, rel=1e-5)
    for name, (mean, var) in pop.items():
        assert torch.allclose(model.get_submodule(name).running_mean.double(), mean, atol=1e-6)
        assert torch.allclose(model.get_submodule(name).running_var.double(), var, rtol=1e-6)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="missing"):
        bt.load_statistics(model, {"1": pop["1"]})
    bad = dict(pop, **{"4": (pop["4"][0][:2], pop["4"][1])})
    with pytest.raises(ValueError, match=r"statistics\['4'\] mean must have shape \(5,\)"):
        bt.load_statistics(model, bad)
    assert_untouched(model, snap)
