"""MNIST-C: corrupted MNIST test sets, severities 0-5."""

import numpy as np
import pytest

from bnbench import _mnist_c_ops as ops
from bnbench import mnist, mnist_c

ALL = sorted(mnist_c.CORRUPTIONS)
SUBSET = 200  # images for the tests that run every severity through corrupt_images
#: MNIST-C's own parameter for each corruption, from google-research/mnist-c's
#: corruptions.py (each function's default severity); the parameterless ones at 1
MNIST_C = {
    "shot_noise": 3,
    "impulse_noise": 0.17,
    "glass_blur": (0.7, 1, 2),
    "motion_blur": (10, 3),
    "shear": 0.4,
    "scale": 1 / 0.7,
    "rotate": 0.4,
    "brightness": 0.5,
    "translate": 3,
    "stripe": 7,
    "fog": (3.0, 1.4),
    "spatter": (0.65, 0.3, 1, 0.65, 1.5),
    "dotted_line": 1,
    "zigzag": 1,
    "canny_edges": 1,
}
#: corruptions that move every pixel monotonically away from the clean image with severity
PIXELWISE = {"impulse_noise", "brightness", "stripe", "fog", "spatter", "dotted_line",
             "zigzag", "canny_edges"}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One cache directory for the module: each set is generated once."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNBENCH_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def raw():
    return mnist.mnist_raw_test(0)


@pytest.fixture(scope="module")
def clean():
    return mnist.mnist(0)


@pytest.fixture(scope="module")
def severities(raw):
    """Every corruption at every severity on the first SUBSET raw test images."""
    x = raw.x[:SUBSET]
    return {(c, s): mnist_c.corrupt_images(x, c, s) for c in ALL for s in mnist_c.SEVERITIES}


def test_table_names_every_corruption_and_mnist_c_parameter():
    assert set(mnist_c.CORRUPTIONS) == set(MNIST_C)  # all 15 of MNIST-C
    assert list(mnist_c.SEVERITIES) == [0, 1, 2, 3, 4, 5]
    assert mnist_c.RANDOM < set(mnist_c.CORRUPTIONS)
    assert set(mnist_c.PARAMETERS) == set(mnist_c.CORRUPTIONS) == set(mnist_c.MNIST_C_SEVERITY)
    for name in mnist_c.CORRUPTIONS:
        assert name in mnist_c.__doc__  # each one is in the documented table
        assert len(mnist_c.PARAMETERS[name]) == 5
        published = mnist_c.PARAMETERS[name][mnist_c.MNIST_C_SEVERITY[name] - 1]
        assert np.allclose(published, MNIST_C[name]), name


@pytest.mark.parametrize("corruption", ALL)
def test_every_severity_has_the_right_shape_and_range(corruption, severities, raw):
    for s in mnist_c.SEVERITIES:
        y = severities[corruption, s]
        assert y.shape == (SUBSET, 28, 28) and y.dtype == np.float64
        assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 255
        assert np.array_equal(y, np.rint(y))  # 8-bit images, like MNIST-C's files
    assert severities[corruption, 0].tobytes() == raw.x[:SUBSET].tobytes()
    assert not np.array_equal(severities[corruption, 1], raw.x[:SUBSET])


@pytest.mark.parametrize("corruption", ALL)
def test_distance_from_clean_grows_with_severity(corruption, severities, raw):
    x = raw.x[:SUBSET]
    d = [np.mean((severities[corruption, s] - x) ** 2) for s in mnist_c.SEVERITIES]
    assert d[0] == 0.0
    assert all(a < b for a, b in zip(d, d[1:], strict=False)), d
    if corruption in PIXELWISE:
        for s in range(1, 6):
            near, far = severities[corruption, s - 1], severities[corruption, s]
            assert (np.abs(far - x) >= np.abs(near - x)).all(), s


@pytest.mark.parametrize("corruption", ALL)
def test_public_set_is_the_standardized_corruption(corruption, raw, clean):
    x, y = mnist_c.corrupted_test_set(corruption, 3)
    assert x.shape == (1000, 784) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.isfinite(x).all() and y.dtype == np.int64
    assert y.tobytes() == clean.y_test.tobytes()
    assert mnist_c.corrupted_test_set(corruption, 3).x.tobytes() == x.tobytes()  # cached
    # computed again from scratch: the same bytes, standardized with the clean constants
    images = mnist_c.corrupt_images(raw.x, corruption, 3)
    assert x.tobytes() == raw.standardize(images).tobytes()
    pixels = x.astype(np.float64) * raw.std + raw.mean
    np.testing.assert_allclose(pixels, images.reshape(1000, 784), atol=1e-3)


