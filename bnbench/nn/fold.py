"""Batch norm folded into the layer before it, for inference with given statistics.

In inference mode a BN layer is a fixed per-channel affine map ``y = z * s + t`` with
``s = weight / sqrt(var + eps)``, ``t = bias - mean * s``. Where ``z`` is the output of
a :class:`~bnbench.nn.Linear`, :class:`~bnbench.nn.Conv1d` or :class:`~bnbench.nn.Conv2d`
(``z = W x + b``, the BN directly after it in the same :class:`~bnbench.nn.Sequential`),
the map is absorbed into that layer: ``W' = s W`` (each output channel's row scaled),
``b' = s b + t``. One pass over the activations fewer, and whichever estimator produced
the statistics, the folded network costs the same at test time.
"""

import copy

import numpy as np

from .._checks import check_axis, kernel_view
from ..kernels import cpu, cpu_fused
from .conv2d import Conv2d
from .layers import Conv1d, Layer, Linear
from .norm import BatchNorm
from .sequential import Sequential

FOLDABLE = (Linear, Conv1d, Conv2d)


class ChannelAffine(Layer):
    """A fixed per-channel affine map ``y = x * scale + shift`` over channel ``axis``
    (then a ReLU where ``relu``): what a BN layer that cannot be folded becomes.
    ``scale`` and ``shift`` are float64 ``(C,)``, the coefficients batch norm's inference
    kernel computes itself, so the output is that kernel's bit for bit. Inference only
    (no backward); ``mode`` is ignored."""

    def __init__(self, scale, shift, axis=1, relu=False):
        super().__init__()
        self.scale = np.asarray(scale, np.float64)[None]
        self.shift = np.asarray(shift, np.float64)[None]
        self.axis, self.relu = axis, relu

    def forward(self, x, mode):
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        axis = check_axis(self.axis, x)
        x3, out3 = kernel_view(x, axis), kernel_view(out, axis)
        (cpu_fused.affine_relu if self.relu else cpu.affine)(x3, self.scale, self.shift, out3)
        return out

    def backward(self, dy):
        raise NotImplementedError("a folded network is for inference: it has no backward")


def _coefficients(bn, stats):
    """``(s, t)`` float64 of ``bn`` in inference mode with ``stats = (mean, var)``: the
    scalar code the kernels run (:func:`bnbench.kernels.scalar.affine_coefficients`)."""
    w, b = (bn.params[k] for k in ("weight", "bias"))
    # rounded to the layer's dtype first, as the BN layer's inference mode does
    mean, var = (np.asarray(a, w.dtype).astype(np.float64) for a in stats)
    s, t, _ = cpu.group_affine_coefficients(w, b, mean[None], var[None], float(bn.eps))
    return s[0], t[0]


def _fold_into(layer, s, t):
    """``layer`` (a copy) with ``W <- s W`` per output channel and ``b <- s b + t``."""
    w, bias = layer.params["weight"], layer.params.get("bias")
    shape = (-1,) + (1,) * (w.ndim - 1)
    b = t if bias is None else bias.astype(np.float64) * s + t
    layer._param("weight", (w.astype(np.float64) * s.reshape(shape)).astype(w.dtype))
    layer._param("bias", b.astype(w.dtype))
    return layer


def _transform(layers, stats):
    """New layer list: each BN folded into a Linear/Conv before it, or a ChannelAffine;
    ``stats`` an iterator over the ``(mean, var)`` in :attr:`Sequential.bn_layers` order."""
    out = []
    for layer in layers:
        if isinstance(layer, Sequential):  # a container (Residual included): its own list
            layer.layers = _transform(layer.layers, stats)
            out.append(layer)
        elif isinstance(layer, BatchNorm):
            s, t = _coefficients(layer, next(stats))
            before = out[-1] if out else None
            if isinstance(before, FOLDABLE) and before.params["weight"].shape[0] == len(s):
                _fold_into(before, s, t)
                before.relu = layer.relu  # a fused ReLU: in the bias's pass
            else:
                out.append(ChannelAffine(s, t, layer.axis, layer.relu))
        else:
            out.append(layer)
    return out


def _checked(statistics, bn_layers):
    stats = list(statistics)
    if len(stats) != len(bn_layers):
        raise ValueError(
            f"statistics must have one (mean, var) per BN layer ({len(bn_layers)}), "
            f"got {len(stats)}"
        )
    checked = []
    for i, (layer, pair) in enumerate(zip(bn_layers, stats, strict=True)):
        try:
            mean, var = (np.asarray(a, np.float64) for a in pair)
        except (TypeError, ValueError):
            raise ValueError(f"statistics[{i}] must be a pair (mean, var), got {pair!r}") from None
        C = layer.num_features
        for name, a in (("mean", mean), ("var", var)):
            if a.shape != (C,):
                raise ValueError(f"statistics[{i}] {name} must have shape ({C},), got {a.shape}")
        if np.any(var < 0):
            raise ValueError(
                f"statistics[{i}] var must be non-negative, got minimum {float(var.min())!r}"
            )
        checked.append((mean, var))
    return checked


def fold_batch_norm(model, statistics):
    """A new network computing ``model`` in inference mode with ``statistics`` (one
    ``(mean, var)`` per BN layer, in ``model.bn_layers`` order: population statistics,
    any estimator's, an ``evaluate.population_statistics`` result), with every BN layer
    that directly follows a Linear, Conv1d or Conv2d in the same container absorbed into
    that layer's weight and bias. ``model`` is left untouched (the new network holds
    copies of every layer).

    A BN that cannot be folded (first in a container, after a ReLU, pooling, a residual
    sum, ...) becomes a :class:`ChannelAffine`, the same map with the same float64
    coefficients as batch norm's inference kernel. A BN with a fused ReLU
    (``relu=True``) gives it to the folded layer (``relu=True``: applied in the pass that
    adds the bias, so the folded layer costs one pass over its output, as the fused BN +
    ReLU did). The result has no BN layers: its output does not depend on ``mode``, and
    it is for inference only (its folded layers' ``backward`` refuses).

    Bound (tests/test_fold.py): the logits equal ``model``'s in inference mode with the
    same statistics within float32 rounding of the folded weights and of the layers'
    different sums, ``|folded - unfolded| <= 1e-5 * max|unfolded|`` in float32 (1e-12
    in float64), every model, channel-first and channels-last.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a bnbench.nn.Sequential, got {type(model).__name__}")
    stats = _checked(statistics, model.bn_layers)
    folded = copy.deepcopy(model)
    layers = _transform(folded.layers, iter(stats))
    folded.layers = layers
    return folded
