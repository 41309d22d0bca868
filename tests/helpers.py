"""Helpers shared by the test modules (imported as ``helpers``)."""

import os

import numpy as np

from bnbench import registry

#: bnbench's own backends (held to the full numerics contract) other than the oracle.
OWN = [b for b in registry.available() if b != "reference"]
#: plus installed peers (held to plain agreement with the oracle).
WITH_PEERS = [b for b in registry.available(peers=True) if b != "reference"]

#: Set by the test command, which installs the ``peers`` extra: then a peer that does not
#: load fails ``test_every_peer_is_tested`` instead of dropping out of the parameters.
REQUIRE_PEERS = os.environ.get("BNBENCH_REQUIRE_PEERS") == "1"


def peer_unavailable(name):
    """Why peer ``name`` does not load here, or ``None`` when it does."""
    try:
        registry.get_backend(name)
    except registry.BackendUnavailable as err:
        return str(err)
    return None


def tol(dtype):
    """(rtol, atol) for comparing a backend's result with the float64 oracle.

    float64 allows for inputs whose mean is 10^6 standard deviations: ``x - mean`` then
    keeps only ~10 significant digits in any float64 algorithm, the oracle's included.
    """
    return (2e-5, 2e-5) if np.dtype(dtype) == np.float32 else (1e-8, 1e-8)


def make_inputs(rng, shape, dtype, loc=0.0, scale=1.0):
    C = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    weight = rng.uniform(0.5, 2.0, C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    return x, weight, bias


def numeric_grad(f, a, h=1e-6):
    """Central finite differences of the scalar ``f()`` with respect to ``a`` (in place)."""
    grad = np.empty_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def backends_for(operation, backends=None):
    """``backends`` (default ``WITH_PEERS``) as pytest parameters for ``operation`` (a key
    of :data:`bnbench.kernels.OPERATIONS`): a peer without it is skipped with the reason;
    bnbench's own backends always run, so a missing kernel there fails."""
    import pytest

    from bnbench.kernels import supports

    params = []
    for name in WITH_PEERS if backends is None else backends:
        if name in registry.BACKENDS or supports(registry.get_backend(name), operation):
            params.append(name)
        else:
            reason = f"peer {name!r} has no {operation} kernel"
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
    return params


#: a training job that takes about a second: the tiny study's runs
TINY = {"dataset": "gaussian_mixture", "model": "mlp", "epochs": 1, "bn_momenta": [0.1],
        "estimators": ["ema", "population"], "test_batch_sizes": [300]}  # fmt: skip

TINY_STUDY = """
import sys
from bnbench.study import Study, main

TINY = {tiny!r}

def jobs(n, **extra):
    return [{{"kind": "train", "params": {{**TINY, "seed": s, **extra}}}} for s in range(n)]

def analyse(df):
    return f"{{len(df)}} rows, seeds {{sorted(df.seed.unique().tolist())}}", []

STUDY = Study(name="tiny", title="Tiny study", analyse=analyse,
              presets={{"quick": lambda: jobs(2), "many": lambda: jobs(12),
                       "slow": lambda: jobs(8, epochs=60), "empty": lambda: []}})

if __name__ == "__main__":
    sys.exit(main(STUDY))
"""


def check_layer(layer, x, rng, mode="train"):
    """Loss = sum(forward(x) * G): compare dx and every parameter gradient."""
    G = rng.normal(size=layer.forward(x, mode).shape)

    def loss():
        return float(np.sum(layer.forward(x, mode) * G))

    layer.forward(x, mode)
    dx = layer.backward(G)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    # a container's parameters live in its layers
    owned = (
        layer.parameters() if hasattr(layer, "parameters") else [(layer, n) for n in layer.params]
    )
    for owner, name in owned:
        layer.forward(x, mode)
        layer.backward(G)
        analytic = owner.grads[name].copy()
        np.testing.assert_allclose(analytic, numeric_grad(loss, owner.params[name]), rtol=1e-6,
                                   atol=1e-8, err_msg=name)  # fmt: skip
