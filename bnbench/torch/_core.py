"""What every part of the PyTorch adapter shares: finding a model's BN layers, checking
what it is given, reading a layer's batch statistics from its input, and leaving the
model exactly as it was.

A model's *statistics* are a dict ``{layer name: (mean, var)}`` keyed by the qualified
module names of ``model.named_modules()``; ``mean`` and ``var`` are float64 ``(C,)``
tensors on the device the layer's input lived on, ``var`` the variance BN normalises
with (what would go into ``running_var``).
"""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin


def bn_layers(model, merged=False):
    """``{name: layer}`` of every BatchNorm layer of ``model`` (BatchNorm1d/2d/3d,
    SyncBatchNorm, materialised LazyBatchNorm*, and bnbench's own modules), in
    ``named_modules()`` order, or a clear error. ``merged``: the caller merges statistics
    across ranks (:mod:`bnbench.torch.distributed`), so SyncBatchNorm on several processes
    is allowed."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    if not layers:
        raise ValueError(
            f"model ({type(model).__name__}) has no BatchNorm layers (BatchNorm1d/2d/3d, "
            "SyncBatchNorm, LazyBatchNorm*): there are no BN statistics to estimate"
        )
    for name, m in layers.items():
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(
                f"BN layer {name!r} ({type(m).__name__}) is not materialised yet: run one "
                "forward pass through the model first"
            )
        if isinstance(m, torch.nn.SyncBatchNorm) and not merged and _world_size() > 1:
            raise ValueError(
                f"BN layer {name!r} is a SyncBatchNorm on {_world_size()} processes: pass "
                "process_group= to merge the statistics across ranks"
            )
    return layers


def _world_size():
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_training(layers, what):
    """Estimation reads the batch statistics of BN layers in training mode; a layer in
    eval mode (frozen BN) has none: a clear error naming them."""
    frozen = [name for name, m in layers.items() if not m.training]
    if frozen:
        raise ValueError(
            f"{what} needs every BN layer in training mode, but {len(frozen)} are in eval "
            f"mode: {', '.join(repr(n) for n in frozen[:5])}{' ...' if len(frozen) > 5 else ''} "
            "(call model.train() first)"
        )


def check_device(device):
    """``device`` as a ``torch.device``; a CUDA device without a usable GPU is a clear
    error (a CPU build of PyTorch, or no GPU on this machine)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} was asked for, but torch.cuda.is_available() is False "
            f"(PyTorch {torch.__version__}: a CPU build, or no GPU on this machine)"
        )
    return device


def model_device(model):
    """The device of the model's first parameter or buffer (CPU for a model of neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def split_batch(batch, index):
    """``(x, rest)`` of one batch: a tensor, or a tuple/list whose first element is the
    input tensor (``rest`` holds the others, e.g. the labels)."""
    if isinstance(batch, torch.Tensor):
        return batch, ()
    if isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
        if isinstance(x, torch.Tensor):
            return x, tuple(batch[1:])
        what = f"its first element is a {type(x).__name__}"
    else:
        what = f"it is a {type(batch).__name__}"
    raise TypeError(
        f"batch {index} must be a tensor or a tuple/list whose first element is the input "
        f"tensor, but {what}"
    )


def iterate(batches, device, what):
    """``(x on device, rest)`` for each batch of ``batches``; an empty iterable is an
    error."""
    n = 0
    for n, batch in enumerate(batches, 1):
        x, rest = split_batch(batch, n - 1)
        yield x.to(device, non_blocking=True), rest
    if n == 0:
        raise ValueError(f"{what}: batches yielded no batch (an empty loader)")


def batch_moments(x):
    """Per-channel mean and biased variance of ``x`` ``(N, C, *spatial)`` as float64
    NumPy ``(C,)`` arrays, and the number of values per channel; no autograd.

    CPU tensors go zero-copy to bnbench's own Numba moments kernel (shifted sums merged
    with Chan's formula, float64 partials): on a (128, 32, 40) float32 input, one thread,
    it takes 55 us where ``torch.var_mean`` over dims (0, 2) took 1.2 ms, which made the
    tracking hooks cost 30-75% of a small CNN's training step. Other devices use
    ``torch.var_mean`` in float64 there, then copy the two vectors to the host."""
    x = x.detach()
    count = x.numel() // x.shape[1]
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        from ..registry import get_backend

        a = np.ascontiguousarray(x.numpy()).reshape(x.shape[0], x.shape[1], -1)
        mean, var = get_backend("cpu").moments(a)
        return mean, var, count
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x.double(), dim=dims, correction=0)
    return to_numpy(mean), to_numpy(var), count


def to_numpy(t):
    return t.detach().cpu().numpy()


def as_tensor(a, device):
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)


def fixed_forward(layer, mean, var):
    """A ``forward`` for BN ``layer`` (see :meth:`Hooks.override`): inference-mode batch
    norm with the fixed statistics ``mean`` and ``var`` (cast to the input's device and
    dtype) and the layer's own affine parameters and ``eps``; no buffer is read or
    written."""

    def forward(x):
        return F.batch_norm(x, mean.to(x.device, x.dtype), var.to(x.device, x.dtype),
                            layer.weight, layer.bias, False, 0.0, layer.eps)  # fmt: skip

    return forward


@contextlib.contextmanager
def preserved(model):
    """Run the body with a :class:`Hooks` for it, then remove those hooks and forward
    overrides and put back every buffer (bit for bit) and every module's train/eval
    flag: whether the body finished or raised."""
    modules = list(model.modules())
    flags = [m.training for m in modules]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    hooks = Hooks()
    try:
        yield hooks
    finally:
        hooks.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, flag in zip(modules, flags, strict=True):
            m.training = flag


class Hooks:
    """Hooks and forward overrides added to modules, all removed by :meth:`remove`."""

    def __init__(self):
        self._handles, self._overridden = [], []

    def pre(self, module, fn):
        self._handles.append(module.register_forward_pre_hook(fn))

    def post(self, module, fn):
        self._handles.append(module.register_forward_hook(fn))

    def override(self, module, forward):
        """Replace ``module.forward`` by ``forward`` (an instance attribute) until removal."""
        if "forward" in module.__dict__:
            raise ValueError(f"{type(module).__name__} already has an instance forward")
        module.forward = forward
        self._overridden.append(module)

    def remove(self):
        for h in self._handles:
            h.remove()
        for m in self._overridden:
            del m.forward
        self._handles, self._overridden = [], []


class PassGuard:
    """Counts each BN layer's calls within one forward pass of the model: a layer used
    twice in one pass has no single batch statistic (fvcore refuses it too)."""

    def __init__(self, model, hooks):
        self.active = False
        self.seen = set()

        def start(_module, _args):
            self.active, self.seen = True, set()

        def end(_module, _args, _out):
            self.active = False

        hooks.pre(model, start)
        hooks.post(model, end)

    def check(self, name):
        if not self.active:
            return
        if name in self.seen:
            raise ValueError(
                f"BN layer {name!r} was called twice in one forward pass: a reused BN layer "
                "has no single batch statistic (use one BN module per call site)"
            )
        self.seen.add(name)
