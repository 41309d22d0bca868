"""bnbench.torch estimators on torch models: the helpers the torch tests share (a small
CNN, its batches, training, the BN inputs recorded by plain hooks, the model-untouched
check) and every estimator on CUDA against CPU. The running estimators against PyTorch's
buffers and hand averages: test_torch_tracking.py; PreciseBN against fvcore and the
population statistics against one pass over the whole set: test_torch_statistics.py."""

import copy

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


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a GPU (the CPU paths: test_torch_statistics.py, test_torch_tracking.py)",
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
