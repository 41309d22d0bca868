"""Batch norm folded into the convolution or linear layer before it, for a PyTorch model
in inference mode: :func:`fold`, the PyTorch counterpart of
:func:`bnbench.nn.fold_batch_norm`.

``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` fold one pair with
the BN's own running statistics; :func:`fold` walks a model's ``nn.Sequential``
containers (recursively, at any depth) and folds every ``Linear`` / ``Conv1d`` /
``Conv2d`` / ``Conv3d`` directly followed by a ``BatchNorm1d/2d/3d`` (bnbench's drop-in
layers included) with any statistics: the running buffers, or those of any estimator
(:func:`bnbench.torch.population_statistics`, :func:`bnbench.torch.precise_statistics`,
...), so that the estimator chosen costs nothing at test time.
"""

import copy

import torch

_FOLDABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_BN = torch.nn.modules.batchnorm._BatchNorm


def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, _BN)]


@torch.no_grad()
def _fold_pair(layer, bn, mean, var):
    """``layer`` (a copy) with ``bn``'s inference map absorbed: ``W <- s W`` per output
    channel, ``b <- s (b - mean) + beta``, ``s = gamma / sqrt(var + eps)``, computed in
    float64 and stored in the layer's dtype."""
    w = layer.weight
    mean, var = mean.to(torch.float64), var.to(torch.float64)
    s = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.to(torch.float64)
    b = -mean if layer.bias is None else layer.bias.to(torch.float64) - mean
    b = b * s + (0.0 if bn.bias is None else bn.bias.to(torch.float64))
    shape = (-1,) + (1,) * (w.dim() - 1)
    layer.weight = torch.nn.Parameter((w.to(torch.float64) * s.view(shape)).to(w.dtype))
    layer.bias = torch.nn.Parameter(b.to(w.dtype))
    return layer


def _fold_sequential(seq, stats):
    """Fold in place every (layer, BN) pair of ``seq``'s children; recurse into every
    child. ``stats``: BN module -> ``(mean, var)``."""
    names = list(seq._modules)
    for i, name in enumerate(names):
        bn = seq._modules[name]
        before = seq._modules[names[i - 1]] if i else None
        if (
            isinstance(bn, _BN)
            and isinstance(before, _FOLDABLE)
            and before.weight.shape[0] == bn.num_features
        ):
            _fold_pair(before, bn, *stats[bn])
            seq._modules[name] = torch.nn.Identity()


def _walk(module, stats):
    for child in module.children():
        _walk(child, stats)
    if isinstance(module, torch.nn.Sequential):
        _fold_sequential(module, stats)


def _statistics(bns, statistics):
    if statistics is None:
        for i, bn in enumerate(bns):
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(
                    f"BN layer {i} ({type(bn).__name__}) has no running statistics "
                    "(track_running_stats=False): pass statistics=[(mean, var), ...]"
                )
        return {bn: (bn.running_mean, bn.running_var) for bn in bns}
    statistics = list(statistics)
    if len(statistics) != len(bns):
        raise ValueError(
            f"statistics must have one (mean, var) per BN layer ({len(bns)}, in "
            f"model.modules() order), got {len(statistics)}"
        )
    out = {}
    for i, (bn, (mean, var)) in enumerate(zip(bns, statistics, strict=True)):
        mean, var = (torch.as_tensor(a, dtype=torch.float64).reshape(-1) for a in (mean, var))
        for what, a in (("mean", mean), ("var", var)):
            if a.numel() != bn.num_features:
                raise ValueError(
                    f"statistics[{i}] {what} must have {bn.num_features} values, got {a.numel()}"
                )
        if bool((var < 0).any()):
            raise ValueError(f"statistics[{i}] var must be non-negative")
        out[bn] = (mean, var)
    return out


def fold(model, statistics=None):
    """A new model, in eval mode, computing ``model`` in eval mode with ``statistics``
    (one ``(mean, var)`` per BatchNorm module in ``model.modules()`` order, tensors or
    arrays; ``None``: each layer's ``running_mean`` and ``running_var``), with every
    BatchNorm that directly follows a Linear or Conv1d/2d/3d inside an ``nn.Sequential``
    (at any depth) absorbed into that layer's weight and bias (the BN becomes an
    ``nn.Identity``: the module tree and the other names stay). ``model`` is untouched.

    A BatchNorm that cannot be folded (first in its Sequential, after an activation,
    used in a custom ``forward``) stays an inference-mode BatchNorm with the given
    statistics in its running buffers (its momentum irrelevant in eval mode); a model
    with no running buffers there (``track_running_stats=False``) needs them given.
    Bound (tests/test_fold.py): equal to ``model.eval()`` within the rounding of the
    folded weights: relative 1e-5 of the largest output in float32, 1e-12 in float64.
    """
    bns = _bn_modules(model)
    stats = _statistics(bns, statistics)
    new = copy.deepcopy(model)
    new_bns = _bn_modules(new)
    stats = {nb: stats[b] for b, nb in zip(bns, new_bns, strict=True)}
    for bn, (mean, var) in stats.items():  # the unfoldable ones keep these
        if statistics is not None:
            _set_running(bn, mean, var)
    _walk(new, stats)
    return new.eval()


@torch.no_grad()
def _set_running(bn, mean, var):
    like = bn.weight if bn.weight is not None else bn.running_mean
    kwargs = {"dtype": like.dtype, "device": like.device} if like is not None else {}
    if bn.running_mean is None:
        bn.running_mean = torch.empty(bn.num_features, **kwargs)
        bn.running_var = torch.empty(bn.num_features, **kwargs)
    bn.running_mean.copy_(mean.to(bn.running_mean))
    bn.running_var.copy_(var.to(bn.running_var))
    bn.track_running_stats = True
