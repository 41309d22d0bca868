"""The image operations behind :mod:`bnbench.mnist_c`, in NumPy, SciPy and Numba.

Every function takes a batch ``x`` ``(N, 28, 28)`` float64 of images in [0, 1] (MNIST-C
works on ``pixels / 255``), one severity's parameters and a ``numpy.random.Generator``,
and returns the corrupted batch, not yet clipped. Each draws the same numbers in the same
order whatever the parameters, so one seed gives the same noise, angles, signs and lines
at every severity. The definitions follow google-research/mnist-c's ``corruptions.py``
(parameters and formulas); the code is this project's own, and where MNIST-C calls
scikit-image, ImageMagick (wand) or OpenCV the operation is written out here, as the
docstrings say. Two loops that NumPy cannot vectorize (the fog's diamond-square
fractal and the motion blur's per-image line kernel) are compiled with Numba.
"""

import numba
import numpy as np
from scipy import ndimage as ndi

from . import config

H = W = 28
_CENTRE = 13.5  # MNIST-C keeps the image centre fixed under shear, rotation and scale
_ROWS = np.arange(H, dtype=np.float64)[:, None]
_COLS = np.arange(W, dtype=np.float64)[None, :]


def _uniform_signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def warp(x, matrix):
    """``out[r, c] = x[row, col]`` with ``(col, row) = A (c, r) + t`` per image (scikit-
    image's inverse map in its (x, y) = (col, row) order); ``matrix`` ``(N, 2, 3)`` is
    ``[A | t]``. Bilinear, zero outside the image, as ``skimage.transform.warp``
    (``order=1, mode='constant'``): SciPy's ``map_coordinates`` in ``grid-constant`` mode."""
    a = matrix[:, :, :, None, None]
    cols = a[:, 0, 0] * _COLS + a[:, 0, 1] * _ROWS + a[:, 0, 2]
    rows = a[:, 1, 0] * _COLS + a[:, 1, 1] * _ROWS + a[:, 1, 2]
    image = np.broadcast_to(np.arange(len(x), dtype=np.float64)[:, None, None], rows.shape)
    return ndi.map_coordinates(x, [image, rows, cols], order=1, mode="grid-constant", cval=0.0)


def _about_centre(linear):
    """``[A | t]`` with ``t`` chosen so that the centre (13.5, 13.5) maps to itself."""
    t = _CENTRE * (1.0 - linear.sum(axis=2))
    return np.concatenate([linear, t[:, :, None]], axis=2)


def shear(x, amount, rng):
    """skimage (2019) ``AffineTransform(shear=s)``, ``A = [[1, -sin s], [0, cos s]]``,
    ``s = +/- amount`` with a random sign per image."""
    s = amount * _uniform_signs(rng, len(x))
    zeros, ones = np.zeros_like(s), np.ones_like(s)
    linear = np.stack([np.stack([ones, -np.sin(s)], -1), np.stack([zeros, np.cos(s)], -1)], 1)
    return warp(x, _about_centre(linear))


def rotate(x, angle, rng):
    """Rotation by ``+/- angle`` radians (random sign per image) about the centre."""
    r = angle * _uniform_signs(rng, len(x))
    c, s = np.cos(r), np.sin(r)
    linear = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)
    return warp(x, _about_centre(linear))


def scale(x, factor, rng):
    """Inverse map scaled by ``factor`` about the centre: the digit shrinks by
    ``1 / factor``."""
    linear = np.broadcast_to(np.eye(2) * factor, (len(x), 2, 2))
    return warp(x, _about_centre(linear))


def translate(x, pixels, rng):
    """Shift by ``pixels`` along each axis, each sign random per image (a whole-pixel
    shift, so bilinear sampling is exact); zero where the image moved away."""
    t = pixels * _uniform_signs(rng, (len(x), 2))
    linear = np.broadcast_to(np.eye(2), (len(x), 2, 2))
    return warp(x, np.concatenate([linear, t[:, :, None]], axis=2))


