"""Argument checks and array views shared by the public functions in
:mod:`bnbench.functional`: each error names the argument, what was expected and what was
given (``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong shape or value).
"""

import math

import numba
import numpy as np

from . import config
from .kernels import is_device_array as _is_device
from .kernels import supports as _supports

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_kind(a, name, impl, shape_hint=""):
    """Host (NumPy) or, for a device-capable backend, a CUDA device array."""
    if isinstance(a, np.ndarray):
        return
    device_ok = hasattr(impl, "is_device")
    if _is_device(a):
        if not (device_ok and impl.is_device(a)):
            raise TypeError(f"{name} is a CUDA device array: this backend runs on the host")
        return
    what = "a numpy.ndarray" + (" or a CUDA device array" if device_ok else "")
    raise TypeError(f"{name} must be {what}{shape_hint}, got {type(a).__name__}")


def _c_contiguous(a):
    if isinstance(a, np.ndarray):
        return a.flags.c_contiguous
    if hasattr(a, "is_c_contiguous"):
        return a.is_c_contiguous()
    return a.__cuda_array_interface__.get("strides") is None


def _check_tensor(a, name, impl):
    _check_kind(a, name, impl)
    if a.dtype not in _DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if len(a.shape) < 2:
        raise ValueError(
            f"{name} must have shape (N, C), (N, C, *spatial) or, with axis=-1, "
            f"(N, *spatial, C), got {a.shape}"
        )
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if _is_device(a):
        if not _c_contiguous(a):
            raise ValueError(f"{name} must be C-contiguous on the device (no implicit copies)")
        return a
    return np.ascontiguousarray(a)


def _check_like(a, name, x, impl):
    a = _check_tensor(a, name, impl)
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {x.shape}, got {a.shape}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {a.dtype}")
    return a


def _check_channel(a, name, x, impl, default=None, groups=None):
    """A per-channel ``(C,)`` array of x's dtype; ``None`` becomes ``default`` if given.
    With ``groups``, a per-group ``(groups, C)`` array (ghost batch norm statistics)."""
    C = x.shape[1]
    if a is None and default is not None:
        return np.full(C, default, dtype=x.dtype)
    shape = (C,) if groups is None else (groups, C)
    _check_kind(a, name, impl, f" of shape {shape}")
    if tuple(a.shape) != shape:
        what = "one value per channel" if groups is None else "one row per ghost batch"
        raise ValueError(f"{name} must have shape {shape} ({what}), got {tuple(a.shape)}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {a.dtype}")
    return a


@numba.njit(cache=config.CACHE)
def _any_negative(a):
    """Whether a 1-D array has a value below zero (NaN is not): ``np.any(a < 0)`` took
    4.3 us a call on a (256,) float32 array (a temporary and a reduction), this 0.3 us."""
    for i in range(a.shape[0]):
        if a[i] < 0:
            return True
    return False


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a positive float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    return float(eps)


def _check_out(out, x, impl):
    if out is None:
        return impl.empty_like(x) if _is_device(x) else np.empty_like(x)
    _check_kind(out, "out", impl)
    if _is_device(out) != _is_device(x):
        raise TypeError("out must live where x lives (both host or both device arrays)")
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
        raise ValueError(
            f"out must have the shape {x.shape} and dtype {x.dtype} of x, "
            f"got {out.shape} {out.dtype}"
        )
    writeable = _is_device(out) or out.flags.writeable
    if not _c_contiguous(out) or not writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def _stat(s, x):
    """A returned statistic in x's dtype, on x's side (host or device)."""
    return s if _is_device(x) else np.asarray(s, dtype=x.dtype)


def _per_channel_count(x):
    return x.size // x.shape[1]


def _as3d(a):
    N, C = a.shape[0], a.shape[1]
    return a.reshape(N, C, a.size // (N * C))


def _require(impl, backend, operation, argument):
    """A clear error where a backend (a peer) lacks ``operation``."""
    if not _supports(impl, operation):
        from .registry import backends_supporting

        raise ValueError(
            f"backend {backend!r} has no {operation} kernel ({argument}); backends that "
            f"have one: {', '.join(backends_supporting(operation, peers=True))}"
        )


def _check_ghost(ghost_batch_size, x):
    """The number of groups for ``ghost_batch_size`` (an integer >= 2 dividing N)."""
    G, N = ghost_batch_size, x.shape[0]
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)):
        raise ValueError(
            f"ghost_batch_size must be an integer (samples per ghost batch) or None, "
            f"got {G!r} ({type(G).__name__})"
        )
    if G < 2:
        raise ValueError(f"ghost_batch_size must be at least 2, got {G}")
    if N % G:
        raise ValueError(
            f"ghost_batch_size must divide the batch size N = {N} (groups of equal size), got {G}"
        )
    return int(G), N // int(G)


def _check_clip(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float >= {low}, got {type(value).__name__}")
    if math.isnan(value) or value < low:
        raise ValueError(f"{name} must be >= {low} ({low} is plain batch norm), got {value!r}")
    return float(value)


def check_axis(axis, x):
    """The channel axis of ``x``: 1 (channel-first, ``(N, C, *spatial)``) or
    ``x.ndim - 1`` (channels-last, ``(N, *spatial, C)``)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(
            f"axis must be an integer, 1 (channel-first) or -1 (channels-last), got {axis!r}"
        )
    ndim = len(x.shape)
    resolved = int(axis) + ndim if axis < 0 else int(axis)
    if resolved not in (1, ndim - 1):
        raise ValueError(
            "axis must be 1 (channel-first, (N, C, *spatial)) or -1 (channels-last, "
            f"(N, *spatial, C)) for x of shape {tuple(x.shape)}, got {axis!r}"
        )
    return resolved


def kernel_view(a, axis):
    """The 3-D view every backend takes, without a copy: ``(N, C, prod(spatial))`` for
    channel-first data; ``(N * prod(spatial), C, 1)`` for channels-last data, whose rows
    of ``C`` values are the ``(N, C)`` layout."""
    if axis == 1:
        return _as3d(a)
    C = a.shape[len(a.shape) - 1]  # the CUDA simulator's shapes refuse negative indices
    return a.reshape(a.size // C, C, 1)
