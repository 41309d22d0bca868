"""Backward pass against central finite differences of the forward pass (float64)."""

import numpy as np
import pytest
from helpers import WITH_PEERS, make_inputs, numeric_grad

import bnbench as bn


def loss(x, weight, bias, g, backend):
    return float(np.sum(bn.batch_norm_train(x, weight, bias, backend=backend).y * g))


@pytest.mark.parametrize("backend", ["reference", *WITH_PEERS])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 2, 2, 3)], ids=str)
def test_backward_matches_finite_differences(backend, shape, rng):
    x, weight, bias = make_inputs(rng, shape, np.float64, loc=1.0, scale=2.0)
    g = rng.standard_normal(shape)  # dL/dy for L = sum(y * g)
    res = bn.batch_norm_train(x, weight, bias, backend=backend)
    grads = bn.batch_norm_backward(g, x, weight, mean=res.mean, invstd=res.invstd, backend=backend)

    def f():
        return loss(x, weight, bias, g, backend)

    np.testing.assert_allclose(grads.dx, numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dweight, numeric_grad(f, weight), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.dbias, numeric_grad(f, bias), rtol=1e-6, atol=1e-7)
