"""Test-time adaptation: BN statistics that look at the test data itself.

Each mode is a *normaliser* per BN layer, a callable ``(x) -> (mean, var)`` given the
layer's input during an inference-mode forward pass (``layer.eval_stats``), so the
statistics of a layer see the outputs of upstream layers that were adapted too. The
fixed-statistics modes need no normaliser: ``population`` over the training set is the
*source* statistics, and AdaBN (Li et al. 2016) is the same exact computation over the
unlabeled target set (:func:`bnbench.evaluate.population_statistics`).

* :func:`batch_statistics`: prediction-time BN (``test_batch``; Nado et al. 2020), each
  test batch normalised with its own statistics;
* :func:`prior`: Schneider et al. (2020, eq. 2), source and test-batch statistics mixed,
  ``mu = N/(N+n) mu_source + n/(N+n) mu_batch`` and the same for the variance, with
  prior strength ``N`` and ``n`` the number of samples in the test batch; the batch
  variance is the unbiased one (Bessel over the values per channel), as their reference
  code (bethgelab/robustness, ``robusta/batchnorm/bn.py``, ``BayesianBatchNorm``: the
  ``running_var`` of a ``momentum=1`` BN layer) computes it, so a batch with one value
  per channel is undefined there, as for prediction-time BN;
* :class:`OnlineEMA`: running statistics, started at the source statistics, updated on
  the stream of test batches with momentum ``m`` (unbiased batch variance, as in
  training); each batch is predicted with the statistics *after* its own update, so that
  the estimate includes the newest data right after a shift, while the batch's own
  (noisy) statistics weigh only ``m``.
"""

import numpy as np

from . import estimators as est


def channel_moments(x):
    """Per-channel float64 mean and biased variance of ``x`` ``(N, C, *spatial)``."""
    x3 = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    return x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))


def batch_statistics():
    """Prediction-time BN: each layer uses the test batch's own statistics (undefined,
    a ``ValueError``, with one value per channel: a batch of one without spatial axes)."""

    def normalise(x):
        if x.size == x.shape[1]:
            raise ValueError(
                f"BN with the batch's own statistics needs more than one value per channel, "
                f"got a batch of shape {x.shape}"
            )
        return channel_moments(x)

    return normalise


def check_strength(strength):
    """A prior strength N > 0 (finite), or a clear error."""
    if isinstance(strength, bool) or not isinstance(
        strength, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"prior strength N must be a number > 0, got {strength!r}")
    if not (np.isfinite(strength) and strength > 0):
        raise ValueError(f"prior strength N must be finite and > 0, got {strength!r}")
    return float(strength)


def unbiased_moments(x, what):
    """Per-channel float64 mean and *unbiased* variance of ``x`` ``(N, C, *spatial)``;
    one value per channel is a ``ValueError`` (no variance to estimate), ``what``
    naming the method."""
    count = x.size // x.shape[1]
    if count < 2:
        raise ValueError(
            f"{what} needs more than one value per channel for the batch's unbiased "
            f"variance, got a batch of shape {x.shape}"
        )
    m_t, v_t = channel_moments(x)
    return m_t, v_t * (count / (count - 1))


def prior(source, strength):
    """Schneider et al. (2020): the batch's mean and unbiased variance mixed with
    ``source`` ``(mean, var)`` with prior strength ``strength`` (N): weights
    ``N/(N+n)`` and ``n/(N+n)``, ``n`` = samples in the batch (their ``--adapt-prior-bsz``
    with ``n`` the test batch size)."""
    strength = check_strength(strength)
    m_s, v_s = source

    def normalise(x):
        n = x.shape[0]
        m_t, v_t = unbiased_moments(x, "the prior")
        w = strength / (strength + n)
        return w * m_s + (1 - w) * m_t, w * v_s + (1 - w) * v_t

    return normalise


class OnlineEMA:
    """Running statistics adapted on the stream of test batches: started at ``source``,
    ``r <- (1 - m) r + m * batch`` (unbiased batch variance, as training's running
    statistics; ``unbiased=False``: the biased one), the batch then normalised with the
    updated ``r``."""

    def __init__(self, source, momentum, unbiased=True):
        if np.ndim(momentum) != 0:
            raise ValueError(f"online EMA momentum must be one number in (0, 1], got {momentum!r}")
        est.check_momenta(momentum)
        self.mean, self.var = (np.array(s, dtype=np.float64) for s in source)
        self.momentum, self.unbiased = momentum, unbiased

    def __call__(self, x):
        m_t, v_t = channel_moments(x)
        count = x.size // x.shape[1]
        if count > 1 or not self.unbiased:  # one value carries no unbiased variance
            if self.unbiased:
                v_t = v_t * count / (count - 1)
            self.var += self.momentum * (v_t - self.var)
        self.mean += self.momentum * (m_t - self.mean)
        return self.mean.copy(), self.var.copy()


#: RoTTA's robust BN momentum (Yuan et al. 2023, ``ADAPTER.RoTTA.ALPHA``)
ROBUST_BN_MOMENTUM = 0.05


def robust_bn(source, momentum=ROBUST_BN_MOMENTUM):
    """RoTTA's robust BN layer (Yuan et al., "Robust Test-Time Adaptation in Dynamic
    Scenarios", CVPR 2023, section 3.2; BIT-DA/RoTTA ``core/utils/bn_layers.py``,
    ``RobustBN1d/2d`` in training mode): an EMA started at the source statistics,
    ``r <- (1 - alpha) r + alpha * batch`` with the batch's *biased* variance and
    ``alpha = 0.05``, each batch normalised with the updated ``r``. This is the RBN layer
    alone, updated on every test batch: RoTTA itself updates it on samples of its
    category-balanced memory bank and predicts with a teacher network, neither of which
    is here."""
    return OnlineEMA(source, momentum, unbiased=False)


#: adaptation modes that normalise each test batch, with the name of their parameter
BATCH_MODES = {"test_batch": None, "prior": "prior_strength", "online_ema": "momentum",
               "robust_bn": "momentum"}  # fmt: skip


def normalisers(mode, source, param=None):
    """Per-layer normalisers of ``mode`` (one of :data:`BATCH_MODES`) for a network whose
    source statistics are ``source`` ``[(mean, var), ...]``; ``param`` is the prior
    strength or the online (or robust BN) momentum."""
    if mode == "test_batch":
        return [batch_statistics() for _ in source]
    if mode == "prior":
        return [prior(s, param) for s in source]
    if mode == "online_ema":
        return [OnlineEMA(s, param) for s in source]
    if mode == "robust_bn":
        return [robust_bn(s, ROBUST_BN_MOMENTUM if param is None else param) for s in source]
    raise ValueError(f"adaptation mode must be one of {sorted(BATCH_MODES)}, got {mode!r}")
