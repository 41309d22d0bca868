"""Estimators of the population statistics a BN layer uses at test time.

Every estimator has one interface, modelled on the estimator objects of fvcore's PreciseBN
(which take Bessel-corrected variances):

``update(batch_mean, batch_var, count)``
    called once per training batch with that batch's per-channel mean and **biased**
    variance, as :func:`bnbench.batch_norm_train` returns them, and ``count`` the number
    of values per channel behind them (``N * prod(spatial)``: the batch size only for
    ``(N, C)`` input), the same ``count`` as :func:`bnbench.update_running_stats` takes;
``mean``, ``var``
    the current estimates, float64 ``(C,)`` (``(K, C)`` for the multi-momentum EMAs),
    each read a fresh array: changing it does not change the estimator.

The two estimators that need extra passes over the data after training (``precise`` and
``population``) aggregate batch statistics with :class:`BatchAggregate`; the passes
themselves live in :mod:`bnbench.evaluate`, which knows the network. ``test_batch`` (BN
left in training mode at test time) has no state and is an evaluation mode of
:mod:`bnbench.evaluate`.
"""

import numpy as np

from .kernels.scalar import chan_merge

#: Estimator names, as used in configurations, results and reports.
NAMES = ("ema", "ema_debiased", "cumulative", "precise", "population", "test_batch")


def check_momenta(momenta):
    """``momenta`` as a float64 ``(K,)`` array of values in (0, 1], or a clear error."""
    m = np.atleast_1d(np.asarray(momenta, dtype=np.float64))
    if m.ndim != 1 or m.size == 0 or not np.all((m > 0) & (m <= 1)):
        raise ValueError(f"momenta must be one or more values in (0, 1], got {momenta!r}")
    return m


def _cpu():
    from .registry import get_backend

    return get_backend("cpu")


def _channel_stat(a, name, C):
    """A batch statistic as a float64 ``(C,)`` array, or a clear error."""
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) (one value per channel), got {a.shape}")
    return a


def _bessel(var, count, unbiased):
    if not unbiased:
        return var
    if count < 2:
        raise ValueError(f"count must be >= 2 for an unbiased variance, got {count}")
    return var * (count / (count - 1))


class EMA:
    """Exponential moving average for K momenta at once (PyTorch convention).

    ``r <- (1 - m) r + m * stat`` starting from mean 0 and variance 1, as PyTorch's
    running statistics; ``mean`` and ``var`` are ``(K, C)``, one row per momentum.
    Keras writes the same average with ``momentum_keras = 1 - m``: Keras' default 0.99
    is PyTorch's 0.01. The variance fed in is the unbiased batch variance unless
    ``unbiased=False``.

    Degrades when ``m`` is large (the estimate is a few noisy batches: small batches make
    it worse) or when ``m`` is so small that the average still remembers the early,
    untrained network (and the zero/one initialisation) when training ends.
    """

    name = "ema"
    initial_var = 1.0

    def __init__(self, num_channels, momenta=0.1, unbiased=True):
        self.momenta = check_momenta(momenta)
        self.unbiased = unbiased
        shape = (self.momenta.size, num_channels)
        self.running_mean = np.zeros(shape)
        self.running_var = np.full(shape, self.initial_var)
        self.steps = 0

    def update(self, batch_mean, batch_var, count):
        # The state was validated once, here; per batch only the statistics are checked
        # before the kernel runs (the public update_running_stats checks everything, and
        # its overhead made EMA bookkeeping cost 6-10% of a CNN training run).
        mean = _channel_stat(batch_mean, "batch_mean", self.running_mean.shape[1])
        var = _bessel(_channel_stat(batch_var, "batch_var", mean.size), count, self.unbiased)
        _cpu().update_running(self.running_mean, self.running_var, mean, var, self.momenta)
        self.steps += 1

    @property
    def mean(self):
        return self.running_mean.copy()

    @property
    def var(self):
        return self.running_var.copy()


class DebiasedEMA(EMA):
    """EMA started at zero and divided by ``1 - (1 - m)^t`` after ``t`` updates (Adam's
    bias correction, Kingma & Ba 2015, section 3).

    Removes the pull of the initial value, so a small momentum no longer means a
    biased estimate early on; it is still an average over the whole trajectory of a
    network whose statistics drift as it trains. NaN before the first update.
    """

    name = "ema_debiased"
    initial_var = 0.0

    def _debias(self, raw):
        if self.steps == 0:
            return np.full_like(raw, np.nan)
        return raw / (1.0 - (1.0 - self.momenta[:, None]) ** self.steps)

    @property
    def mean(self):
        return self._debias(self.running_mean)

    @property
    def var(self):
        return self._debias(self.running_var)


