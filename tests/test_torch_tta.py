"""TENT and robust BN on torch models (bnbench.torch.tta, bnbench.torch.robust_bn) against
hand computations and bnbench's NumPy TENT, and the model exactly as before afterwards:
parameters bit for bit, requires_grad, .grad, buffers, train/eval flags, no hooks."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bnbench.torch")
nn = torch.nn

from test_torch_estimators import assert_untouched, cnn, data, snapshot  # noqa: E402

from bnbench import nn as bnn  # noqa: E402
from bnbench.tent import Diverged  # noqa: E402
from bnbench.tent import Tent as NumpyTent  # noqa: E402
from bnbench.torch import evaluation as ev  # noqa: E402
from bnbench.torch import tta  # noqa: E402

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0):
    """Linear(3 -> 4, no bias) -> BN1d(4) -> ReLU -> Linear(4 -> 3), float64."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(),
                          nn.Linear(4, 3)).double()  # fmt: skip
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_(0, 0.3)
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    return model


def stream(n=3, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, generator=g, dtype=F64) * 1.5 + 0.3,
             torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]  # fmt: skip


def train_forward(model, x):
    """The reference's forward: a copy in train mode (BN with the batch's statistics)."""
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        return ref(x).numpy()


def full_snapshot(model):
    return snapshot(model), [(p.requires_grad, p.grad) for p in model.parameters()]


def assert_restored(model, snap):
    state, grads = snap
    assert_untouched(model, state)  # parameters and buffers bit for bit, flags, no hooks
    for p, (flag, grad) in zip(model.parameters(), grads, strict=True):
        assert p.requires_grad == flag
        assert p.grad is grad


def test_one_tent_step_by_hand():
    """Batch 1: logits = the pre-step train-mode forward; BN weight and bias then take
    Adam's first step ``lr * g / (|g| + eps)``, ``g`` the gradient of the mean softmax
    entropy (autograd on a separate copy, plain torch ops); batch 2's logits are the
    forward with those parameters; nothing else changes."""
    model, batches, lr = tiny(), stream(2), 0.01
    (x1, _), (x2, _) = batches
    ref = copy.deepcopy(model).train()
    out = ref(x1)
    p = torch.exp(out - torch.logsumexp(out, 1, keepdim=True))
    (-(p * torch.log(p)).sum(1).mean()).backward()
    expected = {k: (getattr(ref[1], k) - lr * getattr(ref[1], k).grad
                    / (getattr(ref[1], k).grad.abs() + 1e-8)).detach()
                for k in ("weight", "bias")}  # fmt: skip
    snap = full_snapshot(model)
    method = tta.tent(lr=lr)
    logits, labels = ev.predict(model, batches, method)
    assert method.steps == 2 and labels.shape == (16,)
    np.testing.assert_allclose(logits[:8], out.detach().numpy(), rtol=1e-13, atol=1e-15)
    with torch.no_grad():
        ref[1].weight.copy_(expected["weight"])
        ref[1].bias.copy_(expected["bias"])
    np.testing.assert_allclose(logits[8:], train_forward(ref, x2), rtol=1e-12, atol=1e-14)
    # after the second step: both changed, the others untouched; the model restored
    assert set(method.parameters) == {"1.weight", "1.bias"}
    assert not torch.equal(method.parameters["1.weight"], model[1].weight)
    assert_restored(model, snap)


def numpy_twin(model):
    layers = [bnn.Linear(3, 4, np.random.default_rng(0), bias=False, dtype=np.float64),
              bnn.BatchNorm(4, dtype=np.float64), bnn.ReLU(),
              bnn.Linear(4, 3, np.random.default_rng(0), dtype=np.float64)]  # fmt: skip
    for dst, src in ((layers[0], model[0]), (layers[1], model[1]), (layers[3], model[3])):
        for k in dst.params:
            dst.params[k][...] = getattr(src, k).detach().numpy()
    return bnn.Sequential(layers)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("mode", ["continual", "episodic"])
def test_matches_the_numpy_tent(mode, optimizer):
    model, batches = tiny(), stream(3)
    twin = NumpyTent(numpy_twin(model), lr=0.05, mode=mode, optimizer=optimizer)
    expected = np.concatenate([twin(x.numpy()) for x, _ in batches])
    logits, _ = ev.predict(model, batches, tta.tent(lr=0.05, mode=mode, optimizer=optimizer))
    np.testing.assert_allclose(logits, expected, rtol=1e-8, atol=1e-10)


def test_episodic_is_prediction_time_bn_and_continual_is_not():
    model, batches = tiny(), stream(4)
    plain, _ = ev.predict(model, batches, ev.prediction_time())
    method = tta.tent(lr=0.05, mode="episodic")
    episodic, _ = ev.predict(model, batches, method)
    # the same numbers up to the last bits: torch's batch-norm kernel vs NumPy's moments
    np.testing.assert_allclose(episodic, plain, rtol=1e-12, atol=1e-14)
    continual, _ = ev.predict(model, batches, tta.tent(lr=0.05))
    np.testing.assert_allclose(continual[:8], plain[:8], rtol=1e-12, atol=1e-14)
    assert np.abs(continual[8:] - plain[8:]).max() > 1e-4  # later batches see the update
    # the state after the stream: one step from the source model and a fresh optimiser
    one = tta.tent(lr=0.05)
    ev.predict(model, batches[-1:], one)
    assert method.steps == 4 and one.steps == 1
    for k, v in one.parameters.items():
        torch.testing.assert_close(method.parameters[k], v, rtol=1e-12, atol=1e-14)


