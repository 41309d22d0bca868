"""The one table of contenders: operation x library x layout -> a callable to time.

Like numbagg's ``COMPARISONS``, :data:`COMPARISONS` names every way a batch-norm
operation is run, and both the tests (``tests/perf/test_contenders.py`` checks every
entry against the float64 reference) and the timings (:mod:`bnbench.perf.kernels`,
:mod:`bnbench.perf.margins`) read it, so a contender timed is a contender tested.

Libraries: ``"api"`` is bnbench's public API (:mod:`bnbench.functional`, input checks
plus kernel) on any registered backend, peers included (``backend="torch"`` is the
registry's PyTorch peer called through bnbench's API); ``"aten"`` is PyTorch's own call,
``native_batch_norm`` and ``native_batch_norm_backward`` on zero-copy views, allocating
its output as PyTorch does. Layouts: ``"first"`` is ``(N, C, *spatial)``; ``"last"`` is
channels-last, a C-contiguous ``(N, *spatial, C)`` copy: bnbench with ``axis=-1``,
PyTorch on the same memory as a ``torch.channels_last`` tensor (4-D) or, for 1-D signals
``(N, L, C)`` (PyTorch has no channels-last format for them), as the ``(N * L, C)`` view
its ``BatchNorm1d`` takes.

Every setup takes ``(op, data, backend, out)`` with ``data`` from :func:`inputs` (always
channel-first) and returns a zero-argument callable returning ``y`` (forward) or ``dx``
(backward) in the layout's own shape; :func:`to_channel_first` turns a result back for
validation, outside the timed region.
"""

import numpy as np

from .. import functional as F
from .timing import aligned_copy

#: operation -> bytes moved, in multiples of the input's size: forward-train reads the
#: input for the statistics, then reads it and writes y; inference reads and writes once;
#: backward reads dy and x for the reductions, reads both again and writes dx
BYTE_MODEL = {"forward_train": 3, "forward_eval": 2, "backward": 5}
GHOST_BATCH_SIZE = 32
RENORM_CLIP = {"rmax": 3.0, "dmax": 5.0}  # the end of Ioffe's warm-up


def inputs(shape, dtype, seed):
    """Seeded, 64-byte aligned ``(x, dy, weight, bias, ref)`` for ``shape``: ``ref`` is the
    float64 reference's training-mode result (statistics for inference and backward)."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = aligned_copy((rng.standard_normal(shape) * 2.0 + 0.5).astype(dtype))
    dy = aligned_copy(rng.standard_normal(shape).astype(dtype))
    weight = rng.uniform(0.5, 1.5, C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    ref = F.batch_norm_train(x, weight, bias, backend="reference")
    return x, dy, weight, bias, ref


def api_call(op, backend, data, out=None, axis=1):
    """A zero-argument callable running ``op`` through bnbench's public API on
    ``backend`` (channel ``axis`` of the data); returns y or dx."""
    x, dy, weight, bias, ref = data
    kw = {"backend": backend, "out": out, "axis": axis}
    if op == "forward_train":
        return lambda: F.batch_norm_train(x, weight, bias, **kw).y
    if op == "forward_eval":
        return lambda: F.batch_norm_eval(x, weight, bias, mean=ref.mean, var=ref.var, **kw)
    return lambda: F.batch_norm_backward(dy, x, weight, mean=ref.mean, invstd=ref.invstd,
                                         **kw).dx  # fmt: skip


def aten_call(op, data, channels_last=False):
    """PyTorch's own call, allocating its output: ``native_batch_norm`` (forward) and
    ``native_batch_norm_backward``, on zero-copy views (channels-last: permuted to
    PyTorch's logical ``(N, C, *spatial)``)."""
    import torch

    aten = torch.ops.aten
    x, dy, weight, bias, ref = data

    def view(a):
        t = torch.from_numpy(a)
        if not channels_last:
            return t
        if a.ndim == 3:  # (N, L, C): PyTorch's BatchNorm1d input for channels-last 1-D data
            return t.reshape(-1, a.shape[2])
        return t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))

    tx, tdy = view(x), view(dy)
    w, b, mean, var, invstd = (torch.from_numpy(a) for a in (weight, bias, *ref[1:4]))
    if op == "forward_train":
        return lambda: aten.native_batch_norm(tx, w, b, None, None, True, 0.0, 1e-5)[0]
    if op == "forward_eval":
        return lambda: aten.native_batch_norm(tx, w, b, mean, var, False, 0.0, 1e-5)[0]
    return lambda: aten.native_batch_norm_backward(
        tdy, tx, w, None, None, mean, invstd, True, 1e-5, [True, True, True])[0]  # fmt: skip


