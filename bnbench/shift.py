"""MNIST-1D-C: corrupted MNIST-1D test sets at severities 0-5, after ImageNet-C.

In the spirit of ImageNet-C (D. Hendrycks, T. Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019): the network is trained
on clean MNIST-1D and tested on its test set under one corruption at one severity.

How a set is built. The corruption acts on the *raw* test signals, before standardization
(:func:`bnbench.data.mnist1d_raw_test`), and the result is standardized with the
constants ``make_dataset`` used for the clean data (the mean and standard deviation of
all its raw signals), not with the corrupted set's own: ``make_dataset`` re-standardizes
whatever it produces, which would silently cancel a gain or offset change (and shrink
any added noise back to unit variance). Severity 0 is the clean test set, bit for bit
``bnbench.data.mnist1d(num_samples, seed).x_test``.

Units: ``sigma`` is that standardization's standard deviation (one unit of the
standardized clean data), ``sigma_i`` is one clean signal's own standard deviation over
its 40 samples (median 0.90 sigma at the default size), ``L = 40`` is the signal length,
``s`` the severity. Every parameter is linear in ``s`` and every random draw is the same
at every severity (only its amplitude changes), so the distance from the clean signal
grows with ``s`` and severities differ by nothing but strength.

=================  ================================================================
corruption         what it does; what severity 5 means
=================  ================================================================
gaussian_noise     adds i.i.d. Gaussian noise of std ``0.2 s sigma_i`` to each sample;
                   s=5: noise as strong as the signal (std sigma_i, SNR 0 dB); for
                   comparison, ImageNet-C's strongest (std 0.38 on pixels in [0, 1])
                   is about 1.7 times ImageNet's pixel std (0.225)
correlated_noise   adds Gaussian noise smoothed by a Gaussian kernel of std 2 samples
                   (about twice the kernel of the generator's own background noise,
                   std 2 of 72 samples; bumps about half a digit wide), rescaled to std
                   ``0.2 s sigma_i`` per sample; s=5: low-frequency noise with the
                   signal's power (SNR 0 dB)
shear              adds a linear ramp ``-/+ r * linspace(-0.5, 0.5, L)`` of random sign
                   per signal, end-to-end rise ``r = 0.075 s`` raw units; s=5: 0.375 raw
                   (2.4 sigma at the default size), the largest shear the generator
                   itself draws (its ``shear_scale / 2``), on top of the signal's own
translation        circular shift to the right by ``4 s`` samples (the generator's own
                   translation is circular too); s=5: 20 samples = L/2, the largest
                   circular displacement. The digit positions of the training set cover
                   only about 2/3 of the circle, so a shift moves many digits to
                   positions never seen in training
scale              time dilation by ``1 + 0.1 s`` about the centre of the window (linear
                   interpolation), the parts stretched past either end are lost;
                   s=5: x1.5, the ratio of the widest to the narrowest digit in the
                   generator (its padding of 36 to 60 samples), so the widest digits
                   become 1.5 times wider than any in training; the outer 1/6 of the
                   window on each side leaves it
gain_offset        a miscalibrated sensor: ``mean + g (x - mean) + o sigma`` with gain
                   ``g = 1 - 0.1 s`` and offset ``o = 0.2 s``; s=5: the signal halves
                   about the training mean and its baseline rises by one sigma
=================  ================================================================

``shear``, ``translation`` and ``scale`` act on the signal with its own shear ramp
removed (each signal's coefficient is known from the generator) and put back after, so
a circular shift does not wrap the ramp into a jump and a dilation does not flatten it.
Random corruptions (``RANDOM``: the two noises and the sign of the shear) draw from
``numpy.random.default_rng([corruption_seed, crc32(name)])``; the others ignore
``corruption_seed``. Corrupted sets are cached with :func:`bnbench.cache.cached_arrays`
(atomic, checksummed; a damaged file is regenerated, never read) under a key that holds
``VERSION``, which changes whenever a definition above does, and the versions of
mnist1d, NumPy and SciPy with mnist1d's generator arguments
(:func:`bnbench.cache.generator_key`).
"""

import zlib
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter1d

from . import data

__all__ = ["CORRUPTIONS", "HELDOUT", "RANDOM", "SEVERITIES", "TestSet", "corrupted_test_set",
           "VERSION"]  # fmt: skip

#: corruption name -> one-line description (details in the module docstring's table)
CORRUPTIONS = {
    "gaussian_noise": "i.i.d. Gaussian noise, std 0.2*s of the signal's own std (s=5: SNR 0 dB)",
    "correlated_noise": "smooth noise (Gaussian kernel, std 2 samples), std 0.2*s of the signal's own std",
    "shear": "extra linear ramp of random sign, end-to-end rise 0.075*s raw (s=5: the generator's largest shear)",
    "translation": "circular shift right by 4*s samples (s=5: half the signal length)",
    "scale": "time dilation by 1 + 0.1*s about the centre (s=5: 1.5x, the training digit-width range)",
    "gain_offset": "gain 1 - 0.1*s about the mean, offset +0.2*s clean stds (s=5: half amplitude, +1 std)",
}  # fmt: skip
#: corruptions held out for choosing test-time hyperparameters (the test-streams study
#: scores the others): one noise and one geometric corruption, fixed before any result
HELDOUT = ("correlated_noise", "shear")
#: the corruptions that depend on ``corruption_seed``
RANDOM = frozenset({"gaussian_noise", "correlated_noise", "shear"})
SEVERITIES = range(0, 6)
#: part of every cache key; bump it when a corruption's definition changes
VERSION = 1

