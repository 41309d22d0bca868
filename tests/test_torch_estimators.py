"""bnbench.torch estimators on torch models, each against a direct computation: the
running estimators against PyTorch's own running buffers and hand-written averages,
PreciseBN against fvcore's two estimators run the fvcore way, the population statistics
against one training-mode pass over the whole set, adaptation modes against hand
computations; and the model left exactly as it was."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")
nn = torch.nn


def cnn(momentum=0.1, dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6, momentum=momentum), nn.ReLU(),
        nn.Conv1d(6, 5, 3, stride=2), nn.BatchNorm1d(5, momentum=momentum), nn.ReLU(),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(5 * 7, 8), nn.BatchNorm1d(8, momentum=momentum),
        nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def data(n=96, batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 16, generator=g) * 2 + 0.5
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def train(model, batches, epochs=2, context=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def bn_inputs(model, batches, train_mode=True):
    """Every BN layer's input per batch, recorded by plain hooks (the oracle's own)."""
    seen = {
        n: [] for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen[n].append(a[0].detach().double().clone())) for n in seen]  # fmt: skip
    model.train(train_mode)
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return seen


def moments(x):
    x = x.transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, correction=0), x.shape[1]


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
    )


def assert_untouched(model, snap):
    state, flags = snap
    now = model.state_dict()
    assert state.keys() == now.keys()
    for k, v in state.items():
        assert torch.equal(v, now[k]), k
    assert [m.training for m in model.modules()] == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert "forward" not in m.__dict__


# running estimators


def test_tracked_ema_and_cumulative_match_pytorch_running_buffers():
    batches = data()
    model = cnn(momentum=0.1)
    cumulative = cnn(momentum=None)
    with bt.track(model, momenta=[0.1, 0.3]) as tracker:
        train(model, batches)
    with bt.track(cumulative, estimators=["cumulative"]) as tracker_c:
        train(cumulative, batches)
    for stats, net in ((tracker.statistics("ema", momentum=0.1), model),
                       (tracker_c.statistics("cumulative"), cumulative)):  # fmt: skip
        for name, (mean, var) in stats.items():
            layer = net.get_submodule(name)
            assert mean.dtype == torch.float64 and mean.device == layer.running_mean.device
            np.testing.assert_allclose(mean, layer.running_mean.double(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(var, layer.running_var.double(), rtol=1e-5, atol=1e-6)
    assert tracker.updates == 3 * 2 * len(batches) and tracker.seconds > 0


def test_tracked_estimators_against_hand_averages():
    """Replay the same training with plain hooks and average by hand."""
    batches = data()
    model = cnn()
    ref = copy.deepcopy(model)
    with bt.track(model, momenta=[0.05, 0.5]) as tracker:
        train(model, batches, epochs=1)
    # the oracle: the same steps, each BN input recorded before the step
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    seen = []
    for x, y in batches:
        seen.append(bn_inputs(ref, [(x, y)]))
        ref.train()
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    for name in seen[0]:
        stats = [moments(s[name][0]) for s in seen]
        for m in [0.05, 0.5]:
            raw_mean, raw_var = 0.0, 0.0
            for mu, var, n in stats:
                raw_mean = (1 - m) * raw_mean + m * mu
                raw_var = (1 - m) * raw_var + m * var * n / (n - 1)
            debias = 1 - (1 - m) ** len(stats)
            mean, var = tracker.statistics("ema_debiased", momentum=m)[name]
            np.testing.assert_allclose(mean, raw_mean / debias, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(var, raw_var / debias, rtol=1e-9)
        mean, var = tracker.statistics("cumulative")[name]
        np.testing.assert_allclose(
            mean, torch.stack([s[0] for s in stats]).mean(0), rtol=1e-9, atol=1e-12
        )


def test_tracking_leaves_training_bitwise_unchanged():
    batches = data()
    plain, tracked = cnn(), cnn()
    train(plain, batches)
    with bt.track(tracked, momenta=[0.01, 0.1, 0.9]):
        train(tracked, batches)
    for (k, a), b in zip(plain.state_dict().items(), tracked.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert_untouched(tracked, snapshot(plain))


def test_tracking_ignores_eval_passes_and_refuses_frozen_bn():
    batches = data()
    model = cnn()
    with bt.track(model) as tracker:
        train(model, batches[:2], epochs=1)
        model.eval()
        with torch.no_grad():
            model(batches[0][0])  # a validation pass: ignored
    assert tracker.updates == 3 * 2
    model.train()
    model[1].eval()
    with pytest.raises(ValueError, match=r"BN layer '1' ran in eval mode while the model trains"):
        with bt.track(model):
            model(batches[0][0])
    assert_untouched(model, snapshot(model))


def test_tracker_statistics_errors():
    model = cnn()
    with bt.track(model, momenta=[0.1, 0.2]) as tracker:
        pass
    with pytest.raises(ValueError, match="momentum must be one of"):
        tracker.statistics("ema")
    with pytest.raises(ValueError, match="never ran in training mode"):
        tracker.statistics("ema", momentum=0.1)
    with pytest.raises(ValueError, match="estimators must be one or more of"):
        with bt.track(model, estimators=["precise"]):
            pass
    with pytest.raises(ValueError, match="momenta must be"):
        with bt.track(model, momenta=[0.0]):
            pass


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


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU (the CPU path is tested above)"
)
def test_every_estimator_on_cuda_matches_cpu():
    batches = data()
    model = cnn()
    train(model, batches, epochs=1)
    model.train()
    gpu = copy.deepcopy(model).cuda()
    gpu_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    with bt.track(gpu, momenta=[0.1]) as tracker:
        with torch.no_grad():
            for x, _ in gpu_batches:
                gpu(x)
    stats = {
        "ema": tracker.statistics("ema"),
        "precise": bt.precise_statistics(gpu, gpu_batches),
        "population": bt.population_statistics(gpu, gpu_batches),
    }
    cpu = {"precise": bt.precise_statistics(model, batches),
           "population": bt.population_statistics(model, batches)}  # fmt: skip
    for name, s in stats.items():
        for layer, (mean, var) in s.items():
            assert mean.device.type == "cuda" and var.device.type == "cuda"
            if name in cpu:
                torch.testing.assert_close(mean.cpu(), cpu[name][layer][0], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(var.cpu(), cpu[name][layer][1], rtol=1e-4, atol=1e-5)
    scores = bt.evaluate(gpu, gpu_batches, stats["population"])
    assert scores == pytest.approx(bt.evaluate(model, batches, cpu["population"]), abs=0.02)
