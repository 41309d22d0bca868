"""bnbench.nn models and their parts (BatchNorm layers, Residual, ResNet, fused BN+ReLU
networks): backward against central finite differences (float64), and training alike."""

import functools

import numpy as np
import pytest
from helpers import check_layer, numeric_grad

import bnbench as bn
from bnbench import adaptation, evaluate, nn, tent, train

F64 = np.float64


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
def test_batchnorm_layer_gradients(rng, shape):
    layer = nn.BatchNorm(3, dtype=F64)
    layer.params["weight"][...] = rng.uniform(0.5, 2, 3)
    layer.params["bias"][...] = rng.normal(size=3)
    check_layer(layer, rng.normal(1.0, 2.0, shape), rng)


def test_batchnorm_layer_matches_public_kernels_in_both_modes(rng):
    layer = nn.BatchNorm(4)
    x = rng.normal(3.0, 2.0, (8, 4, 6)).astype(np.float32)
    seen = []
    layer.observers.append(type("O", (), {"update": lambda self, *a: seen.append(a)})())
    ref = bn.batch_norm_train(x, layer.params["weight"], layer.params["bias"])
    np.testing.assert_array_equal(layer.forward(x, "train"), ref.y)
    (mean, var, count), = seen  # fmt: skip
    np.testing.assert_array_equal(mean, ref.mean)
    assert count == 48
    layer.eval_stats = (np.full(4, 1.0), np.full(4, 4.0))
    expected = bn.batch_norm_eval(x, mean=np.ones(4, np.float32), var=np.full(4, 4, np.float32))
    np.testing.assert_array_equal(layer.forward(x, "eval"), expected)
    # a normaliser: statistics computed from the layer's own input
    layer.eval_stats = lambda h: (h.mean(axis=(0, 2)), h.var(axis=(0, 2)))
    adapted = bn.batch_norm_eval(x, mean=x.mean(axis=(0, 2)), var=x.var(axis=(0, 2)))
    np.testing.assert_allclose(layer.forward(x, "eval"), adapted, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="eval_stats"):
        nn.BatchNorm(4).forward(x, "eval")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_whole_model_gradient(rng, name):
    model = nn.build(name, 12, 3, rng, dtype=F64)
    x = rng.normal(size=(6, 12))
    y = rng.integers(0, 3, 6)

    def loss():
        return nn.cross_entropy(model.forward(x, "train"), y)[0]

    _, g = nn.cross_entropy(model.forward(x, "train"), y)
    model.backward(g)
    layer, pname = model.parameters()[0]
    analytic = layer.grads[pname].copy()
    np.testing.assert_allclose(
        analytic, numeric_grad(loss, layer.params[pname]), rtol=1e-5, atol=1e-8
    )


def test_cnn_is_the_mnist1d_baseline_shape(rng):
    model = nn.cnn(rng=rng)
    convs = [layer for layer in model.layers if isinstance(layer, nn.Conv1d)]
    assert [(c.k, c.stride, c.padding) for c in convs] == [(5, 2, 1), (3, 2, 1), (3, 2, 1)]
    assert [c.params["weight"].shape[0] for c in convs] == [25, 25, 25]
    assert len(model.bn_layers) == 3
    assert model.layers[-1].params["weight"].shape == (10, 125)
    assert model.forward(np.zeros((2, 40), np.float32) + 1, "train").shape == (2, 10)


@pytest.mark.parametrize("depth", [2, 4, 16])
def test_resnet_has_depth_bn_layers_and_starts_as_identity_blocks(depth, rng):
    model = nn.resnet(depth=depth, rng=rng, dtype=F64)
    assert len(model.bn_layers) == depth
    blocks = [layer for layer in model.layers if isinstance(layer, nn.Residual)]
    assert len(blocks) == depth // 2
    x = rng.normal(size=(8, 20, 32))  # channels-last: length 40 / 2, 32 channels
    for block in blocks:  # the last BN of a block starts at weight 0: the block is x
        np.testing.assert_array_equal(block.forward(x, "train"), x)
    y = model.forward(rng.normal(size=(8, 40)), "train")
    assert y.shape == (8, 10)
    # the whole network's gradient, through every block, by finite differences
    small = nn.resnet(length=6, classes=3, channels=2, depth=2, rng=rng, dtype=F64)
    for layer in small.bn_layers:
        layer.params["weight"][:] = rng.uniform(0.5, 1.5, 2)
    check_layer(small, rng.normal(size=(3, 6)), rng)


@pytest.mark.parametrize("depth", [0, 3, 66, 8.0, True])
def test_resnet_depth_must_match_the_block_structure(depth):
    with pytest.raises(ValueError, match=r"depth must be an even integer in 2-64"):
        nn.resnet(depth=depth)


# -- BN followed by ReLU, fused (nn.fuse_relu): the same networks as before

MODEL_INPUTS = {"mlp": 40, "cnn": 40, "resnet": 40, "cnn2d": 784, "resnet2d": 784}