def channels_last(a):
    """``(N, C, *spatial)`` -> a C-contiguous ``(N, *spatial, C)`` copy (NumPy default)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def in_layout(data, layout):
    """:func:`inputs`' data laid out for ``layout``: as it is for ``"first"``; for
    ``"last"`` with ``x`` and ``dy`` as channels-last copies. Make it once and give the
    same data to every library, so that all of them time the same memory."""
    if layout == "first":
        return data
    x, dy, *rest = data
    return (channels_last(x), channels_last(dy), *rest)


#: library -> layout -> setup(op, data, backend, out) -> zero-argument callable, with
#: ``data`` already in the layout's memory order (:func:`in_layout`)
COMPARISONS = {
    "api": {
        "first": lambda op, data, backend, out: api_call(op, backend, data, out),
        "last": lambda op, data, backend, out: api_call(op, backend, data, out, axis=-1),
    },
    "aten": {
        "first": lambda op, data, backend, out: aten_call(op, data),
        "last": lambda op, data, backend, out: aten_call(op, data, channels_last=True),
    },
}


def contender(op, library, layout, data, backend="cpu", out=None):
    """The callable :data:`COMPARISONS` names for ``op`` (a key of :data:`BYTE_MODEL`),
    ``library`` and ``layout`` on ``data`` (laid out by :func:`in_layout`); ``backend``
    and ``out`` apply to ``"api"``."""
    if op not in BYTE_MODEL:
        raise ValueError(f"op must be one of {sorted(BYTE_MODEL)}, got {op!r}")
    return COMPARISONS[library][layout](op, data, backend, out)


def layouts(shape):
    """The layouts timed for ``shape``: channels-last only where there are spatial axes."""
    return ["first", "last"] if len(shape) > 2 else ["first"]


def to_channel_first(result, shape, library, layout):
    """A contender's result as a channel-first NumPy array of ``shape``: channels-last
    results of ``"api"`` are ``(N, *spatial, C)``; those of ``"aten"`` are PyTorch's
    logical ``(N, C, *spatial)``, or for 1-D signals the ``(N * L, C)`` view."""
    a = result.numpy() if hasattr(result, "numpy") else result
    if layout == "first":
        return a
    if library == "aten" and len(shape) > 3:
        return a
    if library == "aten":
        a = a.reshape(shape[0], shape[2], shape[1])
    return np.moveaxis(a, -1, 1)


def ghost_batch_size(N):
    """The ghost batch size timed for a batch of ``N``: 32 where it divides N into two
    groups or more, else the largest divisor of N up to 32 that does (None if none)."""
    for G in range(min(GHOST_BATCH_SIZE, N // 2), 1, -1):
        if N % G == 0:
            return G
    return None


def running(data):
    """Running estimates off the batch's statistics: r and d are clipped in some
    channels, as early in training."""
    ref = data[4]
    C = ref.mean.shape[0]
    rm = ref.mean + np.sqrt(ref.var) * np.linspace(-8, 8, C)
    rv = ref.var * np.geomspace(0.1, 10, C)
    return rm.astype(ref.mean.dtype), rv.astype(ref.var.dtype)


def variant_call(variant, direction, backend, data, out, G, running):
    """A zero-argument callable: ``variant`` ("plain", "ghost" with ghost batch size
    ``G``, "renorm" with :data:`RENORM_CLIP` and ``running`` estimates) of ``direction``
    ("forward_train", "backward") through bnbench's API on ``backend``; returns y or dx."""
    x, dy, weight, bias, _ = data
    if variant == "plain":
        return api_call(direction, backend, data, out)
    if variant == "ghost":
        stats = F.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend)
        if direction == "forward_train":
            return lambda: (
                F.batch_norm_train(x, weight, bias, ghost_batch_size=G, backend=backend, out=out).y
            )
        return lambda: F.batch_norm_backward(
            dy, x, weight, mean=stats.mean, invstd=stats.invstd, ghost_batch_size=G,
            backend=backend, out=out,
        ).dx  # fmt: skip
    rm, rv = running
    kw = {"running_mean": rm, "running_var": rv, **RENORM_CLIP, "backend": backend}
    if direction == "forward_train":
        return lambda: F.batch_renorm_train(x, weight, bias, **kw, out=out).y
    st = F.batch_renorm_train(x, weight, bias, **kw)
    return lambda: F.batch_renorm_backward(
        dy, x, weight, mean=st.mean, invstd=st.invstd, r=st.r, d=st.d, backend=backend,
        out=out,
    ).dx  # fmt: skip
