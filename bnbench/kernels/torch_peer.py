"""PyTorch's CPU batch-norm kernels behind the bnbench contract: a peer to compare with.

Calls ``torch.ops.aten.native_batch_norm`` / ``native_batch_norm_backward`` (what
``torch.nn.functional.batch_norm`` and autograd run) on zero-copy tensor views of the
NumPy arrays, writing into ``out`` through the ``.out`` overloads so that no allocation
is timed that bnbench does not also make. Only imported when torch is installed.
"""

import numpy as np
import torch

_aten = torch.ops.aten


def _t(a):
    return torch.from_numpy(np.asarray(a))


def forward_train(x, weight, bias, eps, out):
    C = x.shape[1]
    save_mean = torch.empty(C, dtype=_t(x).dtype)
    save_invstd = torch.empty(C, dtype=_t(x).dtype)
    _aten.native_batch_norm.out(
        _t(x), _t(weight), _t(bias), None, None, True, 0.0, eps,
        out=_t(out), save_mean=save_mean, save_invstd=save_invstd,
    )  # fmt: skip
    mean, invstd = save_mean.numpy(), save_invstd.numpy()
    return mean, 1.0 / invstd.astype(np.float64) ** 2 - eps, invstd


def forward_eval(x, weight, bias, mean, var, eps, out):
    C = x.shape[1]
    dtype = _t(x).dtype
    _aten.native_batch_norm.out(
        _t(x), _t(weight), _t(bias), _t(mean), _t(var), False, 0.0, eps,
        out=_t(out), save_mean=torch.empty(C, dtype=dtype), save_invstd=torch.empty(C, dtype=dtype),
    )  # fmt: skip


def backward(dy, x, weight, mean, invstd, out):
    dx, dweight, dbias = _aten.native_batch_norm_backward(
        _t(dy), _t(x), _t(weight), None, None, _t(mean), _t(invstd), True, 0.0,
        [True, True, True],
    )  # fmt: skip
    out[...] = dx.numpy()
    return dweight.numpy(), dbias.numpy()


def update_running(running_mean, running_var, mean, var, momenta):
    for k, m in enumerate(momenta):
        _t(running_mean[k]).lerp_(_t(mean).to(_t(running_mean).dtype), float(m))
        _t(running_var[k]).lerp_(_t(var).to(_t(running_var).dtype), float(m))