def test_a_cleared_or_damaged_cache_is_regenerated(cache):
    a = mnist_c.corrupted_test_set("shot_noise", 2)
    (path,) = cache.glob(f"mnist-c-v{mnist_c.VERSION}-shot_noise-2-*")
    path.unlink()
    assert mnist_c.corrupted_test_set("shot_noise", 2).x.tobytes() == a.x.tobytes()
    path.write_bytes(b"not an npz file")
    assert mnist_c.corrupted_test_set("shot_noise", 2).x.tobytes() == a.x.tobytes()
    other = mnist_c.corrupted_test_set("shot_noise", 2, seed=1)  # another split
    assert not np.array_equal(other.y, a.y)
    np.testing.assert_array_equal(other.y, mnist.mnist(1).y_test)


@pytest.mark.parametrize("corruption", ALL)
def test_severity_zero_is_the_clean_test_set_bit_for_bit(corruption, clean):
    for severity in (0, np.int64(0)):
        x, y = mnist_c.corrupted_test_set(corruption, severity)
        assert x.dtype == np.float32 and x.tobytes() == clean.x_test.tobytes()
        assert y.tobytes() == clean.y_test.tobytes()


@pytest.mark.parametrize("corruption", ALL)
def test_corruption_seed_matters_only_for_random_corruptions(corruption, raw, severities):
    x = raw.x[:SUBSET]
    again = mnist_c.corrupt_images(x, corruption, 3)
    assert again.tobytes() == severities[corruption, 3].tobytes()
    other = mnist_c.corrupt_images(x, corruption, 3, corruption_seed=1)
    assert np.array_equal(other, again) == (corruption not in mnist_c.RANDOM)


@pytest.mark.parametrize("corruption", ["dotted_line", "zigzag", "impulse_noise", "spatter"])
def test_the_same_draws_at_every_severity(corruption, severities, raw):
    """Only the amplitude changes: where the corruption touches the image grows with
    severity (nested; the same line, the same flipped pixels, the same blobs)."""
    x = raw.x[:SUBSET]
    touched = [severities[corruption, s] != x for s in range(1, 6)]
    assert touched[0].any()
    for near, far in zip(touched, touched[1:], strict=False):
        assert not (near & ~far).any()


def test_warps_move_the_digit_the_way_the_table_says(raw):
    x = raw.x[:SUBSET]
    mass = x.sum(axis=(1, 2))
    rows, cols = np.arange(28)[None, :, None], np.arange(28)[None, None, :]

    def spread(y):  # mean distance of the ink from the centre (13.5, 13.5)
        r = np.sqrt((rows - 13.5) ** 2 + (cols - 13.5) ** 2)
        return (y * r).sum(axis=(1, 2)) / y.sum(axis=(1, 2))

    shrunk = mnist_c.corrupt_images(x, "scale", 5)  # to half the size
    np.testing.assert_allclose(spread(shrunk) / spread(x), 0.5, atol=0.08)
    np.testing.assert_allclose(shrunk.sum(axis=(1, 2)) / mass, 0.25, atol=0.05)
    moved = mnist_c.corrupt_images(x, "translate", 2)  # 2 pixels on each axis
    for axis in (rows, cols):
        com = [(y * axis).sum(axis=(1, 2)) / y.sum(axis=(1, 2)) for y in (x, moved)]
        assert np.mean(np.isclose(np.abs(com[1] - com[0]), 2.0, atol=0.1)) > 0.95


def noisy(total, wibble, uniforms):
    """MNIST-C's ``wibbledmean``: the mean of four plus wibble * U(-wibble, wibble)."""
    u = np.array([next(uniforms) for _ in range(total.size)]).reshape(total.shape)
    return total / 4 + wibble**2 * u


def test_plasma_kernel_matches_a_numpy_diamond_square():
    """The compiled fractal against MNIST-C's array formulation (rolls), same uniforms."""
    size, decay, n = 16, 1.5, 3
    codes = np.random.default_rng(5).integers(0, 2**16, (n, size * size - 1), dtype=np.uint16)
    out = np.empty((n, 8, 8))
    ops._diamond_square(codes, decay, size, out)
    for i in range(n):
        u = iter((codes[i] + 0.5) / 32768.0 - 1.0)
        m, step, wibble = np.zeros((size, size)), size, 100.0
        while step >= 2:
            h = step // 2
            c = m[::step, ::step]
            sq = c + np.roll(c, -1, axis=0)
            m[h::step, h::step] = noisy(sq + np.roll(sq, -1, axis=1), wibble, u)
            d, c = m[h::step, h::step], m[::step, ::step]
            m[::step, h::step] = noisy(d + np.roll(d, 1, 0) + c + np.roll(c, -1, 1), wibble, u)
            m[h::step, ::step] = noisy(d + np.roll(d, 1, 1) + c + np.roll(c, -1, 0), wibble, u)
            step, wibble = h, wibble / decay
        assert next(u, None) is None  # every uniform used, in order
        m = (m - m.min()) / (m.max() - m.min())
        np.testing.assert_allclose(out[i], m[:8, :8], rtol=0, atol=1e-12)


