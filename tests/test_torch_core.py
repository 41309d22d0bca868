"""bnbench.torch._core, what the PyTorch adapter shares: finding the BN layers, splitting
batches, a layer's batch moments against NumPy, the fixed-statistics forward against the
formula by hand, and a model put back exactly as it was (buffers, flags, hooks)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from bnbench.torch import _core  # noqa: E402


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(),
                         nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))  # fmt: skip


def test_bn_layers_in_module_order_or_a_clear_error():
    model = net()
    layers = _core.bn_layers(model)
    assert list(layers) == ["1", "3.1"]
    assert layers["3.1"] is model[3][1]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        _core.bn_layers([model])
    with pytest.raises(ValueError, match=r"model \(Linear\) has no BatchNorm layers"):
        _core.bn_layers(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="BN layer '1' .* is not materialised yet"):
        _core.bn_layers(nn.Sequential(nn.Linear(2, 2), nn.LazyBatchNorm1d()))


def test_check_training_names_the_frozen_layers():
    model = net().train()
    _core.check_training(_core.bn_layers(model), "PreciseBN")  # all in training mode
    model[3][1].eval()
    with pytest.raises(ValueError, match=r"PreciseBN needs .* 1 are in eval mode: '3.1'"):
        _core.check_training(_core.bn_layers(model), "PreciseBN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_batch_moments_against_numpy(dtype):
    """float32/64 go to bnbench's Numba moments kernel, other dtypes to torch.var_mean."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 3, 5, generator=g) * 2 + 4).to(dtype)
    mean, var, count = _core.batch_moments(x)
    a = x.double().numpy().transpose(1, 0, 2).reshape(3, -1)
    assert count == 30 and mean.dtype == np.float64 and mean.shape == (3,)
    np.testing.assert_allclose(mean, a.mean(1), rtol=1e-12)
    np.testing.assert_allclose(var, a.var(1), rtol=1e-12)


def test_split_batch_and_iterate():
    x, y = torch.ones(2, 3), torch.zeros(2)
    assert _core.split_batch(x, 0) == (x, ())
    got, rest = _core.split_batch([x, y, "meta"], 0)
    assert got is x and rest[0] is y and rest[1] == "meta"
    with pytest.raises(TypeError, match="batch 4 .* its first element is a str"):
        _core.split_batch(("a", y), 4)
    with pytest.raises(TypeError, match="batch 0 .* it is a dict"):
        _core.split_batch({"x": x}, 0)
    assert [r for _, r in _core.iterate([(x, y), x], "cpu", "stats")] == [(y,), ()]
    with pytest.raises(ValueError, match="stats: batches yielded no batch"):
        list(_core.iterate([], "cpu", "stats"))


def test_fixed_forward_is_the_inference_formula_by_hand():
    layer = net()[1]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    var = torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64)
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    y = _core.fixed_forward(layer, mean, var)(x)
    hand = (x.double() - mean) / torch.sqrt(var + layer.eps) * layer.weight.double()
    hand = hand + layer.bias.double()
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), hand, rtol=1e-6, atol=1e-6)
    assert torch.equal(layer.running_mean, torch.zeros(3))  # no buffer read or written


def test_preserved_puts_everything_back_even_after_an_error():
    model = net().eval()
    model[3].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with _core.preserved(model) as hooks:
            hooks.pre(model[1], lambda m, a: calls.append("pre"))
            hooks.override(model[3][1], lambda x: x * 0)
            with pytest.raises(ValueError, match="already has an instance forward"):
                hooks.override(model[3][1], lambda x: x)
            model.train()
            model(torch.randn(5, 4))  # updates the running buffers
            raise RuntimeError("boom")
    assert calls == ["pre"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == flags
    assert "forward" not in model[3][1].__dict__
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_pass_guard_refuses_a_layer_called_twice_in_one_pass():
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(3, 3), bn, nn.Linear(3, 3), bn)
    with _core.preserved(model) as hooks:
        guard = _core.PassGuard(model, hooks)
        hooks.pre(bn, lambda m, a: guard.check("1"))
        guard.check("1")
        guard.check("1")  # outside a pass of the model: not counted
        with pytest.raises(ValueError, match="BN layer '1' was called twice in one forward"):
            model(torch.randn(4, 3))
