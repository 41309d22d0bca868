"""bnbench's batch-norm kernels as a PyTorch op and drop-in modules.

:func:`batch_norm` has the signature and semantics of ``torch.nn.functional.batch_norm``
and :class:`BatchNorm1d` / :class:`BatchNorm2d` are ``torch.nn.BatchNorm1d/2d`` (same
parameters, buffers, ``momentum=None`` cumulative average, ``track_running_stats``,
state dicts, errors of the same exception types), but the forward, backward and
running-statistics update run through :mod:`bnbench.functional`:

* CPU tensors are handed to the Numba kernels as zero-copy NumPy views (a
  non-contiguous input is copied to C order first, as ``bnbench.functional`` does); a
  ``torch.channels_last`` 4-D input goes in as its ``(N, H, W, C)`` view with
  ``axis=-1``, zero-copy, and its output and input gradient are channels-last too, as
  torch's are;
* CUDA tensors go to the numba-cuda kernels through ``__cuda_array_interface__``
  (``numba.cuda.as_cuda_array``), zero-copy. PyTorch's current stream is synchronised
  before the kernels run and the device after, since numba launches on its own stream.
  Without a usable GPU (or numba-cuda) a CUDA tensor is a clear ``RuntimeError``.

Training mode is a ``torch.autograd.Function`` whose backward is bnbench's backward
kernel, or, when autograd records a graph of the backward (``create_graph=True``), the
same formula in differentiable torch ops (:mod:`bnbench.torch._compat`), so second
derivatives are right. Inference mode is bnbench's fused eval kernel with a backward in
torch ops (``dx = dy * weight * invstd``). float32 and float64 only, as the kernels.
What torch accepts and the kernels do not is done in torch ops: an empty input (torch's
result: a copy through ``weight[0]``, ``bias[0]``, running statistics untouched),
``eps = 0`` in inference mode and a momentum outside ``(0, 1]`` (``0`` freezes the
running statistics). Strided running statistics are updated in place.
"""

import numpy as np
import torch

from .. import functional as bnf
from . import _compat


def _cuda_ready(t):
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"a CUDA tensor was given but torch.cuda.is_available() is False (PyTorch "
            f"{torch.__version__}): bnbench's CUDA kernels need a GPU"
        )
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError(
            "a CUDA tensor was given but numba-cuda finds no GPU: install bnbench[cuda]"
        )


def _view(t):
    """A zero-copy NumPy (CPU) or numba device array (CUDA) view of ``t`` (or None)."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cuda:
        from numba import cuda

        return cuda.as_cuda_array(t.contiguous())
    if t.device.type != "cpu":
        raise RuntimeError(f"bnbench runs on CPU and CUDA tensors, got a {t.device} tensor")
    return t.numpy()


def _channel(t):
    """The kernels' ``(C,)`` view of a per-channel tensor (any shape with C values, any
    strides, as torch takes them; copied only where strided)."""
    return None if t is None else _view(t.reshape(-1).contiguous())


def _tensor(a, like):
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.as_tensor(a, device=like.device)


def _backend(x):
    if x.is_cuda:
        _cuda_ready(x)
        return "cuda"
    return "cpu"


def _start(x):
    """Before a numba launch: PyTorch's current stream finished (the copies that made the
    kernels' views included), since numba launches on its own stream."""
    if x.is_cuda:
        torch.cuda.current_stream(x.device).synchronize()


