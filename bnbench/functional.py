"""The public batch-norm functions: validate input, pick a backend, shape the results.

Tensors are channel-first like PyTorch by default: ``x`` has shape ``(N, C)`` or
``(N, C, *spatial)``; statistics are per channel over every other axis
(``M = N * prod(spatial)`` values per channel). ``axis=-1`` takes channels-last data,
``(N, *spatial, C)``: Keras' ``axis=-1`` (its default), and the memory order of
PyTorch's ``torch.channels_last``, which keeps the logical shape ``(N, C, H, W)`` and
changes only the strides; a NumPy array has no such split, so here the shape says the
layout. Channels-last input reaches the kernels as the ``(N * prod(spatial), C)``
layout: a reshape, never a transposing copy. float32 and float64 are supported; every
per-channel array must have the input's dtype. Non-contiguous ``x`` or ``dy`` is copied
to C order first (a documented cost); ``out`` must already be C-contiguous.

With ``backend="cuda"``, arrays may also be numba CUDA device arrays: results then stay
on the device (statistics too), and device arrays must be C-contiguous (no implicit
device copies). Host arrays given to the CUDA backend are copied in and out.

Statistics (``mean``, ``var``, ``invstd``, ``count``, ``momenta``) and ``eps`` are
keyword-only: PyTorch's ``F.batch_norm(input, running_mean, running_var, weight, bias,
training, momentum, eps)`` orders its arguments differently, so a call written the
PyTorch way raises ``TypeError`` here instead of silently swapping them.

Batch norm followed by a ReLU (:func:`batch_norm_relu_train`, :func:`batch_norm_relu_eval`,
:func:`batch_norm_relu_backward`) runs fused: the pre-activation is never stored. Bound:
bit for bit the unfused pair (this backend's batch norm, then a ReLU ``v if v > 0 else v
* 0`` as :class:`bnbench.nn.ReLU`) on the CPU backend and the float64 reference, whose
fused kernels run the same operations in the same order (the ReLU commutes with the
rounding to x's dtype; the masked gradient is exactly what a ReLU backward stores), and
on the CUDA backend in the simulator. Elsewhere (compiled CUDA, whose compiler may
contract a multiply-add differently; the PyTorch peer, whose ReLU gives +0 where
bnbench's gives -0 and whose ReLU backward gives 0 where an infinite ``dy`` is masked)
within the rounding of one extra operation: one unit in the last place of x's dtype,
relative to the largest magnitude of the result, and the sign of zeros aside.

Errors name the argument, what was expected and what was given: ``TypeError`` for a
wrong type or dtype, ``ValueError`` for a wrong shape or value.
"""

from typing import NamedTuple

import numpy as np

from . import registry
from ._checks import (
    _DTYPES,
    _any_negative,
    _c_contiguous,
    _check_channel,
    _check_clip,
    _check_eps,
    _check_ghost,
    _check_kind,
    _check_like,
    _check_out,
    _check_tensor,
    _is_device,
    _per_channel_count,
    _require,
    _stat,
    check_axis,
    kernel_view,
)


class TrainResult(NamedTuple):
    """Output of :func:`batch_norm_train`: ``y`` like ``x``; the rest ``(C,)``."""

    y: np.ndarray
    mean: np.ndarray
    var: np.ndarray  # biased (divides by M)
    invstd: np.ndarray  # 1 / sqrt(var + eps)


class RenormResult(NamedTuple):
    """Output of :func:`batch_renorm_train`: ``y`` like ``x``; the rest ``(C,)``.

    ``mean``, ``var`` (biased) and ``invstd`` are the batch's, as in :class:`TrainResult`
    (what the running-statistics update takes); ``r`` and ``d`` are Batch Renorm's
    correction, constants of the backward pass."""

    y: np.ndarray
    mean: np.ndarray
    var: np.ndarray  # biased (divides by M)
    invstd: np.ndarray  # 1 / sqrt(var + eps)
    r: np.ndarray
    d: np.ndarray


class GroupStats(NamedTuple):
    """Output of :func:`merge_group_stats`: the whole batch's ``(C,)`` float64 mean and
    biased variance, and its number of values per channel."""

    mean: np.ndarray
    var: np.ndarray
    count: int


