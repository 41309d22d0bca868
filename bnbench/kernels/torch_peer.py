"""PyTorch's batch-norm kernels behind the bnbench contract: a peer to compare with.

Calls ``torch.ops.aten.native_batch_norm`` / ``native_batch_norm_backward`` (what
``torch.nn.functional.batch_norm`` and autograd run) on zero-copy tensor views: NumPy
arrays run PyTorch's CPU kernels; CUDA device arrays (through
``__cuda_array_interface__``) run its CUDA kernels (cuDNN where PyTorch picks it).

The forward passes write into ``out`` through ``native_batch_norm.out``, a real out=
kernel, so that no allocation is timed that bnbench does not also make. PyTorch has no
in-place or out= backward: ``native_batch_norm_backward`` allocates ``dx`` itself (and
its ``.out`` overload allocates and then copies). So :func:`backward_fresh` runs it as
PyTorch does and returns PyTorch's own ``dx`` (what ``bnbench.batch_norm_backward`` calls
without ``out=``), while :func:`backward`, the contract's form, copies ``dx`` into ``out``:
a cost of asking PyTorch for ``out=``, which the throughput study does not time.
Batch norm followed by a ReLU is PyTorch's two ops composed, as a PyTorch model runs
them: ``native_batch_norm`` then ``relu_`` in place; backward ``threshold_backward(dy, y,
0)`` (autograd's ReLU backward, from its result) then ``native_batch_norm_backward``.
Only imported when torch is installed.
"""

import numpy as np
import torch

from . import is_device_array

_aten = torch.ops.aten


def is_device(a):
    """Device arrays are accepted only where PyTorch can run on the GPU."""
    return is_device_array(a) and torch.cuda.is_available()


def empty_like(a):
    from numba import cuda

    return cuda.device_array(a.shape, a.dtype)


def _t(a):
    if is_device_array(a):
        return torch.as_tensor(a, device="cuda")
    return torch.from_numpy(np.asarray(a))


def _back(tensor, like):
    """A result on the caller's side: NumPy for host input, a device array otherwise."""
    if is_device_array(like):
        from numba import cuda

        return cuda.as_cuda_array(tensor)
    return tensor.numpy()


def forward_train(x, weight, bias, eps, out):
    tx = _t(x)
    save_mean = torch.empty(x.shape[1], dtype=tx.dtype, device=tx.device)
    save_invstd = torch.empty_like(save_mean)
    _aten.native_batch_norm.out(
        tx, _t(weight), _t(bias), None, None, True, 0.0, eps,
        out=_t(out), save_mean=save_mean, save_invstd=save_invstd,
    )  # fmt: skip
    var = (1.0 / save_invstd.double() ** 2 - eps).to(tx.dtype)
    return _back(save_mean, x), _back(var, x), _back(save_invstd, x)


def forward_eval(x, weight, bias, mean, var, eps, out):
    tx = _t(x)
    scratch = torch.empty(x.shape[1], dtype=tx.dtype, device=tx.device)
    _aten.native_batch_norm.out(
        tx, _t(weight), _t(bias), _t(mean), _t(var), False, 0.0, eps,
        out=_t(out), save_mean=scratch, save_invstd=torch.empty_like(scratch),
    )  # fmt: skip


def _backward(dy, x, weight, mean, invstd):
    return _aten.native_batch_norm_backward(
        _t(dy), _t(x), _t(weight), None, None, _t(mean), _t(invstd), True, 0.0,
        [True, True, True],
    )  # fmt: skip


def backward_fresh(dy, x, weight, mean, invstd):
    """PyTorch's backward as PyTorch runs it: ``(dx, dweight, dbias)``, ``dx`` allocated
    by PyTorch (no copy)."""
    return tuple(_back(t, x) for t in _backward(dy, x, weight, mean, invstd))


def backward(dy, x, weight, mean, invstd, out):
    """The contract's backward: PyTorch's ``dx`` copied into ``out`` (no out= kernel)."""
    dx, dweight, dbias = _backward(dy, x, weight, mean, invstd)
    _t(out).copy_(dx)
    return _back(dweight, x), _back(dbias, x)


def forward_train_relu(x, weight, bias, eps, out):
    stats = forward_train(x, weight, bias, eps, out)
    torch.relu_(_t(out))
    return stats


def forward_eval_relu(x, weight, bias, mean, var, eps, out):
    forward_eval(x, weight, bias, mean, var, eps, out)
    torch.relu_(_t(out))


def _relu_grad(dy, y):
    return _aten.threshold_backward(_t(dy), _t(y), 0)


def backward_relu(dy, y, x, weight, mean, invstd, out):
    dx, dweight, dbias = _aten.native_batch_norm_backward(
        _relu_grad(dy, y), _t(x), _t(weight), None, None, _t(mean), _t(invstd), True, 0.0,
        [True, True, True],
    )  # fmt: skip
    _t(out).copy_(dx)
    return _back(dweight, x), _back(dbias, x)


def backward_relu_fresh(dy, y, x, weight, mean, invstd):
    """:func:`backward_relu` as PyTorch runs it, ``dx`` allocated by PyTorch."""
    dx, dweight, dbias = _aten.native_batch_norm_backward(
        _relu_grad(dy, y), _t(x), _t(weight), None, None, _t(mean), _t(invstd), True, 0.0,
        [True, True, True],
    )  # fmt: skip
    return tuple(_back(t, x) for t in (dx, dweight, dbias))


def update_running(running_mean, running_var, mean, var, momenta):
    rm, rv = _t(running_mean), _t(running_var)
    m, v = _t(mean).to(rm), _t(var).to(rv)
    for k, momentum in enumerate(momenta):
        rm[k].lerp_(m, float(momentum))
        rv[k].lerp_(v, float(momentum))
