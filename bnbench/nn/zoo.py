"""Every network by name: :data:`MODELS` and :func:`build`, over the MNIST-1D models
(:mod:`bnbench.nn.models`) and the image models (:mod:`bnbench.nn.models2d`)."""

import numpy as np

from .models import cnn, mlp, resnet
from .models2d import cnn2d, resnet2d, square_image
from .norm import BatchNorm

MODELS = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "cnn2d": cnn2d, "resnet2d": resnet2d}
#: models that take a ``depth`` (number of BN layers)
DEPTH_MODELS = ("resnet", "resnet2d")
#: models that take flat rows of square images: their first argument is ``(side, side)``
IMAGE_MODELS = ("cnn2d", "resnet2d")


def build(name, in_features, classes, rng, dtype=np.float32, depth=None, norm=BatchNorm,
          fuse=True):  # fmt: skip
    """A model by name (a key of :data:`MODELS`) for inputs of ``in_features`` values
    (for ``"cnn2d"`` and ``"resnet2d"`` flat rows of square images: ``in_features`` must
    be a perfect square); ``depth`` (BN layers) for ``"resnet"`` and ``"resnet2d"`` only;
    ``norm(channels, dtype=..., axis=...)`` makes each BN layer (e.g. a ghost BatchNorm
    or BatchRenorm; the CNNs and resnets pass ``axis=-1``: they compute channels-last);
    ``fuse``: BN followed by ReLU as one layer, fused (:func:`fuse_relu`; the default)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if depth is not None and name not in DEPTH_MODELS:
        raise ValueError(
            f"depth applies to models 'resnet' and 'resnet2d' only, got model {name!r}"
        )
    extra = {} if depth is None else {"depth": depth}
    shape = square_image(name, in_features) if name in IMAGE_MODELS else in_features
    model = MODELS[name](shape, classes, rng=rng, dtype=dtype, norm=norm, fuse=fuse, **extra)
    model.input_shape, model.dtype = (in_features,), np.dtype(dtype)  # checked by evaluate
    return model
