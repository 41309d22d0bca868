"""bnbench.torch.tracking: the running estimators (EMA, debiased EMA, cumulative) fed by
forward hooks against PyTorch's own running buffers and hand-written averages; training
left bitwise unchanged; eval passes ignored, frozen BN and bad arguments refused."""

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