def _poisson_quantile(u, lam):
    """The Poisson(``lam``) quantile of ``u`` (the least ``k`` with CDF(k) >= u): inverse-
    CDF sampling, so one uniform per pixel gives a count that grows with ``lam``."""
    k = np.zeros(lam.shape)
    live = lam > 0  # Poisson(0) is 0
    u, lam = u[live], lam[live]
    pmf = np.exp(-lam)
    cdf, count = pmf.copy(), np.zeros(lam.shape)
    limit = int(np.ceil(lam.max(initial=0.0) + 20.0 * np.sqrt(lam.max(initial=0.0)) + 30.0))
    for j in range(1, limit + 1):
        above = u > cdf
        if not above.any():
            break
        count += above
        pmf = pmf * lam / j
        cdf = cdf + pmf
    k[live] = count
    return k


def shot_noise(x, photons, rng):
    """``Poisson(photons * x) / photons``: a pixel of value x collects Poisson photons."""
    return _poisson_quantile(rng.random(x.shape), photons * x) / photons


def impulse_noise(x, amount, rng):
    """Salt and pepper (skimage ``random_noise(mode='s&p')``): a fraction ``amount`` of
    the pixels set to 0 or 1, with equal odds; the flipped sets are nested across
    severities."""
    u, salt = rng.random(x.shape), rng.random(x.shape) < 0.5
    out = x.copy()
    out[(u < amount) & salt] = 1.0
    out[(u < amount) & ~salt] = 0.0
    return out


GLASS_MAX_ITERATIONS = 3  # swap passes drawn (MNIST-C's most), whatever a severity uses


def glass_blur(x, params, rng):
    """Blur, 8-bit truncation, local pixel swaps, blur (ImageNet-C's glass blur).

    The blur is a Gaussian along the columns only (each column blurred vertically):
    MNIST-C calls ``skimage.filters.gaussian(x, sigma, multichannel=True)`` on a 2-D
    image, which treats its last axis as colour channels and so does not blur along it.
    Then, ``iterations`` times, for each pixel (h, w) from the bottom-right corner
    inwards (``delta < h, w <= 28 - delta``), with probability 1/2 it is swapped with
    pixel (h + dy, w + dx), dx and dy uniform integers in [-delta, delta - 1]."""
    sigma, delta, iterations = params
    n = len(x)
    coins = rng.random((GLASS_MAX_ITERATIONS, H, W, n)) < 0.5
    offsets = rng.random((GLASS_MAX_ITERATIONS, H, W, n, 2))

    def blur(a):
        return ndi.gaussian_filter1d(a, sigma, axis=1, mode="nearest", truncate=4.0)

    y = np.floor(np.clip(blur(x), 0.0, 1.0) * 255.0)  # np.uint8(...): truncation
    for it in range(iterations):
        for h in range(H - delta, delta, -1):
            for w in range(W - delta, delta, -1):
                chosen = np.flatnonzero(coins[it, h, w])
                d = np.floor(offsets[it, h, w, chosen] * (2 * delta)).astype(np.int64) - delta
                hh, ww = h + d[:, 1], w + d[:, 0]
                here = y[chosen, h, w]
                y[chosen, h, w] = y[chosen, hh, ww]
                y[chosen, hh, ww] = here
    return blur(y / 255.0)


@numba.njit(cache=config.CACHE)
def _smear(x, kernel, dr, dc, out):
    """``out[n, r, c] = sum_j kernel[j] x[n, r + dr[n, j], c + dc[n, j]]``, indices clamped
    to the image (ImageMagick's edge virtual pixels)."""
    n, rows, cols = x.shape
    for i in range(n):
        for r in range(rows):
            for c in range(cols):
                total = 0.0
                for j in range(kernel.shape[0]):
                    rr = min(max(r + dr[i, j], 0), rows - 1)
                    cc = min(max(c + dc[i, j], 0), cols - 1)
                    total += kernel[j] * x[i, rr, cc]
                out[i, r, c] = total