class BackwardResult(NamedTuple):
    """Output of :func:`batch_norm_backward`: ``dx`` like ``x``; ``dweight``, ``dbias`` ``(C,)``."""

    dx: np.ndarray
    dweight: np.ndarray
    dbias: np.ndarray


def _tensor(x, axis, impl):
    """Checked ``x``, its channel axis and the backends' 3-D view of it."""
    x = _check_tensor(x, "x", impl)
    axis = check_axis(axis, x)
    return x, axis, kernel_view(x, axis)


def _training_count(xc, x):
    if _per_channel_count(xc) < 2:
        raise ValueError(
            "x must have more than one value per channel in training mode "
            f"(N * prod(spatial) >= 2), got shape {tuple(x.shape)}"
        )


def _ghost_rows(ghost_batch_size, x, xc, impl, backend):
    """``(groups, rows per group of the 3-D view)`` for ``ghost_batch_size``."""
    _require(impl, backend, "ghost", "ghost_batch_size")
    G, groups = _check_ghost(ghost_batch_size, x)
    return groups, G * (xc.shape[0] // x.shape[0])


def batch_norm_train(
    x, weight=None, bias=None, *, eps=1e-5, ghost_batch_size=None, axis=1, backend="cpu",
    out=None,
):  # fmt: skip
    """Batch norm in training mode: normalise ``x`` with its own per-channel statistics.

    ``x``: ``(N, C, *spatial)``, or ``(N, *spatial, C)`` with ``axis=-1``
    (channels-last); ``weight``, ``bias``: ``(C,)`` or ``None`` (no affine transform);
    ``eps`` (keyword-only, as every argument after ``bias``): added to the variance;
    ``out``: optional preallocated result. Returns ``TrainResult(y, mean, var, invstd)``
    with ``var`` biased.

    Ghost batch norm (Hoffer et al. 2017): with ``ghost_batch_size=G`` (an integer >= 2
    that divides N) the batch axis is split into ``N // G`` groups of ``G`` consecutive
    samples, each normalised with its own statistics, and ``mean``, ``var``, ``invstd``
    are per group, ``(N // G, C)``. ``G = N`` gives plain batch norm bit for bit (its
    statistics as one row). Running estimates take the groups' exact aggregate: see
    :func:`merge_group_stats`.
    """
    impl = registry.get_backend(backend)
    x, axis, xc, weight, bias = _affine_args(x, weight, bias, axis, impl)
    eps = _check_eps(eps)
    _training_count(xc, x)
    if ghost_batch_size is not None:
        _, rows = _ghost_rows(ghost_batch_size, x, xc, impl, backend)
    out = _check_out(out, x, impl)
    outc = kernel_view(out, axis)
    if ghost_batch_size is None:
        stats = impl.forward_train(xc, weight, bias, eps, outc)
    else:
        stats = impl.forward_train_ghost(xc, weight, bias, eps, rows, outc)
    return TrainResult(out, *(_stat(s, x) for s in stats))


def batch_norm_eval(
    x, weight=None, bias=None, *, mean, var, eps=1e-5, axis=1, backend="cpu", out=None
):
    """Batch norm in inference mode: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``mean`` and ``var`` ``(C,)`` are required keyword arguments (population estimates);
    ``weight`` and ``bias`` may be ``None``; ``axis``: 1 or -1, as in
    :func:`batch_norm_train`. Returns ``y`` with the shape and dtype of ``x``.
    """
    impl = registry.get_backend(backend)
    x, axis, xc, weight, bias = _affine_args(x, weight, bias, axis, impl)
    mean, var, eps, out = _eval_args(xc, x, mean, var, eps, out, impl)
    impl.forward_eval(xc, weight, bias, mean, var, eps, kernel_view(out, axis))
    return out


def _affine_args(x, weight, bias, axis, impl):
    """Checked ``x``, its channel axis, its 3-D view, ``weight`` and ``bias``."""
    x, axis, xc = _tensor(x, axis, impl)
    weight = _check_channel(weight, "weight", xc, impl, default=1.0)
    bias = _check_channel(bias, "bias", xc, impl, default=0.0)
    return x, axis, xc, weight, bias


def _eval_args(xc, x, mean, var, eps, out, impl):
    mean = _check_channel(mean, "mean", xc, impl)
    var = _check_channel(var, "var", xc, impl)
    if isinstance(var, np.ndarray) and _any_negative(var):  # device arrays: not checked
        raise ValueError(f"var must be non-negative, got minimum {float(var.min())!r}")
    return mean, var, _check_eps(eps), _check_out(out, x, impl)


def batch_norm_backward(
    dy, x, weight=None, *, mean, invstd, ghost_batch_size=None, axis=1, backend="cpu",
    out=None,
):  # fmt: skip
    """Gradients of :func:`batch_norm_train` given ``dy = dL/dy``.

    ``mean`` and ``invstd`` (keyword arguments) are those returned by the forward pass;
    ``weight`` may be ``None`` (no affine transform). Returns ``BackwardResult(dx, dweight, dbias)``;
    ``dweight`` and ``dbias`` are what an affine weight and bias would receive. With
    ``ghost_batch_size=G`` and ``axis``, as in the forward pass, ``mean`` and ``invstd``
    are the per-group ``(N // G, C)`` statistics it returned.
    """
    impl = registry.get_backend(backend)
    x, axis, xc = _tensor(x, axis, impl)
    dyc = kernel_view(_check_like(dy, "dy", x, impl), axis)
    weight = _check_channel(weight, "weight", xc, impl, default=1.0)
    groups = None
    if ghost_batch_size is not None:
        groups, rows = _ghost_rows(ghost_batch_size, x, xc, impl, backend)
    mean = _check_channel(mean, "mean", xc, impl, groups=groups)
    invstd = _check_channel(invstd, "invstd", xc, impl, groups=groups)
    _training_count(xc, x)
    if groups is not None:
        out = _check_out(out, x, impl)
        dweight, dbias = impl.backward_ghost(
            dyc, xc, weight, mean, invstd, rows, kernel_view(out, axis)
        )
        return BackwardResult(out, _stat(dweight, x), _stat(dbias, x))
    fresh = getattr(impl, "backward_fresh", None)
    if out is None and fresh is not None:
        # a peer without an out= backward (PyTorch): its own dx, no copy
        dx, dweight, dbias = fresh(dyc, xc, weight, mean, invstd)
        return BackwardResult(dx.reshape(x.shape), _stat(dweight, x), _stat(dbias, x))
    out = _check_out(out, x, impl)
    dweight, dbias = impl.backward(dyc, xc, weight, mean, invstd, kernel_view(out, axis))
    return BackwardResult(out, _stat(dweight, x), _stat(dbias, x))


# -- batch norm followed by a ReLU, fused


def batch_norm_relu_train(x, weight=None, bias=None, *, eps=1e-5, axis=1, backend="cpu",
                          out=None):  # fmt: skip
    """``relu(batch_norm_train(x, ...).y)`` in one pass: the statistics of
    :func:`batch_norm_train` (``TrainResult(y, mean, var, invstd)``, ``y`` after the
    ReLU), with the same arguments and checks; no ghost batches (call the two
    functions). The pre-activation is never stored. ``relu(v) = v if v > 0 else v * 0``:
    NaN stays NaN.

    Bound (all three fused functions; tests/kernels/test_cpu_fused.py,
    tests/cuda/test_cuda_fused.py, tests/test_fused.py): bit for bit the unfused pair
    (this backend's batch norm, then :class:`bnbench.nn.ReLU`) on the CPU backend, the
    float64 reference and the CUDA backend in the simulator; elsewhere within the
    rounding of one extra operation (see the module docstring).
    """
    impl = registry.get_backend(backend)
    x, axis, xc, weight, bias = _affine_args(x, weight, bias, axis, impl)
    _require(impl, backend, "relu", "batch_norm_relu_train")
    eps = _check_eps(eps)
    _training_count(xc, x)
    out = _check_out(out, x, impl)
    stats = impl.forward_train_relu(xc, weight, bias, eps, kernel_view(out, axis))
    return TrainResult(out, *(_stat(s, x) for s in stats))


def batch_norm_relu_eval(
    x, weight=None, bias=None, *, mean, var, eps=1e-5, axis=1, backend="cpu", out=None
):
    """``relu(batch_norm_eval(x, ...))`` in one pass, with the arguments and checks of
    :func:`batch_norm_eval`.

    Bound (all three fused functions; tests/kernels/test_cpu_fused.py,
    tests/cuda/test_cuda_fused.py, tests/test_fused.py): bit for bit the unfused pair
    (this backend's batch norm, then :class:`bnbench.nn.ReLU`) on the CPU backend, the
    float64 reference and the CUDA backend in the simulator; elsewhere within the
    rounding of one extra operation (see the module docstring).
    """
    impl = registry.get_backend(backend)
    x, axis, xc, weight, bias = _affine_args(x, weight, bias, axis, impl)
    _require(impl, backend, "relu", "batch_norm_relu_eval")
    mean, var, eps, out = _eval_args(xc, x, mean, var, eps, out, impl)
    impl.forward_eval_relu(xc, weight, bias, mean, var, eps, kernel_view(out, axis))
    return out


def batch_norm_relu_backward(
    dy, x, weight=None, *, y, mean, invstd, axis=1, backend="cpu", out=None
):
    """Gradients of :func:`batch_norm_relu_train` given ``dy = dL/dy``.

    The ReLU's mask comes from ``y``, the fused forward's output (keyword-only, like the
    statistics: ``y`` and ``x`` have the same shape, so a positional swap would pass
    every check): the gradient is :func:`batch_norm_backward` of ``dy if y > 0 else dy *
    0``, computed without storing it. ``y`` rather than ``x`` with the statistics,
    because the layer after the ReLU keeps ``y`` anyway (its input), and the mask from
    ``y`` is exactly the unfused ReLU's (recomputing the pre-activation from the
    statistics, rounded to x's dtype, could flip its sign near 0); it is the mask
    PyTorch's ReLU backward takes (its result) and cuDNN's fused BN-activation backward
    (``yData``). ``mean``, ``invstd``, ``weight`` and ``axis`` as in
    :func:`batch_norm_backward`. Returns ``BackwardResult(dx, dweight, dbias)``.

    Bound (all three fused functions; tests/kernels/test_cpu_fused.py,
    tests/cuda/test_cuda_fused.py, tests/test_fused.py): bit for bit the unfused pair
    (this backend's batch norm, then :class:`bnbench.nn.ReLU`) on the CPU backend, the
    float64 reference and the CUDA backend in the simulator; elsewhere within the
    rounding of one extra operation (see the module docstring).
    """
    impl = registry.get_backend(backend)
    x, axis, xc = _tensor(x, axis, impl)
    _require(impl, backend, "relu", "batch_norm_relu_backward")
    dyc = kernel_view(_check_like(dy, "dy", x, impl), axis)
    yc = kernel_view(_check_like(y, "y", x, impl), axis)
    weight = _check_channel(weight, "weight", xc, impl, default=1.0)
    mean = _check_channel(mean, "mean", xc, impl)
    invstd = _check_channel(invstd, "invstd", xc, impl)
    _training_count(xc, x)
    fresh = getattr(impl, "backward_relu_fresh", None)
    if out is None and fresh is not None:  # a peer without an out= backward (PyTorch)
        dx, dweight, dbias = fresh(dyc, yc, xc, weight, mean, invstd)
        return BackwardResult(dx.reshape(x.shape), _stat(dweight, x), _stat(dbias, x))
    out = _check_out(out, x, impl)
    dweight, dbias = impl.backward_relu(dyc, yc, xc, weight, mean, invstd, kernel_view(out, axis))
    return BackwardResult(out, _stat(dweight, x), _stat(dbias, x))


def batch_renorm_train(
    x, weight=None, bias=None, *, running_mean, running_var, rmax, dmax, eps=1e-5, axis=1,
    backend="cpu", out=None,
):  # fmt: skip
    """Batch Renormalization in training mode (Ioffe 2017).

    ``y = ((x - mean) / sigma_B * r + d) * weight + bias`` with the batch's ``mean`` and
    ``sigma_B = sqrt(var + eps)`` (``var`` biased), corrected towards the running
    estimates ``running_mean``, ``running_var`` (``(C,)``, x's dtype) through
    ``sigma = sqrt(running_var + eps)``:

    * ``r = clip(sigma_B / sigma, 1 / rmax, rmax)``, ``rmax >= 1``;
    * ``d = clip((mean - running_mean) / sigma, -dmax, dmax)``, ``dmax >= 0``.

    ``eps`` enters both sigmas, as in Keras' and torchrl's implementations. ``rmax = 1``,
    ``dmax = 0`` is plain batch norm (``r = 1``, ``d = 0``, the same ``y`` bit for bit
    on bnbench's compiled backends). ``axis``: 1 or -1, as in :func:`batch_norm_train`.
    Returns ``RenormResult(y, mean, var, invstd, r, d)``: the batch's ``mean``, biased
    ``var`` and ``invstd = 1 / sigma_B`` (for the backward pass and
    :func:`update_running_stats`), and ``r``, ``d`` (constants of the backward pass,
    :func:`batch_renorm_backward`).
    """
    impl = registry.get_backend(backend)
    x, axis, xc = _tensor(x, axis, impl)
    _require(impl, backend, "renorm", "batch_renorm_train")
    weight = _check_channel(weight, "weight", xc, impl, default=1.0)
    bias = _check_channel(bias, "bias", xc, impl, default=0.0)
    running_mean = _check_channel(running_mean, "running_mean", xc, impl)
    running_var = _check_channel(running_var, "running_var", xc, impl)
    if isinstance(running_var, np.ndarray) and _any_negative(running_var):
        raise ValueError(
            f"running_var must be non-negative, got minimum {float(running_var.min())!r}"
        )
    rmax, dmax = _check_clip(rmax, "rmax", 1), _check_clip(dmax, "dmax", 0)
    eps = _check_eps(eps)
    _training_count(xc, x)
    out = _check_out(out, x, impl)
    stats = impl.forward_train_renorm(
        xc, weight, bias, running_mean, running_var, rmax, dmax, eps, kernel_view(out, axis)
    )
    return RenormResult(out, *(_stat(s, x) for s in stats))


def batch_renorm_backward(
    dy, x, weight=None, *, mean, invstd, r, d, axis=1, backend="cpu", out=None
):
    """Gradients of :func:`batch_renorm_train` with ``r`` and ``d`` held constant
    (stop-gradient, as in Ioffe 2017): ``mean``, ``invstd``, ``r``, ``d`` and ``axis``
    are what the forward pass took and returned. Returns ``BackwardResult(dx, dweight,
    dbias)``."""
    impl = registry.get_backend(backend)
    x, axis, xc = _tensor(x, axis, impl)
    _require(impl, backend, "renorm", "batch_renorm_backward")
    dyc = kernel_view(_check_like(dy, "dy", x, impl), axis)
    weight = _check_channel(weight, "weight", xc, impl, default=1.0)
    mean, invstd, r, d = (
        _check_channel(a, name, xc, impl)
        for a, name in ((mean, "mean"), (invstd, "invstd"), (r, "r"), (d, "d"))
    )
    _training_count(xc, x)
    out = _check_out(out, x, impl)
    dweight, dbias = impl.backward_renorm(
        dyc, xc, weight, mean, invstd, r, d, kernel_view(out, axis)
    )
    return BackwardResult(out, _stat(dweight, x), _stat(dbias, x))


def merge_group_stats(mean, var, *, count):
    """The exact statistics of a whole batch from its ghost batches' statistics.

    ``mean``, ``var``: ``(groups, C)`` per-group mean and biased variance, as
    :func:`batch_norm_train` returns them with ``ghost_batch_size``; ``count``: values
    per channel in one group (``G * prod(spatial)``). Returns ``GroupStats(mean, var,
    count)``: float64 ``(C,)`` mean and biased variance of the whole batch (Chan's merge
    of equal-count groups: the mean of the group means, and the mean of the group
    variances plus the variance of the group means) and ``groups * count``: equal to
    plain batch norm's statistics of the same batch up to rounding.

    This is how ghost batch norm feeds running estimates in bnbench: one update per SGD
    step with the aggregate, ``update_running_stats(..., mean=s.mean, var=s.var,
    count=s.count)``, so every estimator sees the same statistics as with plain batch
    norm and targets the same population statistics. Keras' ``virtual_batch_size`` also
    updates once, but with the mean of the group means and the mean of the groups'
    biased variances: that omits the variance of the group means, which for iid groups
    of ``M`` values is about ``var / M`` (half the variance at ``G = 2``, ``L = 1``).
    MosaicML Composer's ``GhostBatchNorm`` runs PyTorch's batch norm once per chunk, so
    the running estimates take one update per group with the momentum divided by the
    number of groups, each with that group's Bessel-corrected variance: close to one
    update with the mean of the groups' unbiased variances, again without the variance
    of the group means (which matters when groups differ, as with non-iid batches).
    """
    mean, var = (
        np.asarray(a.copy_to_host() if _is_device(a) else a, np.float64) for a in (mean, var)
    )
    if mean.ndim != 2 or mean.shape[0] < 1:
        raise ValueError(f"mean must have shape (groups, C), got {mean.shape}")
    if var.shape != mean.shape:
        raise ValueError(f"var must have the shape of mean {mean.shape}, got {var.shape}")
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer (values per group), got {count!r}")
    total = mean.mean(axis=0)
    merged_var = var.mean(axis=0) + ((mean - total) ** 2).mean(axis=0)
    return GroupStats(total, merged_var, int(count) * mean.shape[0])


def update_running_stats(
    running_mean, running_var, *, mean, var, count, momenta, unbiased=True, backend="cpu"
):
    """Advance running estimates for K momenta at once, in place (PyTorch convention).

    ``running_mean``, ``running_var``: ``(K, C)`` float arrays, one row per momentum;
    ``mean``, ``var``: the batch's ``(C,)`` statistics with ``var`` biased, as returned
    by :func:`batch_norm_train`; ``count``: values per channel in the batch (M);
    ``momenta``: ``(K,)`` values in ``(0, 1]``. Each row becomes
    ``(1 - m) * r + m * stat``, where the variance fed in is ``var * M / (M - 1)``
    (Bessel-corrected, as PyTorch) unless ``unbiased=False``.
    """
    impl = registry.get_backend(backend)
    momenta = np.atleast_1d(np.asarray(momenta, dtype=np.float64))
    if momenta.ndim != 1 or not np.all((momenta > 0) & (momenta <= 1)):
        raise ValueError(f"momenta must be values in (0, 1], got {momenta!r}")
    for name, arr in (("running_mean", running_mean), ("running_var", running_var)):
        _check_kind(arr, name, impl)
        if arr.dtype not in _DTYPES:
            raise TypeError(f"{name} must be a float32 or float64 array, got {arr.dtype}")
        if len(arr.shape) != 2 or arr.shape[0] != momenta.size or not _c_contiguous(arr):
            raise ValueError(
                f"{name} must be C-contiguous with shape (K={momenta.size}, C), got {arr.shape}"
            )
    if running_var.shape != running_mean.shape:
        raise ValueError(
            f"running_var must have the shape of running_mean {running_mean.shape}, "
            f"got {running_var.shape}"
        )
    C = running_mean.shape[1]
    # (C,) values: read to the host, even from a device, to apply Bessel's correction
    mean, var = (
        np.asarray(a.copy_to_host() if _is_device(a) else a, np.float64) for a in (mean, var)
    )
    for name, arr in (("mean", mean), ("var", var)):
        if arr.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},), got {arr.shape}")
    if isinstance(count, bool) or int(count) != count or count < (2 if unbiased else 1):
        need = "an integer >= 2 (unbiased variance)" if unbiased else "an integer >= 1"
        raise ValueError(f"count must be {need}, got {count!r}")
    if unbiased:
        var = var * (count / (count - 1))
    impl.update_running(running_mean, running_var, mean, var, momenta)
