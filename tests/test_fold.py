"""BN folded into the preceding layer for inference: ``bnbench.nn.fold_batch_norm`` on
every model and layout against the unfolded network in inference mode, and
``bnbench.torch.fold.fold`` against a torch model in eval mode and against
``torch.nn.utils.fusion``."""

import copy

import numpy as np
import pytest

from bnbench import evaluate, nn

MODEL_INPUTS = {"mlp": 40, "cnn": 40, "resnet": 40, "cnn2d": 784, "resnet2d": 784}
BOUND = {np.float32: 1e-5, np.float64: 1e-12}  # relative to the largest logit


def model_and_stats(name, dtype, channels_last, fuse, rng):
    kw = {} if name == "mlp" else {"channels_last": channels_last}
    shape = [(28, 28)] if name.endswith("2d") else []
    model = nn.MODELS[name](*shape, rng=np.random.default_rng(0), dtype=dtype, fuse=fuse, **kw)
    for layer in model.bn_layers:  # every block more than the identity
        layer.params["weight"][:] = rng.uniform(0.5, 2.0, layer.num_features)
        layer.params["bias"][:] = rng.normal(size=layer.num_features)
    x = rng.standard_normal((24, MODEL_INPUTS[name])).astype(dtype)
    # any estimator's statistics: the population's, perturbed
    stats = [(m + 0.1, v * 1.5) for m, v in evaluate.population_statistics(model, x)]
    return model, x, stats


