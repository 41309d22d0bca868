"""What :mod:`bnbench.torch.op` does the way torch does it: ``F.batch_norm``'s argument
checks, in its order and with its exception types (:func:`check_args`, :func:`check`),
and batch norm in plain torch ops for the cases it does not hand to bnbench's kernels:

* :func:`train_backward`: the training-mode backward as differentiable torch ops, used
  when autograd asks for a graph of the backward (``create_graph=True``: a gradient
  penalty, ``torch.autograd.gradgradcheck``). The kernels' backward is exact but opaque
  to autograd, so a second derivative through it would silently drop the batch-norm
  path; here the statistics are recomputed from ``x`` so that their dependence on ``x``
  is in the graph;
* :func:`eval_forward`: the inference-mode map for ``eps = 0`` or a negative variance
  (NaN, as torch gives), which torch accepts and ``bnbench.functional`` refuses;
* :func:`update_running`: the running update for a momentum outside ``(0, 1]`` (torch
  takes any float; ``0`` freezes the estimates), which ``update_running_stats`` refuses;
* :func:`empty`: torch's result for an input with no values.
"""

import math

import torch

_DTYPES = (torch.float32, torch.float64)


def check_args(input, training, eps):
    """torch's checks before it looks at the data (an empty input passes them)."""
    if training and math.prod(input.shape[:1] + input.shape[2:]) == 1:
        raise ValueError(
            "Expected more than one value per channel when training (N * prod(spatial) "
            f">= 2), got input size {input.shape}"
        )
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check(input, running_mean, running_var, weight, bias, training):
    """torch's checks of a non-empty input and its per-channel arguments (RuntimeError
    for a missing buffer in inference mode, a channel mismatch or a mixed dtype), then
    bnbench's: float32 or float64 only (TypeError; torch also runs half precision)."""
    c = input.shape[1] if input.dim() > 1 else 0
    if not training and (running_mean is None or running_var is None):
        name = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(f"{name} must be defined in evaluation mode")
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must either both be None or neither be None"
        )
    given = (("running_mean", running_mean), ("running_var", running_var),
             ("weight", weight), ("bias", bias))  # fmt: skip
    for name, t in given:
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")
    if input.dim() < 2:
        raise IndexError(
            f"Dimension out of range: batch_norm needs an input of shape (N, C, *), got "
            f"{tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise NotImplementedError(f'"batch_norm" not implemented for {input.dtype}')
    if input.dtype not in _DTYPES:
        raise TypeError(f"x must have dtype float32 or float64, got {input.dtype}")
    for name, t in given[2:]:
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(
                f"mixed dtype: {name} must have the input's dtype {input.dtype}, got {t.dtype}"
            )


def _dims(x):
    return [0, *range(2, x.dim())]


def _shape(x):
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def train_backward(dy, x, weight, eps):
    """``(dx, dweight, dbias)`` of training-mode batch norm, differentiable in ``dy``,
    ``x`` and ``weight``: ``dx = invstd * (g - mean(g) - xhat * mean(g * xhat))`` with
    ``g = dy * weight`` and ``xhat`` the normalised input (biased variance)."""
    dims = _dims(x)
    xc = x - x.mean(dims, keepdim=True)
    invstd = torch.rsqrt(xc.square().mean(dims, keepdim=True) + eps)
    xhat = xc * invstd
    g = dy if weight is None else dy * weight.reshape(_shape(x))
    dx = invstd * (g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True))
    return dx, (dy * xhat).sum(dims), dy.sum(dims)


def eval_forward(x, weight, bias, mean, var, eps):
    """``y = x * alpha + beta`` with ``alpha = weight / sqrt(var + eps)`` and ``beta = bias
    - mean * alpha``, torch's CPU form of the inference map (any ``eps >= 0``)."""
    alpha = torch.rsqrt(var + eps)
    if weight is not None:
        alpha = alpha * weight.reshape(-1)
    beta = -mean * alpha if bias is None else bias.reshape(-1) - mean * alpha
    return x * alpha.reshape(_shape(x)) + beta.reshape(_shape(x))


def update_running(running_mean, running_var, mean, var, count, momentum):
    """torch's ``r <- momentum * stat + (1 - momentum) * r`` (unbiased variance), in
    place, computed in float64, for any float ``momentum``."""
    unbiased = var.double() * (count / (count - 1))
    for r, stat in ((running_mean, mean.double()), (running_var, unbiased)):
        r.copy_(stat * momentum + r.double() * (1.0 - momentum))


def empty(x, weight, bias):
    """torch's batch norm of an input with no values (``N = 0`` or an empty spatial axis):
    a copy of it, passed through ``weight[0]`` and ``bias[0]`` so that both take part in
    the graph (and get zero gradients); the running statistics are not touched."""
    out = x.clone()
    if weight is not None:
        out = out * weight[0]
    if bias is not None:
        out = out + bias[0]
    return out