def _done(x):
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _axis(x):
    """-1 for a 4-D input stored ``torch.channels_last`` (and not also C-contiguous, as
    when C = 1 or H = W = 1): the kernels take its ``(N, H, W, C)`` view; else 1."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return -1 if nhwc and not x.is_contiguous() else 1


def _kernel_view(t, axis):
    """The kernels' view of ``t`` in the layout of ``axis``: zero-copy where ``t`` has that
    layout (C order, or channels-last for ``axis=-1``), else a copy to it."""
    if axis == -1:
        return _view(t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1))
    return _view(t.contiguous())


def _out(x, axis):
    """``(out, its view)``: for channels-last ``x`` a channels-last output that the kernel
    writes in place, as torch returns; else ``(None, None)`` (the kernel allocates)."""
    if axis == 1:
        return None, None
    out = torch.empty_like(x)  # preserve_format: channels-last strides
    return out, _kernel_view(out, axis)


class BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm: ``(y, mean, var_biased)`` of ``x``; gradients through
    bnbench's backward kernel (``mean`` and ``var`` are not differentiable outputs), or
    through differentiable torch ops when autograd records the backward's graph."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        backend, axis = _backend(x), _axis(x)
        (y, yv), xv = _out(x, axis), _kernel_view(x, axis)
        weight_v, bias_v = _channel(weight), _channel(bias)
        _start(x)
        res = bnf.batch_norm_train(xv, weight_v, bias_v, eps=eps, axis=axis, backend=backend,
                                   out=yv)  # fmt: skip
        mean, var, invstd = (_tensor(a, x) for a in res[1:])
        y = _tensor(res.y, x) if y is None else y
        _done(x)
        ctx.save_for_backward(x, weight)
        ctx.stats, ctx.backend, ctx.eps, ctx.axis = (mean, invstd), backend, eps, axis
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
            dx, dweight, dbias = _compat.train_backward(dy, x, weight, ctx.eps)
        else:
            mean, invstd = ctx.stats
            axis = ctx.axis
            dx, dxv = _out(x, axis)
            views = (_kernel_view(dy, axis), _kernel_view(x, axis), _channel(weight))
            _start(x)
            res = bnf.batch_norm_backward(
                *views, mean=_view(mean), invstd=_view(invstd), axis=axis, backend=ctx.backend,
                out=dxv,
            )  # fmt: skip
            dx = _tensor(res.dx, x) if dx is None else dx
            dweight, dbias = (_tensor(a, x) for a in res[1:])
            _done(x)
        need = ctx.needs_input_grad
        return dx, dweight if need[1] else None, dbias if need[2] else None, None


class BatchNormEval(torch.autograd.Function):
    """Inference-mode batch norm with given ``mean`` and ``var`` (bnbench's fused kernel;
    torch ops for ``eps = 0`` or a negative ``var``); the backward is the affine map's,
    in torch ops."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        # torch accepts eps = 0 and a negative variance (NaN where var + eps < 0) in
        # inference mode; bnbench's host-side checks refuse both (a device array is not
        # checked: there the kernel gives NaN too)
        if eps == 0 or (not var.is_cuda and bool((var < 0).any())):
            y = _compat.eval_forward(x, weight, bias, mean, var, eps)
        else:
            backend, axis = _backend(x), _axis(x)
            y, yv = _out(x, axis)
            views = (_kernel_view(x, axis), _channel(weight), _channel(bias))
            stats = {"mean": _channel(mean), "var": _channel(var)}
            _start(x)
            out = bnf.batch_norm_eval(*views, **stats, eps=eps, axis=axis, backend=backend, out=yv)
            y = _tensor(out, x) if y is None else y
            _done(x)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, var = ctx.saved_tensors
        shape = _channel_shape(x)
        invstd = torch.rsqrt(var + ctx.eps).view(shape)
        scale = invstd if weight is None else invstd * weight.reshape(shape)
        dims = [d for d in range(x.dim()) if d != 1]
        need = ctx.needs_input_grad
        dx = dy * scale if need[0] else None
        dweight = (dy * (x - mean.view(shape)) * invstd).sum(dims) if need[1] else None
        dbias = dy.sum(dims) if need[2] else None
        return dx, dweight, dbias, None, None, None