class FixedStatistics:
    """Statistics fixed once (e.g. FrozenBN's, frozen during training), read like an
    estimator's: ``mean``, ``var`` float64 ``(C,)``, a fresh array on every read."""

    def __init__(self, mean, var):
        self._mean, self._var = (np.array(a, dtype=np.float64) for a in (mean, var))

    @property
    def mean(self):
        return self._mean.copy()

    @property
    def var(self):
        return self._var.copy()


class CumulativeAverage(FixedStatistics):
    """Equal-weight average of every batch's statistics seen (PyTorch ``momentum=None``).

    Unbiased batch variance by default, as PyTorch. Weighs the first, untrained batches
    as much as the last ones, so it lags a network whose statistics drift.
    """

    name = "cumulative"

    def __init__(self, num_channels, unbiased=True):
        super().__init__(np.zeros(num_channels), np.zeros(num_channels))
        self.unbiased = unbiased
        self.steps = 0

    def update(self, batch_mean, batch_var, count):
        mean = _channel_stat(batch_mean, "batch_mean", self._mean.size)
        var = _bessel(_channel_stat(batch_var, "batch_var", mean.size), count, self.unbiased)
        self.steps += 1
        w = 1.0 / self.steps
        self._mean += w * (mean - self._mean)
        self._var += w * (var - self._var)


class BatchAggregate:
    """Exact statistics of the union of the batches seen: PreciseBN's aggregations.

    :attr:`var` (with :attr:`mean`) is fvcore's current ``update_bn_stats`` exactly
    (``fvcore/nn/precise_bn.py``, ``_PopulationVarianceEstimator``, since 2021-05-17): the
    count-weighted mean of the batch means, and the *biased* variance of the union of the
    batches, i.e. the count-weighted mean of the biased batch variances plus the variance
    of the batch means (law of total variance; fvcore undoes BN's Bessel correction per
    batch and does not apply it to the total), merged pairwise with Chan's formula. This
    follows Wu & Johnson, "Rethinking 'Batch' in BatchNorm" (2021), section 3 and
    appendix.

    :attr:`mean_batch_var` gives, from the same pass, the older aggregation: the plain
    (equal-weight) mean of the Bessel-corrected batch variances (``unbiased=False``: of
    the biased ones), as fvcore computed it before 2021-05-17 (kept there, unused, as
    ``_MeanOfBatchVarianceEstimator``) and as ``torch.optim.swa_utils.update_bn`` still
    does (a cumulative average, ``momentum=None``, over batches).

    Fed with batches from a network in training mode with frozen weights, this is
    PreciseBN: it degrades when few samples are used (noisy) and, unlike the
    ``population`` target, upstream layers normalise with batch statistics, so the
    estimate inherits the train/test inconsistency of small batches; then the variance of
    the batch means includes that batch noise, and the ``precise-bn-samples`` study finds
    the mean of batch variances the closer of the two to ``population`` on MNIST-1D.
    """

    name = "precise"

    def __init__(self, num_channels, unbiased=True):
        self.unbiased = unbiased
        self.count = 0.0
        self.batches = 0
        self._mean = np.zeros(num_channels)
        self._m2 = np.zeros(num_channels)
        self._batch_var_sum = np.zeros(num_channels)

    def update(self, batch_mean, batch_var, count):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        n = float(count)
        bm = _channel_stat(batch_mean, "batch_mean", self._mean.size)
        bv = _channel_stat(batch_var, "batch_var", bm.size)
        self.count, self._mean, self._m2 = chan_merge(
            self.count, self._mean, self._m2, n, bm, bv * n
        )
        bessel = (n / (n - 1) if n > 1 else np.nan) if self.unbiased else 1.0
        self._batch_var_sum += bessel * bv
        self.batches += 1

    @property
    def mean_batch_var(self):
        """The equal-weight mean of the batch variances alone (Bessel per batch if
        ``unbiased``, so NaN after a batch of one), missing the variance of the batch
        means: the old PreciseBN variance (fvcore before 2021-05-17) and what
        ``torch.optim.swa_utils.update_bn`` computes."""
        if self.batches == 0:
            return np.full_like(self._m2, np.nan)
        return self._batch_var_sum / self.batches

    @property
    def mean(self):
        return self._mean.copy()

    @property
    def var(self):
        """The biased variance of the union of the batches (fvcore's current estimate)."""
        if self.count == 0:
            return np.full_like(self._m2, np.nan)
        return self._m2 / self.count