_NOISE_STEP = 0.2  # noise std per severity, in units of the signal's own std
_SMOOTHING = 2.0  # correlated noise: std of the Gaussian kernel, in samples
_SHEAR_STEP = 0.075  # end-to-end ramp per severity, raw units (0.375 = mnist1d shear_scale / 2)
_SHIFT_STEP = 4  # samples per severity
_DILATION_STEP = 0.1
_GAIN_STEP, _OFFSET_STEP = 0.1, 0.2  # offset in units of sigma


class TestSet(NamedTuple):
    """A test set: ``x`` ``(N, 40)`` float32 standardized signals, ``y`` ``(N,)`` int64."""

    x: np.ndarray
    y: np.ndarray


def _check(corruption, severity, num_samples, seed, corruption_seed):
    if not isinstance(corruption, str) or corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {sorted(CORRUPTIONS)}, got {corruption!r}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or severity not in SEVERITIES
    ):
        raise ValueError(
            f"severity must be an integer in {SEVERITIES.start}..{SEVERITIES.stop - 1}, "
            f"got {severity!r}"
        )
    data.check_num_samples(num_samples)
    data.check_seed(seed, "seed")
    data.check_seed(corruption_seed, "corruption_seed")


def _smooth_noise(rng, shape):
    """Stationary Gaussian noise smoothed by a Gaussian kernel, unit variance per sample."""
    radius = int(4.0 * _SMOOTHING + 0.5)  # gaussian_filter1d's default truncation
    n, length = shape
    white = rng.standard_normal((n, length + 2 * radius))
    smooth = gaussian_filter1d(white, _SMOOTHING, axis=1, mode="constant")[:, radius:-radius]
    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    kernel = gaussian_filter1d(delta, _SMOOTHING, mode="constant")
    return smooth / np.sqrt(np.sum(kernel**2))


def _dilate(x, factor):
    """``x(c + (t - c) / factor)`` at t = 0..L-1, c the centre, linear interpolation."""
    length = x.shape[1]
    centre = (length - 1) / 2
    pos = centre + (np.arange(length) - centre) / factor
    lo = np.minimum(np.floor(pos).astype(np.int64), length - 2)
    w = pos - lo
    return x[:, lo] * (1 - w) + x[:, lo + 1] * w


def _corrupt(raw, corruption, severity, corruption_seed):
    """The raw test signals of ``raw`` (a :class:`~bnbench.data.RawTest`) corrupted, float64."""
    x, s = raw.x, severity
    n, length = x.shape
    rng = np.random.default_rng([corruption_seed, zlib.crc32(corruption.encode())])
    ramp = np.linspace(-0.5, 0.5, length)
    own_ramp = raw.shear[:, None] * ramp  # the generator subtracted this
    if corruption == "gaussian_noise":
        noise = rng.standard_normal((n, length))
        return x + _NOISE_STEP * s * x.std(axis=1, keepdims=True) * noise
    if corruption == "correlated_noise":
        noise = _smooth_noise(rng, (n, length))
        return x + _NOISE_STEP * s * x.std(axis=1, keepdims=True) * noise
    if corruption == "shear":
        sign = rng.choice([-1.0, 1.0], size=(n, 1))
        return x - sign * _SHEAR_STEP * s * ramp
    if corruption == "translation":
        return np.roll(x + own_ramp, _SHIFT_STEP * s, axis=1) - own_ramp
    if corruption == "scale":
        return _dilate(x + own_ramp, 1 + _DILATION_STEP * s) - own_ramp
    if corruption == "gain_offset":
        gain, offset = 1 - _GAIN_STEP * s, _OFFSET_STEP * s
        return raw.mean + gain * (x - raw.mean) + offset * raw.std
    raise AssertionError(corruption)  # unreachable: names are checked first


def corrupted_test_set(corruption, severity, num_samples=5000, seed=42, corruption_seed=0):
    """The MNIST-1D test set of ``bnbench.data.mnist1d(num_samples, seed)`` under
    ``corruption`` (a key of :data:`CORRUPTIONS`) at ``severity`` (an integer 0-5), as a
    :class:`TestSet` ``(x, y)``: ``x`` float32 ``(num_samples // 5, 40)``, ``y`` int64,
    the clean set's labels in its order.

    Severity 0 is the clean test set itself, bit for bit, for every corruption. The
    result is a deterministic function of the arguments; ``corruption_seed`` (an integer
    in [0, 2**32)) picks the random draws of the corruptions in :data:`RANDOM`.
    Raises ``ValueError`` naming the argument for an unknown corruption, a severity that
    is not an integer in 0..5, or a seed that is not an integer in [0, 2**32).
    """
    _check(corruption, severity, num_samples, seed, corruption_seed)
    seed, corruption_seed, severity = int(seed), int(corruption_seed), int(severity)
    if severity == 0:
        clean = data.mnist1d(num_samples, seed)
        return TestSet(clean.x_test, clean.y_test)

    def make():
        raw = data.mnist1d_raw_test(num_samples, seed)
        x = raw.standardize(_corrupt(raw, corruption, severity, corruption_seed))
        return {"x": np.ascontiguousarray(x), "y": raw.y}

    key = (
        f"mnist1d-c-v{VERSION}-{corruption}-{severity}-n{num_samples}-s{seed}"
        f"-c{corruption_seed}-g{data.mnist1d_key()}"
    )
    arrays = data.cached_arrays(key, make, ("x", "y"))
    return TestSet(arrays["x"], arrays["y"])
