"""TENT on bnbench networks against hand computations: the entropy gradient, one
optimiser step, episodic vs continual, restoring, and bad input."""

import numpy as np
import pytest

from bnbench import nn
from bnbench.tent import Diverged, Tent, bn_parameters, entropy_and_grad

F64 = np.float64


def tiny(rng):
    """Linear(3 -> 4) -> BN(4) -> ReLU -> Linear(4 -> 3), float64."""
    model = nn.Sequential([nn.Linear(3, 4, rng, bias=False, dtype=F64), nn.BatchNorm(4, dtype=F64),
                           nn.ReLU(), nn.Linear(4, 3, rng, dtype=F64)])  # fmt: skip
    bn = model.layers[1]
    bn.params["weight"][...] = rng.uniform(0.5, 1.5, 4)
    bn.params["bias"][...] = rng.normal(0, 0.3, 4)
    return model, bn


def mean_entropy(model, x):
    h, _ = entropy_and_grad(model.forward(x, "stats"))
    return h.mean()


def test_entropy_gradient_by_finite_differences(rng):
    z = rng.normal(size=(5, 4))
    h, g = entropy_and_grad(z)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(h, -(p * np.log(p)).sum(1), rtol=1e-12)
    num = np.zeros_like(z)
    for i, j in np.ndindex(z.shape):
        e = np.zeros_like(z)
        e[i, j] = 1e-6
        num[i, j] = (entropy_and_grad(z + e)[0].mean() - entropy_and_grad(z - e)[0].mean()) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


def fd_bn_grad(model, bn, x, name):
    """d mean-entropy / d BN parameter ``name`` by central differences."""
    p = bn.params[name]
    out = np.zeros_like(p)
    for c in range(p.size):
        p[c] += 1e-6
        up = mean_entropy(model, x)
        p[c] -= 2e-6
        down = mean_entropy(model, x)
        p[c] += 1e-6
        out[c] = (up - down) / 2e-6
    return out


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_one_tent_step_by_hand(rng, optimizer):
    """One batch: the logits are BN with the batch's statistics before the step; then
    Adam's first step is ``lr * g / (|g| + eps)`` (its moments are ``g`` and ``g^2``
    after bias correction), SGD's ``lr * g``, with ``g`` the finite-difference gradient of
    the mean entropy; only the BN weight and bias change."""
    model, bn = tiny(rng)
    x = rng.normal(size=(8, 3))
    lr = 0.01
    g = {k: fd_bn_grad(model, bn, x, k) for k in ("weight", "bias")}
    before = {k: v.copy() for k, v in bn.params.items()}
    others = [layer.params["weight"].copy() for layer in (model.layers[0], model.layers[3])]
    expected_logits = model.forward(x, "stats")
    tent = Tent(model, lr=lr, optimizer=optimizer)
    logits = tent(x)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-12)
    for k in ("weight", "bias"):
        step = lr * g[k] / (np.abs(g[k]) + 1e-8) if optimizer == "adam" else lr * g[k]
        np.testing.assert_allclose(bn.params[k], before[k] - step, rtol=1e-6, atol=1e-9)
    for layer, w in zip((model.layers[0], model.layers[3]), others, strict=True):
        np.testing.assert_array_equal(layer.params["weight"], w)  # not adapted
    tent.restore()
    for k in ("weight", "bias"):
        np.testing.assert_array_equal(bn.params[k], before[k])


def test_continual_carries_over_and_episodic_resets(rng):
    model, bn = tiny(rng)
    batches = [rng.normal(size=(8, 3)) for _ in range(4)]
    plain = [model.forward(b, "stats") for b in batches]  # prediction-time BN, source model
    episodic = Tent(model, lr=0.05, mode="episodic")
    for b, expected in zip(batches, plain, strict=True):
        # one step per batch, reset before each: exactly prediction-time BN's predictions
        np.testing.assert_allclose(episodic(b), expected, rtol=1e-12)
    episodic.restore()
    continual = Tent(model, lr=0.05)
    got = [continual(b) for b in batches]
    np.testing.assert_allclose(got[0], plain[0], rtol=1e-12)
    assert not np.allclose(got[-1], plain[-1])  # later batches see the adapted model
    assert continual.steps == 4
    continual.restore()
    np.testing.assert_allclose(model.forward(batches[0], "stats"), plain[0], rtol=1e-12)


def test_tent_lowers_the_entropy_of_a_repeated_batch(rng):
    model, _ = tiny(rng)
    x = rng.normal(size=(16, 3))
    tent = Tent(model, lr=0.05)
    first = mean_entropy(model, x)
    for _ in range(20):
        tent(x)
    assert mean_entropy(model, x) < first
    tent.restore()


def test_bad_input_and_divergence(rng):
    model, bn = tiny(rng)
    with pytest.raises(ValueError, match=r"tent learning rate must be a finite number > 0"):
        Tent(model, lr=0)
    with pytest.raises(ValueError, match=r"tent mode must be one of \('continual', 'episodic'\)"):
        Tent(model, mode="offline")
    with pytest.raises(ValueError, match="tent optimizer must be one of"):
        Tent(model, optimizer="rmsprop")
    no_bn = nn.Sequential([nn.Linear(3, 3, rng, dtype=F64)])
    with pytest.raises(ValueError, match="tent needs a network with BN affine parameters"):
        bn_parameters(no_bn)
    bn.params["weight"][...] = np.inf  # a diverged network
    with pytest.raises(Diverged, match="non-finite entropy after 0 steps"):
        Tent(model)(rng.normal(size=(8, 3)))
