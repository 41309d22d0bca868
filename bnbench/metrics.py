"""Evaluation metrics, one definition used everywhere: accuracy, NLL and ECE.

Every function takes ``logits`` of shape ``(N, classes)`` (any real dtype; computed in
float64) and integer ``labels`` of shape ``(N,)`` with values in ``[0, classes)``, and
returns a Python float.

* The prediction is ``argmax`` over classes; a tie goes to the lowest class index (NumPy's
  ``argmax``).
* Probabilities are the softmax of the logits, computed through a stable log-softmax
  (``z - max(z) - log(sum(exp(z - max(z))))``), so the metrics are invariant to adding a
  constant to a row of logits and overflow for no finite input.
* Non-finite logits (NaN or +-inf, e.g. from a diverged network) are not an error: every
  metric of such an input is NaN, so a diverged run shows up as NaN in a results table
  instead of crashing a study or being counted half (``argmax`` of a NaN row is arbitrary).
* Malformed input (logits not 2-D, no rows or no classes, labels not 1-D integers,
  lengths that differ, a label outside ``[0, classes)``) raises ``ValueError`` naming the
  argument.
"""

import math

import numpy as np

__all__ = ["accuracy", "nll", "ece", "scores", "ECE_BINS"]

#: Number of equal-width confidence bins of :func:`ece` (Guo et al. 2017 use 15).
ECE_BINS = 15


def _check(logits, labels):
    """Validated ``(logits float64 (N, K), labels int64 (N,))``."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.dtype == bool or not (
        np.issubdtype(logits.dtype, np.floating) or np.issubdtype(logits.dtype, np.integer)
    ):
        raise ValueError(f"logits must be a real-valued array, got dtype {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, classes), got shape {logits.shape}")
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(
            f"logits must have at least one row and one class, got shape {logits.shape}"
        )
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(
            f"labels must have one entry per row of logits ({n}), got {labels.shape[0]}"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"labels must lie in [0, {k}) for {k} classes, got values in [{lo}, {hi}]"
        )
    return logits.astype(np.float64, copy=False), labels.astype(np.int64, copy=False)


def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _accuracy(z, y):
    return float(np.mean(z.argmax(axis=1) == y))


def _nll(z, y):
    return float(-np.mean(_log_softmax(z)[np.arange(len(y)), y]))


def _ece(z, y, bins):
    # the largest softmax probability, exp(0) / sum(exp(z - max z)): exact for tied rows
    confidence = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)
    correct = z.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b is (edges[b], edges[b + 1]]: a confidence on an edge belongs to the lower bin
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    gap = np.bincount(which, weights=correct - confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(y))  # sum_b |B_b|/N * |acc_b - conf_b|


def accuracy(logits, labels):
    """Fraction of rows whose ``argmax`` (lowest index on a tie) equals the label."""
    z, y = _check(logits, labels)
    return math.nan if not np.isfinite(z).all() else _accuracy(z, y)


def nll(logits, labels):
    """Mean negative log-likelihood of the labels under the softmax of the logits
    (natural log; the cross-entropy loss), computed in float64 via a stable log-softmax."""
    z, y = _check(logits, labels)
    return math.nan if not np.isfinite(z).all() else _nll(z, y)


def _check_bins(bins):
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    return int(bins)


def ece(logits, labels, bins=ECE_BINS):
    """Expected calibration error with ``bins`` equal-width confidence bins over [0, 1].

    The confidence of a row is its largest softmax probability, and the row is correct
    when that class (``argmax``) is the label. Bin ``b`` holds the rows with confidence in
    ``(b/bins, (b+1)/bins]``: left-open, right-closed, so a confidence exactly on an edge
    (as ``np.linspace(0, 1, bins + 1)`` rounds it) falls into the lower bin, as in Guo et
    al.'s reference code; a confidence is never 0. The confidence is computed as
    ``1 / sum(exp(z - max(z)))``, so a row of ``k`` tied logits has confidence ``1/k``
    correctly rounded.
    Then ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, with ``acc`` and ``conf`` the
    mean correctness and mean confidence of the rows in the bin (empty bins contribute 0).
    It lies in [0, 1]; 0 means that, bin by bin, the confidence equals the accuracy.

    References: M. P. Naeini, G. F. Cooper, M. Hauskrecht, "Obtaining Well Calibrated
    Probabilities Using Bayesian Binning", AAAI 2015; C. Guo, G. Pleiss, Y. Sun,
    K. Q. Weinberger, "On Calibration of Modern Neural Networks", ICML 2017 (15 bins).
    """
    bins = _check_bins(bins)
    z, y = _check(logits, labels)
    return math.nan if not np.isfinite(z).all() else _ece(z, y, bins)


def scores(logits, labels, bins=ECE_BINS):
    """``{"accuracy": ..., "nll": ..., "ece": ...}`` as Python floats (input checked once)."""
    bins = _check_bins(bins)
    z, y = _check(logits, labels)
    if not np.isfinite(z).all():
        return {"accuracy": math.nan, "nll": math.nan, "ece": math.nan}
    return {"accuracy": _accuracy(z, y), "nll": _nll(z, y), "ece": _ece(z, y, bins)}
