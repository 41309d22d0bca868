"""MNIST-1D-C: corrupted test sets, severities 0-5."""

import numpy as np
import pytest

from bnbench import cache as store
from bnbench import data, metrics, shift

N = 500  # 400 train / 100 test: small sets for everything but the accuracy test
ALL = sorted(shift.CORRUPTIONS)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One cache directory for the module: each set is generated once."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNBENCH_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def clean():
    return data.mnist1d(N)


def rms_distance(corruption, severity, clean, **kwargs):
    x = shift.corrupted_test_set(corruption, severity, N, **kwargs).x
    return float(np.sqrt(np.mean((x.astype(np.float64) - clean.x_test) ** 2)))


def test_table_names_every_corruption():
    assert set(shift.CORRUPTIONS) >= {"gaussian_noise", "correlated_noise", "shear",
                                      "scale", "translation", "gain_offset"}  # fmt: skip
    assert list(shift.SEVERITIES) == [0, 1, 2, 3, 4, 5]
    assert shift.RANDOM <= set(shift.CORRUPTIONS)
    for name in shift.CORRUPTIONS:
        assert name in shift.__doc__  # each one is in the documented table


@pytest.mark.parametrize("corruption", ALL)
def test_shape_dtype_and_labels(corruption, clean):
    for severity in shift.SEVERITIES:
        x, y = shift.corrupted_test_set(corruption, severity, N)
        assert x.shape == (100, 40) and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, clean.y_test)
        assert np.isfinite(x).all()


@pytest.mark.parametrize("corruption", ALL)
def test_severity_zero_is_the_clean_test_set_bit_for_bit(corruption, clean):
    for severity in (0, np.int64(0)):
        x, y = shift.corrupted_test_set(corruption, severity, N)
        assert x.dtype == clean.x_test.dtype and x.tobytes() == clean.x_test.tobytes()
        assert y.tobytes() == clean.y_test.tobytes()
    default = shift.corrupted_test_set(corruption, 0)  # the default size too
    assert default.x.tobytes() == data.mnist1d().x_test.tobytes()


@pytest.mark.parametrize("corruption", ALL)
def test_deterministic_and_seeded(corruption, cache):
    a = shift.corrupted_test_set(corruption, 3, N)
    b = shift.corrupted_test_set(corruption, 3, N)  # from the cache
    for f in cache.glob(f"mnist1d-c-*-{corruption}-3-*"):
        f.unlink()
    c = shift.corrupted_test_set(corruption, 3, N)  # regenerated
    assert a.x.tobytes() == b.x.tobytes() == c.x.tobytes()
    other = shift.corrupted_test_set(corruption, 3, N, corruption_seed=1)
    if corruption in shift.RANDOM:
        assert not np.array_equal(other.x, a.x)
    else:
        assert other.x.tobytes() == a.x.tobytes()
    other_data = shift.corrupted_test_set(corruption, 3, N, seed=7)
    assert not np.array_equal(other_data.x, a.x)


@pytest.mark.parametrize("corruption", sorted(set(ALL) - {"translation"}))
def test_distance_from_clean_grows_with_severity(corruption, clean):
    d = [rms_distance(corruption, s, clean) for s in shift.SEVERITIES]
    assert d[0] == 0.0
    assert all(a < b for a, b in zip(d, d[1:], strict=False)), d


def test_translation_displacement_grows_with_severity(clean):
    """The Euclidean distance of a circular shift saturates within one step (the signals
    decorrelate after a couple of samples), so for translation the distance that grows
    is the displacement itself: the lag that best aligns the corrupted signal with the
    clean one (both with their own shear ramp removed) is 4 * severity samples."""
    raw = data.mnist1d_raw_test(N)
    ramp = raw.shear[:, None] * np.linspace(-0.5, 0.5, 40) / raw.std
    base = clean.x_test + ramp
    fft = np.fft.rfft(base, axis=1)
    distances = []
    for s in shift.SEVERITIES:
        x = shift.corrupted_test_set("translation", s, N).x + ramp
        xcorr = np.fft.irfft(np.fft.rfft(x, axis=1) * np.conj(fft), n=40, axis=1)
        lag = xcorr.argmax(axis=1)
        assert np.mean(lag == 4 * s) > 0.99
        distances.append(rms_distance("translation", s, clean))
    assert distances[0] == 0.0 and min(distances[1:]) > 1.0


def test_gain_offset_survives_standardization(clean):
    """What the table says, in standardized units: z -> (1 - 0.1 s) z + 0.2 s."""
    for s in shift.SEVERITIES:
        x = shift.corrupted_test_set("gain_offset", s, N).x
        np.testing.assert_allclose(x, (1 - 0.1 * s) * clean.x_test + 0.2 * s, atol=2e-6)


