"""Scalar math shared by every compiled backend.

Plain ``@numba.njit`` functions: callable from CPU kernels and from ``@cuda.jit`` kernels,
so only the parallel decomposition is written once per backend.
"""

import numba

from .. import config


@numba.njit(inline="always", cache=config.CACHE)
def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two partial (count, mean, M2) summaries (Chan, Golub & LeVeque 1979).

    ``M2`` is the sum of squared deviations from the partial's own mean, so the merged
    biased variance is ``M2 / n``. Stable for any shift between the partial means,
    unlike ``E[x^2] - E[x]^2``.
    """
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    delta = mean_b - mean_a
    frac = n_b / n
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@numba.njit(inline="always", cache=config.CACHE)
def ema_step(running, value, momentum):
    """One exponential-moving-average step, PyTorch convention: ``(1 - m) r + m v``."""
    return running + momentum * (value - running)


@numba.njit(inline="always", cache=config.CACHE)
def shifted_moments(shift, s, q, n):
    """Mean and M2 of ``n`` values from the sums ``s = sum(v - shift)``, ``q = sum((v - shift)^2)``.

    With ``shift`` one of the values, ``(mean - shift)^2 <= n * var``, so the float64
    cancellation in ``q - s^2/n`` loses at most about ``log10(n)`` digits: one pass over
    the data, and still ~1e-10 relative error at n = 10^6 where ``E[x^2] - E[x]^2`` in
    float32 loses everything once the mean is 10^4 standard deviations.
    """
    d = s / n
    return shift + d, q - s * d
