"""Plain NumPy float64 batch norm: the oracle every backend is tested against.

Written for clarity, not speed. Arrays are ``(N, C, L)`` as in every backend. Ghost batch
norm views them as ``(N // G, G, C, L)``, groups of ``G`` consecutive samples, and takes
statistics over axes 1 and 3 of that view: one ``(C,)`` row per group. Plain batch norm
is the single group ``G = N``. Returned statistics are float64; ``out`` receives the
result in its own dtype. Batch norm followed by a ReLU (``*_relu``) is the float64 result
passed through ``v if v > 0 else v * 0`` before the cast, and its backward masks ``dy``
with the fused output ``y > 0``.
"""

import numpy as np

_AXES = (1, 3)  # of the grouped (groups, G, C, L) view


def _grouped(a, group_size):
    N, C, L = a.shape
    return np.asarray(a, dtype=np.float64).reshape(N // group_size, group_size, C, L)


def _per_channel(v):
    """``(C,)`` or per-group ``(groups, C)`` statistics, broadcast against the grouped view."""
    v = np.asarray(v, dtype=np.float64)
    return v[None, None, :, None] if v.ndim == 1 else v[:, None, :, None]


def moments(x, group_size=None):
    """Per-group mean and biased variance, ``(groups, C)``; ``(C,)`` without groups."""
    xg = _grouped(x, group_size or x.shape[0])
    mean = xg.mean(axis=_AXES)
    var = ((xg - _per_channel(mean)) ** 2).mean(axis=_AXES)
    return (mean, var) if group_size else (mean[0], var[0])


def forward_train_ghost(x, weight, bias, eps, group_size, out):
    mean, var = moments(x, group_size)
    xg = _grouped(x, group_size)
    xhat = (xg - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps)
    out[...] = (xhat * _per_channel(weight) + _per_channel(bias)).reshape(x.shape)
    return mean, var, 1.0 / np.sqrt(var + eps)


def forward_train(x, weight, bias, eps, out):
    mean, var, invstd = forward_train_ghost(x, weight, bias, eps, x.shape[0], out)
    return mean[0], var[0], invstd[0]


def forward_eval(x, weight, bias, mean, var, eps, out):
    xhat = (x.astype(np.float64) - _per_channel(mean)[0]) / np.sqrt(_per_channel(var)[0] + eps)
    out[...] = xhat * _per_channel(weight)[0] + _per_channel(bias)[0]


def _backward(dy, x, scale, mean, invstd, group_size):
    """dx of ``y = xhat * scale + ...`` per group of ``group_size`` samples, and the
    per-group sums ``sum(dy * xhat)``, ``sum(dy)``, each ``(groups, C)``."""
    M = group_size * x.shape[2]
    dyg, xg = _grouped(dy, group_size), _grouped(x, group_size)
    inv = _per_channel(invstd)
    xhat = (xg - _per_channel(mean)) * inv
    dxhat = dyg * _per_channel(scale)
    dx = (
        inv
        / M
        * (
            M * dxhat
            - dxhat.sum(axis=_AXES)[:, None, :, None]
            - xhat * (dxhat * xhat).sum(axis=_AXES)[:, None, :, None]
        )
    )
    return dx.reshape(x.shape), (dyg * xhat).sum(axis=_AXES), dyg.sum(axis=_AXES)


def backward_ghost(dy, x, weight, mean, invstd, group_size, out):
    dx, dyxhat, dysum = _backward(dy, x, weight, mean, invstd, group_size)
    out[...] = dx
    return dyxhat.sum(axis=0), dysum.sum(axis=0)


def backward(dy, x, weight, mean, invstd, out):
    return backward_ghost(dy, x, weight, mean[None], invstd[None], x.shape[0], out)


def renorm_factors(mean, var, running_mean, running_var, rmax, dmax, eps):
    """Ioffe (2017): ``r = clip(sigma_B / sigma, 1/rmax, rmax)``,
    ``d = clip((mean - running_mean) / sigma, -dmax, dmax)``, ``sigma_B = sqrt(var + eps)``,
    ``sigma = sqrt(running_var + eps)``."""
    sigma = np.sqrt(np.asarray(running_var, np.float64) + eps)
    r = np.clip(np.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
    d = np.clip((mean - np.asarray(running_mean, np.float64)) / sigma, -dmax, dmax)
    return r, d


def forward_train_renorm(x, weight, bias, running_mean, running_var, rmax, dmax, eps, out):
    mean, var = moments(x)
    r, d = renorm_factors(mean, var, running_mean, running_var, rmax, dmax, eps)
    xhat = (x.astype(np.float64) - mean[:, None]) / np.sqrt(var + eps)[:, None]
    xhat = xhat * r[:, None] + d[:, None]
    out[...] = xhat * _per_channel(weight)[0] + _per_channel(bias)[0]
    return mean, var, 1.0 / np.sqrt(var + eps), r, d


def backward_renorm(dy, x, weight, mean, invstd, r, d, out):
    """r and d are constants (stop-gradient): ``y = (r * xhat_B + d) * weight + bias``."""
    r, d = np.asarray(r, np.float64), np.asarray(d, np.float64)
    scale = np.asarray(weight, np.float64) * r
    dx, dyxhat, dysum = _backward(dy, x, scale, mean[None], invstd[None], x.shape[0])
    out[...] = dx
    return r * dyxhat[0] + d * dysum[0], dysum[0]


def _relu(v):
    with np.errstate(invalid="ignore"):  # inf * 0: NaN, as in the compiled backends
        return np.where(v > 0, v, v * 0)  # NaN stays NaN


def forward_train_relu(x, weight, bias, eps, out):
    y = np.empty(x.shape)
    stats = forward_train(x, weight, bias, eps, y)
    out[...] = _relu(y)
    return stats


def forward_eval_relu(x, weight, bias, mean, var, eps, out):
    y = np.empty(x.shape)
    forward_eval(x, weight, bias, mean, var, eps, y)
    out[...] = _relu(y)


def backward_relu(dy, y, x, weight, mean, invstd, out):
    """dx of ``relu(batch_norm(x))``: ``dy`` masked by the fused output ``y > 0``."""
    g = np.asarray(dy, np.float64)
    return backward(_relu_grad(g, np.asarray(y)), x, weight, mean, invstd, out)


def _relu_grad(g, y):
    with np.errstate(invalid="ignore"):
        return np.where(y > 0, g, g * 0)


def update_running(running_mean, running_var, mean, var, momenta):
    m = np.asarray(momenta, dtype=np.float64)[:, None]
    running_mean[...] = (1.0 - m) * running_mean + m * mean[None, :]
    running_var[...] = (1.0 - m) * running_var + m * var[None, :]