def snapshot(model):
    return [layer.params[k].copy() for layer, k in model.parameters()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
@pytest.mark.parametrize("name", list(MODEL_INPUTS))
def test_folded_network_is_the_inference_network(name, channels_last, dtype, rng):
    if name == "mlp" and not channels_last:
        pytest.skip("the MLP has no layout")
    model, x, stats = model_and_stats(name, dtype, channels_last, True, rng)
    before = snapshot(model)
    expected = evaluate.predict(model, x, stats)
    folded = nn.fold_batch_norm(model, stats)
    assert folded is not model and folded.bn_layers == []
    assert not any(isinstance(layer, nn.ChannelAffine) for layer in _flat(folded))
    got = folded.forward(x, "eval")
    assert got.dtype == dtype
    assert np.abs(got - expected).max() <= BOUND[dtype] * np.abs(expected).max()
    np.testing.assert_array_equal(folded.forward(x, "train"), got)  # no BN: mode-free
    for a, b in zip(snapshot(model), before, strict=True):  # the input model untouched
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(evaluate.predict(model, x, stats), expected)


def _flat(model):
    for layer in model.layers:
        yield from (_flat(layer) if isinstance(layer, nn.Sequential) else [layer])


def test_unfused_networks_fold_too(rng):
    model, x, stats = model_and_stats("cnn", np.float32, True, False, rng)
    folded = nn.fold_batch_norm(model, stats)
    expected = evaluate.predict(model, x, stats)
    assert np.abs(folded.forward(x, "eval") - expected).max() <= 1e-5 * np.abs(expected).max()
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNorm" not in kinds and kinds.count("ReLU") == 3
    fused = nn.fold_batch_norm(model_and_stats("cnn", np.float32, True, True, rng)[0], stats)
    convs = [layer for layer in fused.layers if isinstance(layer, nn.Conv1d)]
    assert "ReLU" not in [type(layer).__name__ for layer in fused.layers]
    assert all(c.relu for c in convs) and not model.layers[1].relu
    with pytest.raises(NotImplementedError, match="for inference only"):
        convs[0].backward(np.zeros((24, 20, 25), np.float32))


def test_a_bn_that_cannot_be_folded_is_its_inference_map(rng):
    """A BN first in the network, and one after a ReLU: each a ChannelAffine with the
    inference kernel's own coefficients, so bit for bit the BN in inference mode; a
    fused ReLU stays."""
    F32 = np.float32
    model = nn.Sequential([nn.BatchNorm(5, dtype=F32), nn.Linear(5, 4, rng, dtype=F32),
                           nn.ReLU(), nn.BatchNorm(4, dtype=F32, relu=True),
                           nn.Linear(4, 3, rng, dtype=F32)])  # fmt: skip
    for layer in model.bn_layers:
        layer.params["weight"][:] = rng.uniform(0.5, 2.0, layer.num_features)
        layer.params["bias"][:] = rng.normal(size=layer.num_features)
    x = rng.standard_normal((10, 5)).astype(F32)
    stats = [(rng.normal(size=c), rng.uniform(0.5, 2, c)) for c in (5, 4)]
    folded = nn.fold_batch_norm(model, stats)
    assert [type(layer).__name__ for layer in folded.layers] == [
        "ChannelAffine", "Linear", "ReLU", "ChannelAffine", "Linear"]  # fmt: skip
    np.testing.assert_array_equal(folded.forward(x, "eval"), evaluate.predict(model, x, stats))
    with pytest.raises(NotImplementedError, match="for inference"):
        folded.layers[0].backward(x)


def test_bad_statistics_are_clear_errors(rng):
    model = nn.mlp(rng=rng)
    good = [(np.zeros(100), np.ones(100))] * 2
    with pytest.raises(ValueError, match=r"one \(mean, var\) per BN layer \(2\), got 1"):
        nn.fold_batch_norm(model, good[:1])
    with pytest.raises(ValueError, match=r"statistics\[1\] var must have shape \(100,\)"):
        nn.fold_batch_norm(model, [good[0], (np.zeros(100), np.ones(3))])
    with pytest.raises(ValueError, match=r"statistics\[0\] var must be non-negative"):
        nn.fold_batch_norm(model, [(np.zeros(100), -np.ones(100)), good[1]])
    with pytest.raises(TypeError, match="model must be a bnbench.nn.Sequential"):
        nn.fold_batch_norm(nn.Linear(2, 2, rng), [])


# -- PyTorch models


def torch_model(torch, dtype, bn=None):
    T = torch.nn
    bn2d = bn or T.BatchNorm2d
    torch.manual_seed(0)
    model = T.Sequential(
        T.Conv2d(3, 8, 3, padding=1), bn2d(8), T.ReLU(),
        T.Sequential(T.Conv2d(8, 6, 3, bias=False), bn2d(6)),  # nested
        T.ReLU(), bn2d(6),  # after an activation: cannot be folded
        T.Flatten(), T.Linear(6 * 36, 16), T.BatchNorm1d(16), T.ReLU(), T.Linear(16, 4),
    ).to(dtype)  # fmt: skip
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from 0 and 1
            model(torch.randn(16, 3, 8, 8, dtype=dtype) * 2 + 1)
        for m in model.modules():
            if isinstance(m, T.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_fold_matches_eval_mode(dtype):
    torch = pytest.importorskip("torch")
    from bnbench.torch.fold import fold

    dtype = getattr(torch, dtype)
    model = torch_model(torch, dtype)
    state = copy.deepcopy(model.state_dict())
    folded = fold(model)
    assert model.training  # untouched: still in training mode, the same state
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    kinds = [type(m).__name__ for m in folded.modules()]
    assert kinds.count("BatchNorm2d") == 1 and "BatchNorm1d" not in kinds and not folded.training
    x = torch.randn(10, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        expected, got = model.eval()(x), folded(x)
    bound = 1e-5 if dtype == torch.float32 else 1e-12
    assert (got - expected).abs().max() <= bound * expected.abs().max()


def test_torch_fold_with_given_statistics_and_against_torch_fusion():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    from bnbench.torch.fold import fold

    model = torch_model(torch, torch.float64).eval()
    g = torch.Generator().manual_seed(1)
    stats = [(torch.randn(c, generator=g, dtype=torch.float64),
              torch.rand(c, generator=g, dtype=torch.float64) + 0.5) for c in (8, 6, 6, 16)]  # fmt: skip
    folded = fold(model, stats)
    reference = copy.deepcopy(model)  # the statistics in its buffers
    bns = [m for m in reference.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn, (mean, var) in zip(bns, stats, strict=True):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    x = torch.randn(10, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected, got = reference(x), folded(x)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()
    conv = fuse_conv_bn_eval(copy.deepcopy(reference[0]), reference[1])
    lin = fuse_linear_bn_eval(copy.deepcopy(reference[7]), reference[8])
    for ours, theirs in ((folded[0], conv), (folded[7], lin)):
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-13, atol=1e-13)


def test_torch_fold_takes_bnbench_layers_and_refuses_missing_statistics():
    torch = pytest.importorskip("torch")
    import bnbench.torch.op as op
    from bnbench.torch.fold import fold

    model = torch_model(torch, torch.float32, bn=op.BatchNorm2d).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert (fold(model)(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max()
    plain = torch.nn.Sequential(
        torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2, track_running_stats=False)
    )
    with pytest.raises(ValueError, match=r"BN layer 0 \(BatchNorm1d\) has no running statistics"):
        fold(plain)
    with pytest.raises(ValueError, match=r"one \(mean, var\) per BN layer \(1"):
        fold(plain, [])
    folded = fold(plain, [(torch.zeros(2), torch.ones(2))])
    assert isinstance(folded[1], torch.nn.Identity)