def motion_blur(x, params, rng):
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)``, angle uniform in
    [-45, 45) degrees per image: a one-sided kernel ``exp(-i^2 / (2 sigma^2))``,
    ``i = 0 .. 2 ceil(radius)``, normalized, whose tap ``i`` reads the pixel
    ``round(i cos a)`` columns and ``round(i sin a)`` rows away (ImageMagick's
    ``ceil(v - 0.5)``), edge pixels repeated outside the image. MNIST-C runs it through
    wand on a PNG; here it is computed directly in float64."""
    radius, sigma = params
    angle = np.deg2rad(rng.uniform(-45.0, 45.0, len(x)))
    taps = np.arange(2 * int(np.ceil(radius)) + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2.0 * sigma**2))
    kernel /= kernel.sum()
    dc = np.ceil(taps * np.cos(angle)[:, None] - 0.5).astype(np.int64)  # (N, taps)
    dr = np.ceil(taps * np.sin(angle)[:, None] - 0.5).astype(np.int64)
    out = np.zeros_like(x)
    _smear(x, kernel, dr, dc, out)
    return out


def brightness(x, amount, rng):
    """MNIST-C converts gray to RGB to HSV, adds ``amount`` to V (clipped to 1) and goes
    back; for a gray pixel (saturation 0) that is exactly ``x + amount``."""
    return x + amount


def stripe(x, width, rng):
    """The ``width`` leftmost and rightmost columns inverted (``1 - x``)."""
    out = x.copy()
    out[:, :, :width] = 1.0 - out[:, :, :width]
    out[:, :, W - width :] = 1.0 - out[:, :, W - width :]
    return out


@numba.njit(cache=config.CACHE)
def _diamond_square(codes, decay, size, out):
    """Fill ``out[i]`` with the top-left corner of map ``i`` (see :func:`_plasma`); the
    noise of map ``i`` is ``codes[i]`` (uint16, one per new point, in the order the points
    are made: per halving, the square centres, then the two kinds of diamond points, each
    row by row), mapped to U(-1, 1) as ``(code + 0.5) / 32768 - 1``."""
    m = np.zeros((size, size))
    wrap = size - 1  # size is a power of two: ``v & wrap`` is ``v % size``
    rows, cols = out.shape[1], out.shape[2]
    for i in range(codes.shape[0]):
        m[0, 0] = 0.0
        k, step, wibble = 0, size, 100.0
        while step >= 2:
            half, amp = step // 2, wibble * wibble
            for r in range(half, size, step):  # square centres: mean of 4 corners
                for c in range(half, size, step):
                    up, down = r - half, (r + half) & wrap
                    left, right = c - half, (c + half) & wrap
                    total = m[up, left] + m[down, left] + m[up, right] + m[down, right]
                    m[r, c] = total / 4.0 + amp * ((codes[i, k] + 0.5) / 32768.0 - 1.0)
                    k += 1
            for r in range(0, size, step):  # on corner rows: centres above and below
                for c in range(half, size, step):
                    total = m[(r + half) & wrap, c] + m[(r - half) & wrap, c]
                    total += m[r, c - half] + m[r, (c + half) & wrap]
                    m[r, c] = total / 4.0 + amp * ((codes[i, k] + 0.5) / 32768.0 - 1.0)
                    k += 1
            for r in range(half, size, step):  # on centre rows: centres left and right
                for c in range(0, size, step):
                    total = m[r, (c + half) & wrap] + m[r, (c - half) & wrap]
                    total += m[r - half, c] + m[(r + half) & wrap, c]
                    m[r, c] = total / 4.0 + amp * ((codes[i, k] + 0.5) / 32768.0 - 1.0)
                    k += 1
            step, wibble = half, wibble / decay
        low, high = m.min(), m.max()
        for r in range(rows):
            for c in range(cols):
                out[i, r, c] = (m[r, c] - low) / (high - low)


def _plasma(n, decay, rng, size=256):
    """``n`` diamond-square height maps of ``size x size`` on a torus (MNIST-C's
    ``plasma_fractal``), each normalized to [0, 1] over the whole map, cropped to their
    top-left 28 x 28: each new point is the mean of its four neighbours plus
    ``wibble^2 * U(-1, 1)``, ``wibble`` starting at 100 and divided by ``decay`` at each
    halving of the step. The uniforms are 16-bit (drawn as uint16 codes, which is much
    faster than doubles and far finer than the fog needs)."""
    codes = rng.integers(0, 2**16, (n, size * size - 1), dtype=np.uint16)
    out = np.empty((n, H, W))
    _diamond_square(codes, float(decay), size, out)
    return out


def fog(x, params, rng):
    """``(x + strength * plasma) * max(x) / (max(x) + strength)``, one fractal per image."""
    strength, decay = params
    peak = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * _plasma(len(x), decay, rng)) * peak / (peak + strength)


def spatter(x, params, rng):
    """Mud: ``liquid = gaussian(N(loc, scale^2), sigma)``; the mask ``liquid > threshold``
    blurred by ``sigma2`` (values below 0.8 dropped) blends in gray 63/255. Gaussians as
    skimage's defaults: isotropic, edge pixels repeated, truncated at 4 sigma."""
    loc, spread, sigma, threshold, sigma2 = params
    liquid = loc + spread * rng.standard_normal(x.shape)
    liquid = ndi.gaussian_filter(liquid, sigma, mode="nearest", truncate=4.0, axes=(1, 2))
    mask = (liquid > threshold).astype(np.float64)
    mask = ndi.gaussian_filter(mask, sigma2, mode="nearest", truncate=4.0, axes=(1, 2))
    mask[mask < 0.8] = 0.0
    return x * (1.0 - mask) + 63.0 / 255.0 * mask


