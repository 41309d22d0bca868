"""SGD with momentum and weight decay, and the cosine learning-rate schedule."""

import numpy as np
import pytest

from bnbench import nn

F64 = np.float64


def test_sgd_step_and_schedule(rng):
    model = nn.Sequential([nn.Linear(2, 1, rng, dtype=F64)])
    lin = model.layers[0]
    w0 = lin.params["weight"].copy()
    lin.grads["weight"][...] = 1.0
    lin.grads["bias"][...] = 1.0
    opt = nn.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step()
    v1 = 1.0 + 0.5 * w0
    w1 = w0 - 0.1 * v1
    np.testing.assert_allclose(lin.params["weight"], w1)
    opt.step()  # velocity: 0.9 v + g
    np.testing.assert_allclose(lin.params["weight"], w1 - 0.1 * (0.9 * v1 + 1.0 + 0.5 * w1))
    assert not nn.SGD.decays(lin, "bias") and nn.SGD.decays(lin, "weight")
    assert nn.cosine_lr(1.0, 0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert nn.cosine_lr(1.0, 10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert nn.cosine_lr(1.0, 100, 100, warmup_steps=10) == pytest.approx(0.0)


def test_sgd_updates_a_shared_layer_once_and_refuses_no_parameters(rng):
    lin = nn.Linear(3, 3, rng, dtype=F64)
    model = nn.Sequential([lin, nn.ReLU(), lin])
    opt = nn.SGD(model, lr=0.1, momentum=0.0)
    assert opt.params.size == 12  # weight and bias once
    w0 = lin.params["weight"].copy()
    lin.grads["weight"][...] = 1.0
    opt.step()
    np.testing.assert_allclose(lin.params["weight"], w0 - 0.1)
    with pytest.raises(ValueError, match="with parameters"):
        nn.SGD(nn.Sequential([nn.ReLU()]), lr=0.1)