def _update_running(running_mean, running_var, mean, var, count, momentum, backend):
    """PyTorch's running update, ``r <- (1 - m) r + m * stat`` with the unbiased
    variance, in place: through ``bnbench.update_running_stats`` (``(1, C)`` views; a
    strided buffer through a C-order copy written back) for ``m`` in ``(0, 1]``, in torch
    ops for any other ``m`` (torch accepts every float; ``0`` freezes the estimates)."""
    if not 0 < momentum <= 1:
        _compat.update_running(running_mean, running_var, mean, var, count, momentum)
        return
    bufs = [r.contiguous() for r in (running_mean, running_var)]
    c = running_mean.numel()
    _start(running_mean)
    bnf.update_running_stats(
        _view(bufs[0].view(1, c)), _view(bufs[1].view(1, c)),
        mean=_view(mean), var=_view(var), count=count, momenta=[momentum], backend=backend,
    )  # fmt: skip
    _done(running_mean)
    for r, buf in zip((running_mean, running_var), bufs, strict=True):
        if buf is not r:
            r.copy_(buf.view_as(r))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):  # fmt: skip
    """``torch.nn.functional.batch_norm`` on bnbench's kernels (same signature: PyTorch's
    argument order, unlike ``bnbench.functional``'s keyword-only statistics; the same
    checks, in the same order, with the same exception types). In training mode the
    running statistics, if given, are updated in place with ``momentum`` (a float: the
    modules turn ``momentum=None`` into ``1/t``). Running statistics of another float
    dtype than ``input`` are cast in inference mode (torch refuses them)."""
    _compat.check_args(input, training, eps)
    if input.numel() == 0:
        return _compat.empty(input, weight, bias)
    _compat.check(input, running_mean, running_var, weight, bias, training)
    if training:
        y, mean, var = BatchNormTrain.apply(input, weight, bias, float(eps))
        if running_mean is not None:
            with torch.no_grad():
                _update_running(running_mean, running_var, mean, var,
                                input.numel() // input.shape[1], float(momentum),
                                "cuda" if input.is_cuda else "cpu")  # fmt: skip
        return y
    mean, var = (r.reshape(-1).to(input.dtype) for r in (running_mean, running_var))
    return BatchNormEval.apply(input, weight, bias, mean, var, float(eps))


class _Kernels:
    """The forward of ``torch.nn.modules.batchnorm._BatchNorm`` with bnbench's op."""

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return batch_norm(
            input, self.running_mean if track else None, self.running_var if track else None,
            self.weight, self.bias, bn_training, factor, self.eps,
        )  # fmt: skip


class BatchNorm1d(_Kernels, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` running bnbench's kernels (``(N, C)`` or ``(N, C, L)``)."""


class BatchNorm2d(_Kernels, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` running bnbench's kernels (``(N, C, H, W)``)."""


def _factory_kwargs(module):
    """``{"device", "dtype"}`` of ``module``'s first floating-point parameter or buffer
    (``num_batches_tracked`` is an integer), or ``{}`` for a layer with none."""
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if t.is_floating_point():
            return {"device": t.device, "dtype": t.dtype}
    return {}


def _replacement(module, ours):
    """bnbench's layer with ``module``'s options, parameters and buffers (its device and
    dtype), training flag and ``track_running_stats`` (which torch's own tests switch off
    after construction, keeping the buffers)."""
    new = ours(module.num_features, module.eps, module.momentum, module.affine,
               module.running_mean is not None, **_factory_kwargs(module),
               bias=not module.affine or module.bias is not None)  # fmt: skip
    new.load_state_dict(module.state_dict())
    new.track_running_stats = module.track_running_stats
    return new.train(module.training)


def convert(module):
    """``module`` with every ``torch.nn.BatchNorm1d/2d`` replaced, in place, by bnbench's
    (every constructor option, parameters and buffers carried over, on the old layer's
    device and in its dtype: a float64 model stays float64); returns it (or the
    replacement, when ``module`` itself is one). The replacements hold new parameter
    tensors: build the optimizer after converting."""
    for kind, ours in ((torch.nn.BatchNorm1d, BatchNorm1d), (torch.nn.BatchNorm2d, BatchNorm2d)):
        if type(module) is kind:
            return _replacement(module, ours)
    for name, child in module.named_children():
        setattr(module, name, convert(child))
    return module