def pair(name, rng_seed=0, norm=nn.BatchNorm, **kw):
    """``(fused, unfused)`` builds of one network with the same weights; BN affine
    parameters randomised so that every block is more than the identity."""
    models = [nn.MODELS[name](*([(28, 28)] if name.endswith("2d") else []),
                              rng=np.random.default_rng(rng_seed), norm=norm, fuse=f, **kw)
              for f in (True, False)]  # fmt: skip
    for layers in zip(*(m.bn_layers for m in models), strict=True):
        r = np.random.default_rng(len(layers[0].params["weight"]))
        w, b = r.uniform(0.5, 1.5, layers[0].num_features), r.normal(size=layers[0].num_features)
        for layer in layers:
            layer.params["weight"][:], layer.params["bias"][:] = w, b
    return models


def step_results(model, x, y, mode="train"):
    logits = model.forward(x, mode)
    _, g = nn.cross_entropy(logits, y)
    dx = model.backward(g)
    return [logits, dx] + [layer.grads[k].copy() for layer, k in model.parameters()]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("mode", ["train", "stats"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "cf"])
@pytest.mark.parametrize("name", list(MODEL_INPUTS))
@pytest.mark.usefixtures("compiled_alike")
def test_fused_networks_are_the_unfused_ones(name, channels_last, mode, rng):
    """Logits, the input gradient and every parameter gradient bit for bit (the CPU
    backend's bound), in training mode and after a "stats" pass (TENT's backward); then
    inference mode with the population statistics."""
    if name == "mlp" and not channels_last:
        pytest.skip("the MLP has no layout")
    kw = {} if name == "mlp" else {"channels_last": channels_last}
    fused, plain = pair(name, **kw)
    assert len(fused.bn_layers) == len(plain.bn_layers)
    assert any(layer.relu for layer in fused.bn_layers)
    assert not any(layer.relu for layer in plain.bn_layers)
    x = rng.standard_normal((16, MODEL_INPUTS[name])).astype(np.float32)
    y = rng.integers(0, 10, 16)
    assert_same(step_results(fused, x, y, mode), step_results(plain, x, y, mode))
    assert all(layer.fused for layer in fused.bn_layers if layer.relu)
    stats = evaluate.population_statistics(plain, x)
    assert_same(evaluate.population_statistics(fused, x), stats)
    np.testing.assert_array_equal(evaluate.predict(fused, x, stats),
                                  evaluate.predict(plain, x, stats))  # fmt: skip


@pytest.mark.parametrize("variant", ["ghost", "renorm", "frozen"])
@pytest.mark.usefixtures("compiled_alike")
def test_variants_without_a_fused_kernel_fall_back(variant, rng):
    """Ghost batches, Batch Renorm and FrozenBN run their own kernel, then the ReLU: the
    same results as the unfused network, forward and backward."""
    if variant == "ghost":
        norm = functools.partial(nn.BatchNorm, ghost_batch_size=4)
    else:
        norm = nn.BatchRenorm if variant == "renorm" else nn.BatchNorm
    fused, plain = pair("cnn", norm=norm)
    x = rng.standard_normal((16, 40)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    for model in (fused, plain):
        model.forward(x, "train")  # Batch Renorm: its moving averages start
        for layer in model.bn_layers:
            if variant == "renorm":
                layer.rmax, layer.dmax = 1.5, 0.5
            if variant == "frozen":
                layer.freeze((np.full(layer.num_features, 0.1), np.full(layer.num_features, 2.0)))
    assert_same(step_results(fused, x, y), step_results(plain, x, y))
    assert not any(layer.fused for layer in fused.bn_layers)


def test_adaptation_hooks_and_tent_see_the_same_network(rng):
    fused, plain = pair("mlp")
    x = rng.standard_normal((32, 40)).astype(np.float32)
    source = evaluate.population_statistics(plain, x)
    for mode in ("prior", "robust_bn"):
        outs = [evaluate.predict(m, x[:8], adaptation.normalisers(mode, source, 0.5))
                for m in (fused, plain)]  # fmt: skip
        np.testing.assert_array_equal(*outs)
    logits = [tent.Tent(m, lr=0.01)(x[:8]) for m in (fused, plain)]
    np.testing.assert_array_equal(*logits)
    for a, b in zip(fused.bn_layers, plain.bn_layers, strict=True):
        np.testing.assert_array_equal(a.params["weight"], b.params["weight"])


def test_training_runs_give_the_same_accuracies(monkeypatch):
    """``bnbench.train.run`` on fused (the default) and unfused networks."""
    config = {"dataset": "gaussian_mixture", "model": "cnn", "epochs": 1, "batch_size": 32,
              "bn_momenta": [0.1], "estimators": ["ema", "population"],
              "test_batch_sizes": [50]}  # fmt: skip
    fused = train.run(config)
    monkeypatch.setattr(train, "build", functools.partial(nn.build, fuse=False))
    plain = train.run(config)
    assert fused["training"]["final_train_loss"] == plain["training"]["final_train_loss"]
    acc = [[e["test_accuracy"] for e in r["evaluations"]] for r in (fused, plain)]
    assert acc[0] == acc[1] and len(acc[0]) >= 2