def _line(c0, r0, c1, r1):
    """MNIST-C's ``line_from_points`` for a batch of segments (arrays ``(N,)``): intensity
    ``1 + log(1 - d / 2.3)`` clipped to [0, 1], ``d`` the *vertical* distance of a pixel
    from the line, kept in columns ``floor(c0) <= c < ceil(c1)``; zero if c0 == c1."""
    c0, r0, c1, r1 = (np.asarray(v, dtype=np.float64)[:, None, None] for v in (c0, r0, c1, r1))
    flat = c1 == c0
    slope = (r1 - r0) / np.where(flat, 1.0, c1 - c0)
    d = np.clip(np.abs(_ROWS - (slope * (_COLS - c0) + r0)), 0.0, 2.3 - 1e-10)
    p = np.clip(np.log(1.0 - d / 2.3) + 1.0, 0.0, 1.0)
    keep = (_COLS >= np.floor(c0)) & (_COLS < np.ceil(c1)) & ~flat
    return np.where(keep, p, 0.0)


def dotted_line(x, amplitude, rng):
    """A dashed line from (column 0, row r0) to (column 27, row r1), r0, r1 uniform in
    0..26, dashes in columns 2-3, 6-7, ..., 26 (MNIST-C's pattern), its intensity times
    ``amplitude`` added to the image."""
    r = rng.integers(0, 27, (len(x), 2))
    line = _line(np.zeros(len(x)), r[:, 0], np.full(len(x), 27.0), r[:, 1])
    dashes = (np.arange(W) // 2) % 2 == 1
    return x + amplitude * line * dashes


def _zigzag_points(r0, r1):
    """MNIST-C's zigzag vertices (columns, rows) for one image: teeth 2 long and 2 high
    along the line from (2, r0) to (25, r1), with its odd last vertex."""
    a = b = 2.0
    theta = np.arctan((r1 - r0) / 23.0)
    d = 23.0 / np.cos(theta)
    points = [(0.0, 0.0)]
    for i in range(int((d - a) // (2 * a)) + 1):
        points.append(((2 * i + 1) * a, (-1) ** i * b))
    last = (2 * a) * (d // (2 * a))
    if d != last:
        points.append((d, points[-1][1] / (2 * (d - last))))
    c, s = np.cos(theta), np.sin(theta)
    p = np.array(points).T
    return c * p[0] - s * p[1] + 2.0, s * p[0] + c * p[1] + r0


def zigzag(x, amplitude, rng):
    """A zigzag line (MNIST-C's, r0 uniform in 0..26, r1 - r0 uniform in -5..4), its
    intensity (the segments' sum) times ``amplitude`` added to the image."""
    n = len(x)
    r0 = rng.integers(0, 27, n).astype(np.float64)
    r1 = r0 + rng.integers(-5, 5, n)
    vertices = [_zigzag_points(a, b) for a, b in zip(r0, r1, strict=True)]
    longest = max(len(c) for c, _ in vertices)
    cols, rows = np.zeros((n, longest)), np.zeros((n, longest))
    for i, (c, r) in enumerate(vertices):  # pad with repeated last vertex: empty segments
        cols[i], rows[i] = (
            np.pad(c, (0, longest - len(c)), "edge"),
            np.pad(r, (0, longest - len(r)), "edge"),
        )
    total = sum(
        _line(cols[:, k], rows[:, k], cols[:, k + 1], rows[:, k + 1]) for k in range(longest - 1)
    )
    return x + amplitude * total


def _sobel(a, axis):
    """Sobel derivative of a batch along image ``axis`` (1 rows, 2 columns), smoothed
    along the other image axis only (``ndi.sobel`` would also smooth across images)."""
    other = 3 - axis
    d = ndi.correlate1d(a, [-1.0, 0.0, 1.0], axis=axis, mode="reflect")
    return ndi.correlate1d(d, [1.0, 2.0, 1.0], axis=other, mode="reflect")


def canny(x, sigma=1.0, low=0.1, high=0.2):
    """skimage's ``feature.canny`` with its defaults: Gaussian smoothing (zero outside,
    normalized by the smoothed mask), Sobel gradients, non-maximum suppression against
    the magnitude interpolated at the two neighbours along the gradient, hysteresis
    (8-connected segments of magnitude >= low that hold one >= high); the outer ring of
    pixels is never an edge. Returns a bool batch."""
    smooth = ndi.gaussian_filter(x, sigma, mode="constant", truncate=4.0, axes=(1, 2))
    bleed = ndi.gaussian_filter(np.ones((H, W)), sigma, mode="constant", truncate=4.0)
    smooth = smooth / (bleed + np.finfo(np.float64).eps)
    gr, gc = _sobel(smooth, 1), _sobel(smooth, 2)
    mag = np.hypot(gr, gc)
    ar, ac = np.abs(gr), np.abs(gc)
    steep = ar >= ac
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(steep, ac / ar, ar / ac)
    sr, sc = np.sign(gr).astype(np.int64), np.sign(gc).astype(np.int64)
    n = np.arange(len(x))[:, None, None]
    i, j = np.arange(H)[None, :, None], np.arange(W)[None, None, :]

    def along(sign):  # magnitude interpolated one step along (sign) the gradient
        di, dj = sign * sr, sign * sc
        diagonal = mag[n, np.clip(i + di, 0, H - 1), np.clip(j + dj, 0, W - 1)]
        axial = np.where(
            steep,
            mag[n, np.clip(i + di, 0, H - 1), j],
            mag[n, i, np.clip(j + dj, 0, W - 1)],
        )
        return w * diagonal + (1.0 - w) * axial

    inner = np.zeros((H, W), dtype=bool)
    inner[1:-1, 1:-1] = True
    maxima = inner & (mag > 0) & (along(1) <= mag) & (along(-1) <= mag)
    strong, weak = maxima & (mag >= high), maxima & (mag >= low)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, count = ndi.label(weak, structure=structure)
    good = np.bincount(labels.ravel(), weights=strong.ravel(), minlength=count + 1) > 0
    good[0] = False
    return good[labels]


def canny_edges(x, weight, rng):
    """``(1 - weight) x + weight * canny(x)``: at weight 1 MNIST-C's edge image."""
    return (1.0 - weight) * x + weight * canny(x)
