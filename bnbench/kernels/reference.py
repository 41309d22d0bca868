"""Plain NumPy float64 batch norm: the oracle every backend is tested against.

Written for clarity, not speed. Arrays are ``(N, C, L)`` as in every backend; statistics
are over axes 0 and 2. Returned statistics are float64; ``out`` receives the result in
its own dtype.
"""

import numpy as np

_AXES = (0, 2)


def _per_channel(v):
    return np.asarray(v, dtype=np.float64)[None, :, None]


def moments(x):
    x = x.astype(np.float64)
    mean = x.mean(axis=_AXES)
    var = ((x - _per_channel(mean)) ** 2).mean(axis=_AXES)
    return mean, var


def forward_train(x, weight, bias, eps, out):
    mean, var = moments(x)
    invstd = 1.0 / np.sqrt(var + eps)
    forward_eval(x, weight, bias, mean, var, eps, out)
    return mean, var, invstd


def forward_eval(x, weight, bias, mean, var, eps, out):
    xhat = (x.astype(np.float64) - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps)
    out[...] = xhat * _per_channel(weight) + _per_channel(bias)


def backward(dy, x, weight, mean, invstd, out):
    M = x.shape[0] * x.shape[2]
    dy = dy.astype(np.float64)
    xhat = (x.astype(np.float64) - _per_channel(mean)) * _per_channel(invstd)
    dbias = dy.sum(axis=_AXES)
    dweight = (dy * xhat).sum(axis=_AXES)
    dxhat = dy * _per_channel(weight)
    out[...] = (
        _per_channel(invstd)
        / M
        * (
            M * dxhat
            - _per_channel(dxhat.sum(axis=_AXES))
            - xhat * _per_channel((dxhat * xhat).sum(axis=_AXES))
        )
    )
    return dweight, dbias


def update_running(running_mean, running_var, mean, var, momenta):
    m = np.asarray(momenta, dtype=np.float64)[:, None]
    running_mean[...] = (1.0 - m) * running_mean + m * mean[None, :]
    running_var[...] = (1.0 - m) * running_var + m * var[None, :]
