"""BN statistics across ranks: exact merging, the collectives behind
``precise_statistics(..., process_group=)`` and ``population_statistics(..., process_group=)``,
and the other ways of merging (:data:`SCHEMES`).

A rank's statistics of one layer are a *part* ``(count, mean, M2)`` (``M2`` the sum of
squared deviations from the part's own mean, per channel). Four schemes turn the parts
of the ranks into one ``(mean, var)`` (biased variance):

* ``size_weighted``: Chan's merge (:func:`merge`): the mean and variance of the union of
  every rank's data, uneven counts included. What bnbench's ``process_group=`` does.
* ``equal_moments``: every rank weighs ``1/R``: the mean of the rank means, and the mean
  of the rank mean squares minus its square (law of total variance with equal weights).
  detectron2's ``NaiveSyncBatchNorm(stats_mode="")`` (``detectron2/layers/batch_norm.py``:
  ``all_reduce`` of ``[mean, meansqr]`` over ``1/world_size``, then ``meansqr - mean^2``
  in float32), exact only when every rank has the same ``N*H*W``; its ``stats_mode="N"``
  weighs ranks by the batch size ``N``, exact when the ranks share ``H, W``.
* ``equal_mean_var``: the mean of the rank means and the mean of the rank variances, no
  between-rank term: mmpretrain's PreciseBN (``mmpretrain/engine/hooks/precise_bn_hook.py``,
  ``update_bn_stats``: per rank the plain average over its batches of the batch mean and
  of the Bessel-corrected batch variance, then ``scaled_all_reduce``, a sum over ranks
  divided by the world size).
* ``rank0``: rank 0's statistics alone: fvcore's ``update_bn_stats``
  (``fvcore/nn/precise_bn.py``; detectron2's ``PreciseBN`` hook in
  ``detectron2/engine/hooks.py`` calls it) communicates nothing, so ranks end with
  different statistics (detectron2#5398, fvcore#152) and a checkpoint saved by rank 0
  keeps rank 0's; ``torch.nn.DataParallel`` likewise keeps the master replica's buffers
  (pytorch#1051). Sources read at detectron2 02b5c4e, fvcore 3378afe, mmpretrain ee7f2e8.

:mod:`bnbench.torch.shard_errors` measures each scheme against the exact statistics as
the ranks' shards become uneven.
"""

import hashlib

import numpy as np
import torch

from ..kernels.scalar import chan_merge

SCHEMES = ("size_weighted", "equal_moments", "equal_mean_var", "rank0")
#: the short rank's shard size, as a fraction of the others'
FRACTIONS = (1.0, 0.5, 0.25, 0.125)


def as_float64(a):
    """``a`` (a tensor on any device, or array-like) as a float64 NumPy array."""
    return np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)


def moments_part(x):
    """``(count, mean, M2)`` per channel of ``x`` ``(N, C, *spatial)`` (two passes, float64)."""
    a = as_float64(x)
    a = a.reshape(a.shape[0], a.shape[1], -1).transpose(1, 0, 2).reshape(a.shape[1], -1)
    mean = a.mean(axis=1)
    return float(a.shape[1]), mean, ((a - mean[:, None]) ** 2).sum(axis=1)


def merge(parts):
    """``(count, mean, M2)`` of the union of ``parts`` (a sequence of ``(count, mean, M2)``),
    by Chan's pairwise merge in the given order (Chan, Golub & LeVeque 1979; the same
    ``chan_merge`` as the kernels): exact for any shift between the parts' means, unlike
    summing ``E[x^2]``. Parts of count 0 are skipped. ``M2 / count`` is the biased variance."""
    parts = [(float(n), as_float64(m), as_float64(q)) for n, m, q in parts]
    if not parts:
        raise ValueError("merge needs at least one part (count, mean, M2)")
    shape = parts[0][1].shape
    if any(m.shape != shape or q.shape != shape or n < 0 for n, m, q in parts):
        raise ValueError(f"every part needs count >= 0 and mean, M2 of shape {shape}")
    n, mean, m2 = 0.0, np.zeros(shape), np.zeros(shape)
    for c, mu, q in parts:
        if c > 0:
            n, mean, m2 = chan_merge(n, mean, m2, c, mu, q)
    return n, mean, m2