def test_noise_levels_and_correlation(clean):
    raw = data.mnist1d_raw_test(N)
    own_std = raw.x.std(axis=1, keepdims=True) / raw.std  # sigma_i in standardized units
    noises = {}
    for name in ("gaussian_noise", "correlated_noise"):
        x = {s: shift.corrupted_test_set(name, s, N).x.astype(np.float64) for s in (1, 5)}
        noise = (x[5] - clean.x_test) / own_std
        assert noise.std() == pytest.approx(1.0, rel=0.05)  # std sigma_i at severity 5
        # the same draw at every severity, only scaled
        np.testing.assert_allclose(x[1] - clean.x_test, (x[5] - clean.x_test) / 5, atol=1e-5)
        noises[name] = noise
    lag1 = {k: np.corrcoef(v[:, :-1].ravel(), v[:, 1:].ravel())[0, 1] for k, v in noises.items()}
    assert abs(lag1["gaussian_noise"]) < 0.05
    assert lag1["correlated_noise"] > 0.85  # exp(-1/16) = 0.94 for a kernel of std 2


def test_shear_adds_a_ramp_of_random_sign(clean):
    raw = data.mnist1d_raw_test(N)
    ramp = np.linspace(-0.5, 0.5, 40)
    diff = shift.corrupted_test_set("shear", 5, N).x.astype(np.float64) - clean.x_test
    rise = diff[:, 0] - diff[:, -1]
    np.testing.assert_allclose(np.abs(rise), 0.375 / raw.std, rtol=1e-4)
    np.testing.assert_allclose(diff, -rise[:, None] * ramp, atol=1e-5)
    assert 0.3 < np.mean(rise > 0) < 0.7  # both signs


def test_scale_keeps_the_centre_and_stretches(clean):
    raw = data.mnist1d_raw_test(N)
    ramp = raw.shear[:, None] * np.linspace(-0.5, 0.5, 40) / raw.std
    x = shift.corrupted_test_set("scale", 5, N).x + ramp
    base = clean.x_test + ramp
    # x1.5 about the centre 19.5: output sample t reads the input at 19.5 + (t - 19.5) / 1.5
    pos = 19.5 + (np.arange(40) - 19.5) / 1.5
    expected = np.stack([np.interp(pos, np.arange(40), row) for row in base])
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert np.abs(x - base).max() > 1.0  # and it did change


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_damaged_cache_file_is_regenerated(cache, damage):
    first = shift.corrupted_test_set("gaussian_noise", 2, N, corruption_seed=5)
    (path,) = cache.glob("mnist1d-c-*-gaussian_noise-2-*-c5-*.npz")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file")
    else:  # a valid file whose arrays no longer match its checksum
        arrays = dict(np.load(path))
        arrays["x"] = arrays["x"] + 1
        np.savez(path, **arrays)
    again = shift.corrupted_test_set("gaussian_noise", 2, N, corruption_seed=5)
    assert again.x.tobytes() == first.x.tobytes()
    assert store._load(path, ("x", "y")) is not None  # rewritten whole


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corruption": "blur"}, r"corruption must be one of \[.*\], got 'blur'"),
        ({"corruption": None}, "corruption must be one of"),
        ({"severity": 6}, r"severity must be an integer in 0..5, got 6"),
        ({"severity": -1}, r"severity must be an integer in 0..5, got -1"),
        ({"severity": 2.0}, r"severity must be an integer in 0..5, got 2.0"),
        ({"severity": True}, "severity must be an integer in 0..5"),
        ({"severity": "3"}, "severity must be an integer in 0..5"),
        ({"seed": 1.5}, r"seed must be an integer in \[0, 2\*\*32\), got 1.5"),
        ({"seed": "42"}, "seed must be an integer"),
        ({"corruption_seed": -1}, r"corruption_seed must be an integer in \[0, 2\*\*32\), got -1"),
        ({"corruption_seed": 0.5}, "corruption_seed must be an integer"),
        ({"num_samples": 5}, "num_samples must be an integer >= 10"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"corruption": "shear", "severity": 1, "num_samples": N} | kwargs
    with pytest.raises(ValueError, match=message):
        shift.corrupted_test_set(**args)


def test_corruptions_hurt_a_network_trained_on_clean_data():
    """An MLP trained for one epoch on clean MNIST-1D (default size) loses accuracy as the
    severity grows: under every corruption severity 5 < 0, and on average over the
    corruptions 5 < 3 < 0."""
    from bnbench.evaluate import population_statistics, predict
    from bnbench.train import TrainConfig, train_network

    clean = data.mnist1d()
    config = TrainConfig(model="mlp", epochs=1, estimators=("population",), seed=0)
    model, _, _ = train_network(config, clean)
    stats = population_statistics(model, clean.x_train)
    accuracy = {
        (c, s): metrics.accuracy(predict(model, *shift.corrupted_test_set(c, s)[:1], stats), clean.y_test)
        for c in ALL for s in (0, 3, 5)
    }  # fmt: skip
    for c in ALL:
        assert accuracy[(c, 5)] < accuracy[(c, 0)], c
    mean = {s: np.mean([accuracy[(c, s)] for c in ALL]) for s in (0, 3, 5)}
    assert mean[5] < mean[3] < mean[0], mean
