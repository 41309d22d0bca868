"""bnbench._mnist_c_ops, the image operations behind MNIST-C, against hand computations:
the affine warps at angles and shifts where the exact answer is known (identity, a
whole-pixel shift, a quarter turn), the pixelwise corruptions by their formulas, Poisson
shot noise by its mean, and the Canny edges of a step."""

import numpy as np
import pytest

from bnbench import _mnist_c_ops as ops


@pytest.fixture
def images():
    return np.random.default_rng(3).random((6, 28, 28))


def signs(seed, shape):
    """The random signs the ops draw first from ``default_rng(seed)``."""
    return np.where(np.random.default_rng(seed).random(shape) < 0.5, -1.0, 1.0)


def test_identity_warps_change_nothing(images):
    eye = np.broadcast_to(np.eye(2, 3), (6, 2, 3))
    np.testing.assert_allclose(ops.warp(images, eye), images, atol=1e-12)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(ops.rotate(images, 0.0, rng), images, atol=1e-12)
    np.testing.assert_allclose(ops.shear(images, 0.0, rng), images, atol=1e-12)
    np.testing.assert_allclose(ops.scale(images, 1.0, rng), images, atol=1e-12)


def test_translate_is_a_whole_pixel_shift_with_zeros_behind(images):
    out = ops.translate(images, 3, np.random.default_rng(5))
    t = 3 * signs(5, (6, 2)).astype(int)  # (column, row) offsets of the inverse map
    for n in range(6):
        want = np.zeros((28, 28))
        for r in range(28):
            for c in range(28):
                rr, cc = r + t[n, 1], c + t[n, 0]
                if 0 <= rr < 28 and 0 <= cc < 28:
                    want[r, c] = images[n, rr, cc]
        np.testing.assert_allclose(out[n], want, atol=1e-12)


def test_a_quarter_turn_about_the_centre_is_rot90(images):
    out = ops.rotate(images, np.pi / 2, np.random.default_rng(2))
    for n, s in enumerate(signs(2, 6)):
        np.testing.assert_allclose(out[n], np.rot90(images[n], int(s)), atol=1e-9)


def test_pixelwise_corruptions_by_their_formulas(images):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(ops.brightness(images, 0.3, rng), images + 0.3)
    striped = ops.stripe(images, 4, rng)
    np.testing.assert_array_equal(striped[:, :, :4], 1 - images[:, :, :4])
    np.testing.assert_array_equal(striped[:, :, -4:], 1 - images[:, :, -4:])
    np.testing.assert_array_equal(striped[:, :, 4:-4], images[:, :, 4:-4])
    np.testing.assert_array_equal(ops.canny_edges(images, 0.0, rng), images)
    edges = ops.canny(images).astype(np.float64)
    np.testing.assert_allclose(ops.canny_edges(images, 0.25, rng), 0.75 * images + 0.25 * edges)


def test_impulse_noise_flips_nested_sets_to_black_or_white(images):
    low = ops.impulse_noise(images, 0.1, np.random.default_rng(1))
    high = ops.impulse_noise(images, 0.4, np.random.default_rng(1))
    flipped_low, flipped_high = low != images, high != images
    assert np.isin(low[flipped_low], (0.0, 1.0)).all()
    assert (flipped_high | ~flipped_low).all()  # the same seed flips a superset
    assert 0.08 < flipped_low.mean() < 0.12 and 0.37 < flipped_high.mean() < 0.43
    np.testing.assert_array_equal(ops.impulse_noise(images, 0.0, np.random.default_rng(1)), images)


def test_shot_noise_counts_photons_with_the_pixels_mean():
    x = np.full((10, 28, 28), 0.5)
    x[:, :, :2] = 0.0  # no light, no photons
    out = ops.shot_noise(x, 60, np.random.default_rng(4))
    assert (out[:, :, :2] == 0).all()
    counts = out * 60
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)  # whole photons
    lit = out[:, :, 2:]
    assert abs(lit.mean() - 0.5) < 0.01  # Poisson mean 30 photons of 60
    assert abs(lit.var() - 30 / 60**2) < 0.1 * 30 / 60**2  # Poisson variance


def test_dotted_line_adds_dashes_only():
    x = np.zeros((8, 28, 28))
    out = ops.dotted_line(x, 1.0, np.random.default_rng(6))
    dashes = (np.arange(28) // 2) % 2 == 1
    assert (out[:, :, ~dashes] == 0).all() and (out[:, :, dashes] > 0).any(axis=(1, 2)).all()
    assert out.max() <= 1.0
    np.testing.assert_array_equal(ops.dotted_line(x, 0.0, np.random.default_rng(6)), x)


def test_canny_finds_a_step_edge_and_nothing_in_a_flat_image():
    step = np.zeros((2, 28, 28))
    step[:, :, 14:] = 1.0
    edges = ops.canny(step)
    assert edges.dtype == bool
    cols = np.nonzero(edges[0].any(axis=0))[0]
    assert set(cols) <= {13, 14} and len(cols) >= 1
    assert edges[0, 1:-1, cols].all()  # the whole edge inside the outer ring
    assert not edges[:, [0, -1], :].any() and not edges[:, :, [0, -1]].any()
    assert not ops.canny(np.full((1, 28, 28), 0.7)).any()