def test_poisson_inverse_cdf_has_the_poisson_distribution():
    u = np.random.default_rng(0).random(200_000)
    k = ops._poisson_quantile(u, np.full(u.shape, 2.5))
    assert k.mean() == pytest.approx(2.5, abs=0.02) and k.var() == pytest.approx(2.5, abs=0.05)
    assert np.mean(k == 0) == pytest.approx(np.exp(-2.5), abs=0.003)
    assert (ops._poisson_quantile(u[:10], np.zeros(10)) == 0).all()


def test_motion_blur_is_a_normalized_one_sided_smear():
    x = np.zeros((1, 28, 28))
    x[0, 14, 14] = 1.0
    y = ops.motion_blur(x, (10, 3.0), np.random.default_rng(0))
    assert y.sum() == pytest.approx(1.0, abs=1e-4) and y[0, 14, 14] == y.max()
    rows, cols = np.nonzero(y[0] > 1e-12)
    assert (cols <= 14).all() and len(cols) > 5  # smeared backwards along the motion
    flat = ops.motion_blur(np.full((2, 28, 28), 0.5), (15, 8.0), np.random.default_rng(0))
    np.testing.assert_allclose(flat, 0.5)


def test_canny_finds_the_outline_of_a_square():
    x = np.zeros((2, 28, 28))
    x[0, 8:20, 8:20] = 1.0
    edges = ops.canny(x)
    assert not edges[1].any()  # a blank image has no edges
    rows, cols = np.nonzero(edges[0])
    assert len(rows) > 30
    near_border = (np.minimum(np.abs(rows - 7.5), np.abs(rows - 19.5)) <= 1) | (
        np.minimum(np.abs(cols - 7.5), np.abs(cols - 19.5)) <= 1
    )
    assert near_border.all() and not edges[0, 11:17, 11:17].any()


@pytest.mark.parametrize("corruption", ["gaussian_noise", "identity", "", None, 3])
def test_unknown_corruption_is_refused(corruption):
    with pytest.raises(ValueError, match="corruption"):
        mnist_c.corrupted_test_set(corruption, 1)


@pytest.mark.parametrize("severity", [-1, 6, 2.0, True, "3", None])
def test_bad_severity_is_refused(severity):
    with pytest.raises(ValueError, match="severity"):
        mnist_c.corrupted_test_set("fog", severity)


@pytest.mark.parametrize("name", ["seed", "corruption_seed"])
@pytest.mark.parametrize("value", [-1, 2**32, 0.5, "0", None])
def test_bad_seeds_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        mnist_c.corrupted_test_set("fog", 1, **{name: value})


def test_bad_input_is_refused_before_any_computation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("computed before validating")

    monkeypatch.setattr(mnist_c.mnist, "mnist_raw_test", fail)
    monkeypatch.setattr(mnist_c.mnist, "mnist", fail)
    for kwargs in ({"corruption": "snow"}, {"severity": 9}, {"corruption_seed": -3}):
        args = {"corruption": "fog", "severity": 2} | kwargs
        with pytest.raises(ValueError):
            mnist_c.corrupted_test_set(**args)
    with pytest.raises(ValueError, match="images"):
        mnist_c.corrupt_images(np.zeros((3, 28)), "fog", 1)


def test_corruptions_hurt_a_network_trained_on_clean_digits():
    """An MLP trained for one epoch on the clean MNIST digits loses accuracy under every
    corruption at severity 5, and on average over the corruptions 5 < 3 < 0 (measured
    with 2 epochs here: every corruption's accuracy fell from severity 1 to 5, for the MLP
    and for cnn2d)."""
    from bnbench import data, metrics
    from bnbench.evaluate import population_statistics, predict
    from bnbench.train import TrainConfig, train_network

    clean = data.mnist()
    config = TrainConfig(dataset="mnist", model="mlp", epochs=1, estimators=("population",))
    model, _, _ = train_network(config, clean)
    stats = population_statistics(model, clean.x_train)
    accuracy = {
        (c, s): metrics.accuracy(predict(model, mnist_c.corrupted_test_set(c, s).x, stats),
                                 clean.y_test)
        for c in mnist_c.CORRUPTIONS for s in (0, 3, 5)
    }  # fmt: skip
    for c in mnist_c.CORRUPTIONS:
        assert accuracy[(c, 5)] < accuracy[(c, 0)], c
    mean = {s: np.mean([accuracy[(c, s)] for c in mnist_c.CORRUPTIONS]) for s in (0, 3, 5)}
    assert mean[5] < mean[3] < mean[0], mean
