"""Scalar math shared by every compiled backend.

Plain ``@numba.njit`` functions: callable from CPU kernels and from ``@cuda.jit`` kernels,
so only the parallel decomposition is written once per backend.
"""

import math

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


@numba.njit(inline="always", cache=config.CACHE)
def affine_coefficients(weight, bias, mean, var, eps):
    """``(scale, shift, invstd)`` of one channel, so that ``y = x * scale + shift``.

    Backends evaluate ``x * scale + shift`` in float64: the form cancels ``x`` against
    ``mean`` in one fused step without rounding either to the input's precision.
    ``math.sqrt``, not ``** 0.5``: without fast-math flags Numba keeps ``** 0.5`` a call
    to ``pow``, which made the (groups, C) coefficient loop of ghost batch norm on
    (4096, 1024), G = 32, several times slower than the data passes.
    """
    invstd = 1.0 / math.sqrt(var + eps)
    scale = weight * invstd
    return scale, bias - mean * scale, invstd


@numba.njit(inline="always", cache=config.CACHE)
def grad_coefficients(weight, mean, invstd, sum_dy, sum_dy_x, count):
    """One channel's backward pass as ``dx = a * dy + b * x + d``; also dweight, dbias.

    ``dx = w*invstd*(dy - sum(dy)/M - xc*invstd^2*sum(dy*xc)/M)`` with ``xc = x - mean``,
    and ``sum(dy*xc) = sum(dy*x) - mean*sum(dy)``: in float64 the cancellation costs
    ``log10(|mean|/std)`` of 16 digits and saves a subtraction per element (CPU, (128, 32,
    40), 2 threads: 34 -> 31 us for the reduction).
    """
    s_xc = sum_dy_x - mean * sum_dy
    a = weight * invstd
    b = -a * invstd * invstd * s_xc / count
    d = -a * sum_dy / count - b * mean
    return a, b, d, s_xc * invstd, sum_dy


@numba.njit(inline="always", cache=config.CACHE)
def renorm_factors(mean, var, running_mean, running_var, rmax, dmax, eps):
    """Batch Renorm's ``(r, d)`` of one channel (Ioffe 2017, Algorithm 1).

    ``sigma_B = sqrt(var + eps)`` with ``var`` the biased batch variance and
    ``sigma = sqrt(running_var + eps)``; ``r = clip(sigma_B / sigma, 1/rmax, rmax)``,
    ``d = clip((mean - running_mean) / sigma, -dmax, dmax)``. ``rmax = 1``, ``dmax = 0``
    give exactly ``r = 1``, ``d = 0`` (plain batch norm).
    """
    sigma = math.sqrt(running_var + eps)
    r = min(max(math.sqrt(var + eps) / sigma, 1.0 / rmax), rmax)
    d = min(max((mean - running_mean) / sigma, -dmax), dmax)
    return r, d


@numba.njit(inline="always", cache=config.CACHE)
def renorm_affine_coefficients(
    weight, bias, mean, var, running_mean, running_var, rmax, dmax, eps
):
    """``(scale, shift, invstd, r, d)`` of one channel so that Batch Renorm's
    ``y = ((x - mean) * invstd * r + d) * weight + bias`` is ``x * scale + shift``.

    Written as plain batch norm with the statistics ``mean - d / (invstd * r)`` and
    ``invstd * r``, so that ``r = 1, d = 0`` runs the same operations on the same values
    as :func:`affine_coefficients` (plain batch norm bit for bit; see
    tests/test_renorm.py).
    """
    invstd = 1.0 / math.sqrt(var + eps)
    r, d = renorm_factors(mean, var, running_mean, running_var, rmax, dmax, eps)
    inv = invstd * r
    scale = weight * inv
    return scale, bias - (mean - d / inv) * scale, invstd, r, d


@numba.njit(inline="always", cache=config.CACHE)
def renorm_grad_coefficients(weight, mean, invstd, r, d, sum_dy, sum_dy_x, count):
    """Batch Renorm's backward of one channel with ``r`` and ``d`` held constant
    (stop-gradient, Ioffe 2017): ``dx`` is plain batch norm's with the weight ``weight * r``;
    ``dweight = sum(dy * (r * xhat_B + d)) = r * sum(dy * xhat_B) + d * sum(dy)``.
    Returns ``(a, b, d_coef, dweight, dbias)`` as :func:`grad_coefficients`."""
    a, b, dc, dw, db = grad_coefficients(weight * r, mean, invstd, sum_dy, sum_dy_x, count)
    return a, b, dc, r * dw + d * db, db


@numba.njit(inline="always", cache=config.CACHE)
def relu(v):
    """``max(v, 0)`` as ``v if v > 0 else v * 0``: NaN stays NaN (``NaN * 0``), as
    :class:`bnbench.nn.ReLU` computes it. Applied to the float64 value before it is
    rounded to the output's dtype: rounding keeps the sign and maps 0 to 0, so this is
    bit for bit the ReLU of the rounded value (what BN followed by a ReLU layer gives)."""
    return v if v > 0 else v * 0


@numba.njit(inline="always", cache=config.CACHE)
def relu_grad(g, y):
    """The gradient ``g`` through a ReLU whose *output* was ``y``: ``g`` where ``y > 0``,
    else ``g * 0`` (so an inf or NaN gradient still poisons, as in ``nn.ReLU``'s
    backward). ``y > 0`` exactly where the ReLU's input was ``> 0`` (NaN: neither), the
    mask PyTorch's ReLU backward takes from its result (``threshold_backward(grad,
    result, 0)``) and cuDNN's fused BN-activation backward from ``yData``."""
    return g if y > 0 else g * 0