def test_model_mode_eval_keeps_dropout_off_and_train_is_the_reference():
    batches = data(n=48)
    model = cnn(dropout=0.5).double()
    batches = [(x.double(), y) for x, y in batches]
    plain, _ = ev.predict(model, batches, ev.prediction_time())  # dropout off
    off, _ = ev.predict(model, batches, tta.tent(mode="episodic"))
    np.testing.assert_allclose(off, plain, rtol=1e-10, atol=1e-12)
    torch.manual_seed(7)
    on, _ = ev.predict(model, batches, tta.tent(mode="episodic", model_mode="train"))
    ref = copy.deepcopy(model).train()  # the reference's model.train(): dropout active
    torch.manual_seed(7)
    with torch.no_grad():
        expected = np.concatenate([ref(x).numpy() for x, _ in batches])
    np.testing.assert_allclose(on, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(on - plain).max() > 1e-3


def test_robust_bn_by_hand():
    """EMA from the source statistics with the batch's biased variance, momentum 0.05
    (or the given one), each batch normalised with the statistics after its update."""
    model, batches = tiny(), stream(3)
    source = {"1": (torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.5)}
    for momentum, method in ((0.05, ev.robust_bn(source)), (0.3, ev.robust_bn(source, 0.3))):
        mean, var = (s.clone() for s in source["1"])
        expected = []
        for x, _ in batches:
            with torch.no_grad():
                h = model[0](x)
                mean = (1 - momentum) * mean + momentum * h.mean(0)
                var = (1 - momentum) * var + momentum * ((h - h.mean(0)) ** 2).mean(0)
                z = (h - mean) / torch.sqrt(var + model[1].eps) * model[1].weight + model[1].bias
                expected.append(model[3](torch.relu(z)).numpy())
        snap = full_snapshot(model)
        logits, _ = ev.predict(model, batches, method)
        np.testing.assert_allclose(logits, np.concatenate(expected), rtol=1e-12, atol=1e-13)
        assert_restored(model, snap)
    assert method.mode == "robust_bn" and method.param == 0.3


def test_everything_restored_after_success_and_after_errors():
    model = cnn(dropout=0.3)
    model[1].eval()  # mixed flags
    model[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    model[4].weight.grad = torch.ones_like(model[4].weight)  # a user's pending gradient
    batches = data(n=48)
    snap = full_snapshot(model)
    ev.evaluate(model, batches, tta.tent(lr=0.05))
    assert_restored(model, snap)

    def failing():
        yield batches[0]
        yield batches[1]
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        ev.predict(model, failing(), tta.tent(lr=0.05))
    assert_restored(model, snap)
    bad = [batches[0], (torch.full_like(batches[1][0], np.inf), batches[1][1])]
    method = tta.tent(lr=0.05)
    with pytest.raises(Diverged, match="non-finite entropy after 1 steps"):
        ev.predict(model, bad, method)
    assert_restored(model, snap)
    with pytest.raises(ValueError, match=r"BN layer '9' normalises with the batch's own"):
        ev.predict(model, [(batches[0][0][:1], batches[0][1][:1])], tta.tent())
    assert_restored(model, snap)


def test_bad_input_raises_by_name():
    with pytest.raises(ValueError, match=r"tent learning rate must be a finite number > 0"):
        tta.tent(lr=0)
    with pytest.raises(ValueError, match=r"tent mode must be one of \('continual', 'episodic'"):
        tta.tent(mode="offline")
    with pytest.raises(ValueError, match="tent optimizer must be one of"):
        tta.tent(optimizer="rmsprop")
    with pytest.raises(ValueError, match="tent model_mode must be one of"):
        tta.tent(model_mode="test")
    with pytest.raises(ValueError, match=r"tent betas\[1\] must be a number in \[0, 1\)"):
        tta.tent(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="tent momentum must be"):
        tta.tent(optimizer="sgd", momentum=float("nan"))
    frozen = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"tent needs BN affine.*Sequential: \['1'\].*affine=F"):
        ev.predict(frozen, [(torch.randn(4, 3), torch.zeros(4))], tta.tent())
    with pytest.raises(ValueError, match="has no BatchNorm layers"):
        ev.predict(nn.Linear(3, 2), [(torch.randn(4, 3), torch.zeros(4))], tta.tent())
    model = tiny()
    with pytest.raises(TypeError, match="batch 0 must be \\(input, labels\\)"):
        ev.predict(model, [torch.randn(4, 3, dtype=F64)], tta.tent())
    with pytest.raises(ValueError, match="tent: batches yielded no batch"):
        ev.predict(model, [], tta.tent())
    with pytest.raises(TypeError, match="an Adaptation or a Tent"):
        ev.predict(model, stream(1), "tent")
    with pytest.raises(TypeError, match="robust_bn needs source statistics"):
        ev.robust_bn(None)
    source = {"1": (torch.zeros(4), torch.ones(4))}
    with pytest.raises(ValueError, match=r"momentum must be one number in \(0, 1\]|momenta"):
        ev.robust_bn(source, 1.5)
    with pytest.raises(ValueError, match=r"source statistics miss BN layer\(s\) \['1'\]"):
        ev.predict(model, stream(1), ev.robust_bn({"0": source["1"]}))
    assert "lr=0.001" in repr(tta.tent()) and "momentum=0.9" in repr(tta.tent(optimizer="sgd"))
