"""bnbench's batch-norm kernels as a PyTorch op and drop-in modules.

:func:`batch_norm` has the signature and semantics of ``torch.nn.functional.batch_norm``
and :class:`BatchNorm1d` / :class:`BatchNorm2d` are ``torch.nn.BatchNorm1d/2d`` (same
parameters, buffers, ``momentum=None`` cumulative average, ``track_running_stats``,
state dicts), but the forward, backward and running-statistics update run through
:mod:`bnbench.functional`:

* CPU tensors are handed to the Numba kernels as zero-copy NumPy views (a
  non-contiguous input is copied to C order first, as ``bnbench.functional`` does);
* CUDA tensors go to the numba-cuda kernels through ``__cuda_array_interface__``
  (``numba.cuda.as_cuda_array``), zero-copy. PyTorch's current stream is synchronised
  before the kernels run and the device after, since numba launches on its own stream.
  Without a usable GPU (or numba-cuda) a CUDA tensor is a clear ``RuntimeError``.

Training mode is a ``torch.autograd.Function`` whose backward is bnbench's backward
kernel; inference mode is bnbench's fused eval kernel with a backward in torch ops
(``dx = dy * weight * invstd``). float32 and float64 only, as the kernels.
"""

import numpy as np
import torch

from .. import functional as bnf


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
    torch.cuda.current_stream(t.device).synchronize()


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


def _tensor(a, like):
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.as_tensor(a, device=like.device)


def _backend(x):
    if x.is_cuda:
        _cuda_ready(x)
        return "cuda"
    return "cpu"


def _done(x):
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


class BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm: ``(y, mean, var_biased)`` of ``x``; gradients through
    bnbench's backward kernel (``mean`` and ``var`` are not differentiable outputs)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        backend = _backend(x)
        res = bnf.batch_norm_train(_view(x), _view(weight), _view(bias), eps=eps, backend=backend)
        y, mean, var, invstd = (_tensor(a, x) for a in res)
        _done(x)
        ctx.save_for_backward(x, weight)
        ctx.stats, ctx.backend = (mean, invstd), backend
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight = ctx.saved_tensors
        mean, invstd = ctx.stats
        dx, dweight, dbias = (
            _tensor(a, x)
            for a in bnf.batch_norm_backward(
                _view(dy.contiguous()), _view(x), _view(weight),
                mean=_view(mean), invstd=_view(invstd), backend=ctx.backend,
            )
        )  # fmt: skip
        _done(x)
        need = ctx.needs_input_grad
        return dx, dweight if need[1] else None, dbias if need[2] else None, None


class BatchNormEval(torch.autograd.Function):
    """Inference-mode batch norm with given ``mean`` and ``var`` (bnbench's fused kernel);
    the backward is the affine map's, in torch ops."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        backend = _backend(x)
        y = _tensor(
            bnf.batch_norm_eval(_view(x), _view(weight), _view(bias), mean=_view(mean),
                                var=_view(var), eps=eps, backend=backend), x)  # fmt: skip
        _done(x)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, var = ctx.saved_tensors
        shape = _channel_shape(x)
        invstd = torch.rsqrt(var + ctx.eps).view(shape)
        scale = invstd if weight is None else invstd * weight.view(shape)
        dims = [d for d in range(x.dim()) if d != 1]
        need = ctx.needs_input_grad
        dx = dy * scale if need[0] else None
        dweight = (dy * (x - mean.view(shape)) * invstd).sum(dims) if need[1] else None
        dbias = dy.sum(dims) if need[2] else None
        return dx, dweight, dbias, None, None, None


def _update_running(running_mean, running_var, mean, var, count, momentum, backend):
    """PyTorch's running update, ``r <- (1 - m) r + m * stat`` with the unbiased
    variance, in place through ``bnbench.update_running_stats`` (a ``(1, C)`` view)."""
    c = running_mean.shape[0]
    bnf.update_running_stats(
        _view(running_mean.view(1, c)), _view(running_var.view(1, c)),
        mean=_view(mean), var=_view(var), count=count, momenta=[momentum], backend=backend,
    )  # fmt: skip
    _done(running_mean)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):  # fmt: skip
    """``torch.nn.functional.batch_norm`` on bnbench's kernels (same signature: PyTorch's
    argument order, unlike ``bnbench.functional``'s keyword-only statistics). In
    training mode the running statistics, if given, are updated in place with
    ``momentum`` (a float: the modules turn ``momentum=None`` into ``1/t``)."""
    if training:
        y, mean, var = BatchNormTrain.apply(input, weight, bias, float(eps))
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                _update_running(running_mean, running_var, mean, var,
                                input.numel() // input.shape[1], float(momentum),
                                "cuda" if input.is_cuda else "cpu")  # fmt: skip
        return y
    if running_mean is None or running_var is None:
        raise ValueError("inference mode needs running_mean and running_var")
    mean, var = running_mean.to(input.dtype), running_var.to(input.dtype)
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


def convert(module):
    """``module`` with every ``torch.nn.BatchNorm1d/2d`` replaced, in place, by bnbench's
    (parameters and buffers carried over, on the old layer's device and in its dtype: a
    float64 model stays float64); returns it (or the replacement, when ``module`` itself
    is one)."""
    for kind, ours in ((torch.nn.BatchNorm1d, BatchNorm1d), (torch.nn.BatchNorm2d, BatchNorm2d)):
        if type(module) is kind:
            new = ours(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, **_factory_kwargs(module))  # fmt: skip
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new
    for name, child in module.named_children():
        setattr(module, name, convert(child))
    return module
