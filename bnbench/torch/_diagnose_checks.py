"""Input checks of :func:`bnbench.torch.diagnosis.diagnose`, each error naming the argument
and raised before any long computation where it can be, and the helpers that name the
argument of an error raised during a pass over it."""

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from . import _core, statistics


class Counted:
    """``batches`` re-iterable, counting the batches taken; ``min_size`` skips smaller
    ones (a batch of one sample has no batch variance for PreciseBN)."""

    def __init__(self, batches, min_size=0):
        self.batches, self.min_size, self.taken = batches, min_size, 0

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if _core.split_batch(batch, i)[0].shape[0] >= self.min_size:
                self.taken += 1
                yield batch


@contextlib.contextmanager
def named(what):
    """Re-raise an error of a pass over ``what`` naming it: as a ``ValueError`` (a
    ``TypeError`` stays one)."""
    try:
        yield
    except Exception as err:
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"{what}: {err}") from err


def _integer(value, name, low, none=False):
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be {'None or ' if none else ''}an integer >= {low}, "
                         f"got {value!r}")  # fmt: skip


def check_args(model, train_batches, test_batches, precise_samples, aggregation,
                test_batch_size, resamples, confidence, margin):  # fmt: skip
    layers = _core.bn_layers(model)
    frozen = [n for n, m in layers.items() if m.running_mean is None or m.running_var is None]
    if frozen:
        raise ValueError(
            f"BN layer(s) {frozen} keep no running buffers "
            "(track_running_stats=False): eval mode uses batch statistics"
        )
    for name, b in (("train_batches", train_batches), ("test_batches", test_batches)):
        if isinstance(b, Iterator):  # iter() would start a DataLoader's workers
            raise TypeError(f"{name} must be re-iterable (a list or a DataLoader): diagnose "
                            f"passes over it several times, got a {type(b).__name__}")  # fmt: skip
    counts = list(precise_samples or ())
    for k in counts:
        _integer(k, "precise_samples entries", 1, none=True)
    if aggregation not in statistics.AGGREGATIONS:
        raise ValueError(
            f"aggregation must be one of {statistics.AGGREGATIONS}, got {aggregation!r}"
        )
    _integer(test_batch_size, "test_batch_size", 2, none=True)
    _integer(resamples, "resamples", 100)
    if not 0 < confidence < 1 or not margin >= 0:
        raise ValueError(
            f"need 0 < confidence < 1 and margin >= 0, got {confidence!r}, {margin!r}"
        )
    return layers, counts


def probe(model, batches, what, device, labelled):
    """One forward pass of the first batch (model in eval mode, no grad): an empty loader,
    missing labels or inputs the model cannot take fail here, naming ``what``."""
    first = next(iter(batches), None)
    if first is None:
        raise ValueError(f"{what} yielded no batch (an empty loader)")
    with named(what):
        x, rest = _core.split_batch(first, 0)
    y = rest[0] if rest else None
    if labelled and not (isinstance(y, torch.Tensor) and y.dim() == 1 and len(y) == len(x)
                         and not y.is_floating_point()):  # fmt: skip
        raise ValueError(
            f"{what} must yield (input, labels) with integer labels of shape "
            f"({len(x)},), got {type(y).__name__} {getattr(y, 'shape', '')}"
        )
    try:
        with torch.no_grad():
            model.eval()
            out = model(x.to(device))
    except Exception as err:
        raise ValueError(
            f"{what}: the model's forward fails on its first batch (input of "
            f"shape {tuple(x.shape)}): {type(err).__name__}: {err}"
        ) from err
    if labelled and not (isinstance(out, torch.Tensor) and out.dim() == 2):
        raise ValueError(f"{what}: the model must return (N, classes) logits, got {out!r:.80}")
    if labelled and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise ValueError(
            f"{what}: labels must lie in [0, {out.shape[1]}) for the model's "
            f"{out.shape[1]} classes, got [{int(y.min())}, {int(y.max())}]"
        )
    return len(x)
