"""The two MNIST-1D baselines (Greydanus 2020), with BN after each hidden layer."""

import numpy as np

from .layers import BatchNorm, Conv1d, Flatten, Linear, ReLU, Reshape


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse."""

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x, mode="train"):
        for layer in self.layers:
            x = layer.forward(x, mode)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    @property
    def bn_layers(self):
        return [layer for layer in self.layers if isinstance(layer, BatchNorm)]

    def parameters(self):
        """``(layer, name)`` pairs of every parameter, in layer order."""
        return [(layer, name) for layer in self.layers for name in layer.params]


def mlp(in_features=40, classes=10, hidden=100, rng=None, dtype=np.float32):
    """MNIST-1D's MLP baseline (40 -> 100 -> 100 -> 10, ReLU) with BN after each hidden
    linear layer (whose bias BN makes redundant, so it has none)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return Sequential(
        [
            Linear(in_features, hidden, rng, bias=False, dtype=dtype),
            BatchNorm(hidden, dtype=dtype),
            ReLU(),
            Linear(hidden, hidden, rng, bias=False, dtype=dtype),
            BatchNorm(hidden, dtype=dtype),
            ReLU(),
            Linear(hidden, classes, rng, dtype=dtype),
        ]
    )


def cnn(length=40, classes=10, channels=25, rng=None, dtype=np.float32):
    """MNIST-1D's CNN baseline: three Conv1d of ``channels`` (kernel 5, 3, 3; stride 2;
    padding 1), each followed by BN and ReLU, then a linear layer on the flattened
    ``channels x 5`` features (for ``length`` 40)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    layers = [Reshape((1, length))]
    c_in, L = 1, length
    for k in (5, 3, 3):
        layers += [
            Conv1d(c_in, channels, k, rng, stride=2, padding=1, bias=False, dtype=dtype),
            BatchNorm(channels, dtype=dtype),
            ReLU(),
        ]
        c_in, L = channels, (L + 2 - k) // 2 + 1
    layers += [Flatten(), Linear(channels * L, classes, rng, dtype=dtype)]
    return Sequential(layers)


MODELS = {"mlp": mlp, "cnn": cnn}


def build(name, in_features, classes, rng, dtype=np.float32):
    """A model by name (``"mlp"`` or ``"cnn"``) for inputs of ``in_features`` values."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](in_features, classes, rng=rng, dtype=dtype)
