"""bnbench.nn.zoo: every network by name, its input check and what build records."""

import numpy as np
import pytest

from bnbench import nn


@pytest.mark.parametrize(("name", "features"), [("mlp", 40), ("cnn", 40), ("resnet", 40),
                                                ("cnn2d", 784), ("resnet2d", 784)])  # fmt: skip
def test_build_makes_every_model_for_its_input(name, features):
    model = nn.build(name, features, 10, np.random.default_rng(0), dtype=np.float64)
    assert model.input_shape == (features,) and model.dtype == np.float64
    x = np.random.default_rng(1).normal(size=(3, features))
    assert model.forward(x, "train").shape == (3, 10)
    assert model.bn_layers


def test_build_takes_depth_for_the_residual_networks_only():
    model = nn.build("resnet", 40, 10, np.random.default_rng(0), depth=4)
    assert len(model.bn_layers) == 4
    with pytest.raises(ValueError, match=r"depth applies to models 'resnet' and 'resnet2d' only"):
        nn.build("mlp", 40, 10, np.random.default_rng(0), depth=4)


def test_build_refuses_an_unknown_model_or_a_non_square_image():
    with pytest.raises(ValueError, match=r"model must be one of \[.*'cnn2d'.*\], got 'vgg'"):
        nn.build("vgg", 40, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"in_features must be a perfect square .* got 40"):
        nn.build("cnn2d", 40, 10, np.random.default_rng(0))