def combine(parts, scheme="size_weighted"):
    """``(mean, biased var)`` of the per-rank ``parts`` (rank order) by ``scheme``, one of
    :data:`SCHEMES` (see the module docstring)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "size_weighted":
        n, mean, m2 = merge(parts)
        return mean, m2 / n
    parts = [(float(n), as_float64(m), as_float64(q)) for n, m, q in parts]
    if not parts or any(n <= 0 for n, _, _ in parts):
        raise ValueError(f"scheme {scheme!r} needs one or more parts, each of count > 0")
    means = np.stack([m for _, m, _ in parts])
    var = np.stack([q / n for n, _, q in parts])
    if scheme == "rank0":
        return means[0], var[0]
    mean = means.mean(axis=0)
    if scheme == "equal_mean_var":
        return mean, var.mean(axis=0)
    return mean, var.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)


# the collectives behind process_group=


def resolve_group(process_group):
    """``None`` (no merging), ``"world"`` (``torch.distributed.group.WORLD``, the default
    group, which must be initialised) or a ``torch.distributed.ProcessGroup`` this process
    belongs to; anything else is a clear error."""
    if process_group is None:
        return None
    dist, form = torch.distributed, 'process_group must be None, "world" or a ProcessGroup'
    if isinstance(process_group, str) and process_group != "world":
        raise ValueError(f"{form}, got {process_group!r}")
    if not isinstance(process_group, str) and not (
        dist.is_available() and isinstance(process_group, dist.ProcessGroup)
    ):
        raise TypeError(f"{form}, got {type(process_group).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"process_group={process_group!r} needs torch.distributed initialised first "
            "(torch.distributed.init_process_group)"
        )
    if isinstance(process_group, str):
        return dist.group.WORLD
    if dist.get_rank(process_group) < 0:
        raise ValueError("this process is not a member of process_group")
    return process_group


def _comm_device(group):
    backend = str(torch.distributed.get_backend(group))
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(group, row, width, error, what):
    """One ``all_gather`` of every rank's float64 ``row`` (``width`` values) with a status
    flag: a ``(ranks, width)`` array, the same on every rank. A rank that failed passes its
    ``error`` (and ``row=None``); then every rank raises, the failed ones their own error,
    the others a ``RuntimeError`` naming the failed ranks and their errors, so that no
    rank waits at a later collective."""
    t = torch.zeros(width + 1, dtype=torch.float64, device=_comm_device(group))
    if error is None:
        t[0] = 1.0
        t[1:] = torch.as_tensor(np.asarray(row, dtype=np.float64))
    out = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(out, t, group=group)
    rows = torch.stack(out).cpu().numpy()
    failed = np.flatnonzero(rows[:, 0] != 1.0).tolist()
    if failed:
        messages = [None] * len(out)
        mine = None if error is None else f"{type(error).__name__}: {error}"
        torch.distributed.all_gather_object(messages, mine, group=group)
        if error is not None:
            raise error
        detail = "; ".join(f"rank {r}: {messages[r]}" for r in failed)
        raise RuntimeError(f"{what} failed on rank(s) {failed}, so no rank merged: {detail}")
    return rows[:, 1:]


def agree_layers(group, layers, error, what):
    """Check, before any pass, that every rank has the same BN layers (names, order and
    channel counts) by an ``all_gather`` of a small fingerprint; returns ``[(name,
    channels)]``. Disagreement is a ``ValueError`` on every rank naming the differences;
    a rank's ``error`` (its own checks failed) stops every rank (:func:`gather_rows`)."""
    spec = [] if error else [(name, int(m.num_features)) for name, m in layers.items()]
    digest = hashlib.sha256(repr(spec).encode()).digest()
    row = [len(spec), *(int.from_bytes(digest[i : i + 6], "big") for i in (0, 6, 12))]
    rows = gather_rows(group, row, len(row), error, what)
    if (rows != rows[0]).any():
        specs = [None] * len(rows)
        torch.distributed.all_gather_object(specs, spec, group=group)
        raise ValueError(_disagreement(specs, what))
    return spec


def _disagreement(specs, what):
    ref, lines = dict(specs[0]), []
    for r, spec in enumerate(specs):
        if spec == specs[0]:
            continue
        own = dict(spec)
        diffs = ([f"{n!r} only on rank 0" for n in ref if n not in own]
                 + [f"{n!r} only on rank {r}" for n in own if n not in ref]
                 + [f"{n!r} has {ref[n]} channels on rank 0, {own[n]} on rank {r}"
                    for n in ref if n in own and own[n] != ref[n]]) or ["another order"]  # fmt: skip
        lines.append(f"rank {r}: {', '.join(diffs[:4])}")
    return (f"{what}: the ranks disagree on the BN layers (every rank needs the same names "
            f"and channel counts to merge statistics): {'; '.join(lines)}")  # fmt: skip
