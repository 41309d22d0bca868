"""Framework conventions against reference EMAs written from each framework's update rule,
and against a real torch.nn.BatchNorm1d."""

import itertools
import math

import numpy as np
import pytest

from bnbench import conventions as cv

REQUIRED = ("pytorch", "keras3", "tf_keras2", "flax_linen", "flax_nnx", "haiku", "mlx")
NAMES = sorted(cv.FRAMEWORKS)


# Reference EMAs, one per update rule as the sources write it (tests/ must not read the
# table to build them). ``w`` is the weight of the new batch; each returns the state under
# the framework's own key names.
def batch_stats(x, ddof):
    axes = (0, *range(2, x.ndim))
    return x.mean(axes), x.var(axes, ddof=ddof)


def torch_rule(batches, m, ddof):  # PyTorch, MLX: r <- (1 - m) r + m * stat, from 0 / 1
    mean, var = np.zeros(batches[0].shape[1]), np.ones(batches[0].shape[1])
    for x in batches:
        bm, bv = batch_stats(x, ddof)
        mean, var = (1 - m) * mean + m * bm, (1 - m) * var + m * bv
    return mean, var


def keras_rule(batches, momentum, ddof):  # Keras, Flax: r <- m r + (1 - m) stat, from 0 / 1
    mean, var = np.zeros(batches[0].shape[1]), np.ones(batches[0].shape[1])
    for x in batches:
        bm, bv = batch_stats(x, ddof)
        mean = mean * momentum + bm * (1 - momentum)
        var = var * momentum + bv * (1 - momentum)
    return mean, var


def haiku_rule(batches, decay):  # hidden from 0, average = hidden / (1 - decay**counter)
    hidden = np.zeros((2, batches[0].shape[1]))
    for counter, x in enumerate(batches, start=1):
        bm = x.mean((0, 2))
        bv = (x**2).mean((0, 2)) - bm**2  # mean_of_squares - square(mean)
        hidden = hidden * decay + np.stack([bm, bv]) * (1 - decay)
        average = hidden / (1 - decay**counter)
    return average[0], average[1]


def reference(name, batches, w):
    """(state, momentum as that framework's argument) after training on ``batches``."""
    keys = ("running_mean", "running_var")
    if name in ("pytorch", "mlx", "mlx_pre_0_32_1"):
        stats, arg = torch_rule(batches, w, ddof=0 if name == "mlx_pre_0_32_1" else 1), w
    elif name == "haiku":
        stats, arg, keys = (
            haiku_rule(batches, 1 - w),
            1 - w,
            ("mean_ema/average", "var_ema/average"),
        )
    else:
        ddof = 1 if name == "tf_keras2" else 0
        stats, arg = keras_rule(batches, 1 - w, ddof), 1 - w
        keys = ("mean", "var") if name.startswith("flax") else ("moving_mean", "moving_variance")
    return dict(zip(keys, stats, strict=True)), arg


@pytest.fixture
def batches(rng):
    # (N, C, L) batches with a channel-dependent scale: count = N * L = 6 values per channel
    return [rng.normal(1.5, [[0.5], [2.0], [1.0]], (3, 3, 2)) for _ in range(12)]


def test_table_covers_the_frameworks_with_sources():
    assert set(REQUIRED) <= set(cv.FRAMEWORKS)
    for name, c in cv.FRAMEWORKS.items():
        assert c.name == name and c.sources and all(isinstance(s, str) for s in c.sources)
        assert c.momentum_weights in ("new", "old") and c.running_var in ("biased", "unbiased")
        assert c.default_eps > 0 and (c.default_momentum is None or 0 < c.default_momentum < 1)
    assert cv.FRAMEWORKS["keras3"].default_eps == 1e-3 and cv.FRAMEWORKS["haiku"].debiased
    with pytest.raises(AttributeError):
        cv.FRAMEWORKS["pytorch"].default_eps = 1.0


def test_keras_099_is_pytorch_001():
    assert cv.convert_momentum(0.99, "keras3", "pytorch") == pytest.approx(0.01, abs=1e-15)
    assert cv.convert_momentum(0.01, "pytorch", "keras3") == pytest.approx(0.99, abs=1e-15)
    assert cv.convert_momentum(0.1, "pytorch", "mlx") == 0.1
    assert cv.convert_momentum(0.9, "haiku", "flax_nnx") == 0.9
    assert cv.batch_weight(0.99, "flax_linen") == pytest.approx(0.01)


@pytest.mark.parametrize("value", [0.001, 0.1, 0.5, 0.9, 0.999])
def test_momentum_round_trips(value):
    for a, b in itertools.permutations(NAMES, 2):
        there = cv.convert_momentum(value, a, b)
        assert 0 < there < 1
        assert cv.convert_momentum(there, b, a) == pytest.approx(value, abs=1e-15)


def test_misread_momentum():
    # PyTorch's 0.1 passed to Keras weighs the new batch 0.9: PyTorch momentum 0.9
    assert cv.misread_momentum(0.1, "pytorch", "keras3") == pytest.approx(0.9)
    assert cv.misread_momentum(0.99, "keras3", "pytorch") == pytest.approx(0.01)
    assert cv.misread_momentum(0.3, "keras3", "haiku") == 0.3  # same convention: no harm


def test_bessel_factor():
    assert cv.bessel_factor(5) == 1.25
    assert cv.bessel_factor(np.int64(2)) == 2.0
    for bad in (1, 0, 2.0, True, None):
        with pytest.raises(ValueError, match="count"):
            cv.bessel_factor(bad)


@pytest.mark.parametrize("source,target", list(itertools.permutations(NAMES, 2)))
def test_converted_state_is_what_the_target_would_have_stored(batches, source, target):
    w = 0.3
    src_state, src_momentum = reference(source, batches, w)
    tgt_state, _ = reference(target, batches, w)
    got = cv.convert_running_stats(
        src_state, source, target, count=6, momentum=src_momentum, steps=len(batches)
    )
    assert set(got) == set(tgt_state)
    for key in tgt_state:
        np.testing.assert_allclose(got[key], tgt_state[key], rtol=1e-12, atol=1e-14)
    back = cv.convert_running_stats(
        got,
        target,
        source,
        count=6,
        momentum=cv.convert_momentum(src_momentum, source, target),
        steps=len(batches),
    )
    for key in src_state:
        np.testing.assert_allclose(back[key], src_state[key], rtol=1e-12, atol=1e-14)


def test_without_steps_the_initial_value_is_taken_as_forgotten(rng):
    data = [rng.normal(0.0, 2.0, (4, 2, 3)) for _ in range(60)]
    w = 0.2
    for source, target in [("pytorch", "keras3"), ("haiku", "pytorch"), ("mlx", "haiku")]:
        src_state, _ = reference(source, data, w)
        tgt_state, _ = reference(target, data, w)
        got = cv.convert_running_stats(src_state, source, target, count=12)
        # the error is of the order of the initial values' remaining weight (1 - w)**steps
        bound = 2 * (1 - w) ** len(data) * 4.0
        for key in tgt_state:
            np.testing.assert_allclose(got[key], tgt_state[key], rtol=0, atol=bound)


def test_no_count_needed_when_the_conventions_agree(batches):
    state, m = reference("pytorch", batches, 0.1)
    got = cv.convert_running_stats(state, "pytorch", "tf_keras2", momentum=m, steps=12)
    np.testing.assert_allclose(
        got["moving_variance"],
        reference("tf_keras2", batches, 0.1)[0]["moving_variance"],
        rtol=1e-12,
    )


def test_torch_batchnorm_running_var_converted_to_biased(rng):
    torch = pytest.importorskip("torch")
    N, C, L, momentum = 5, 4, 3, 0.1
    bn = torch.nn.BatchNorm1d(C, momentum=momentum).double().train()
    data = [rng.normal(0.5, 1.0 + np.arange(C)[:, None], (N, C, L)) for _ in range(20)]
    with torch.no_grad():
        for x in data:
            bn(torch.from_numpy(x))
    state = {k: v.numpy() for k, v in bn.state_dict().items()}  # with weight, bias, steps
    steps = int(bn.num_batches_tracked)
    got = cv.convert_running_stats(
        state, "pytorch", "flax_linen", count=N * L, momentum=momentum, steps=steps
    )
    # an EMA of biased batch variances in PyTorch's own form: from 1, weight m per batch
    mean, var = np.zeros(C), np.ones(C)
    for x in data:
        mean = (1 - momentum) * mean + momentum * x.mean((0, 2))
        var = (1 - momentum) * var + momentum * x.var((0, 2))
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(got["var"], var, rtol=1e-12)
    # and the unconverted buffer is the unbiased one, as the table says
    assert not np.allclose(state["running_var"], var, rtol=1e-3)


def test_preserve_outputs_copies_the_values_and_the_layer_computes_the_same(rng):
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm1d(3).double().train()
    with torch.no_grad():
        for _ in range(5):
            bn(torch.from_numpy(rng.normal(2.0, 3.0, (8, 3))))
    state = {k: v.numpy() for k, v in bn.state_dict().items()}
    ported = cv.convert_running_stats(state, "pytorch", "keras3", preserve="outputs")
    np.testing.assert_array_equal(ported["moving_variance"], state["running_var"])
    eps = cv.convert_eps(bn.eps, "pytorch", "keras3")
    x = rng.normal(2.0, 3.0, (4, 3))
    keras_like = (x - ported["moving_mean"]) / np.sqrt(ported["moving_variance"] + eps)
    with torch.no_grad():
        expected = bn.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(keras_like, expected, rtol=1e-12)  # weight 1, bias 0


def test_haiku_shapes_are_kept():
    state = {"running_mean": np.zeros((1, 1, 1, 4)), "running_var": np.ones((1, 1, 1, 4))}
    got = cv.convert_running_stats(state, "pytorch", "haiku", count=10, momentum=0.1, steps=3)
    assert got["var_ema/average"].shape == (1, 1, 1, 4)


def test_eps():
    assert cv.convert_eps(1e-5, "pytorch", "keras3") == 1e-5
    assert cv.convert_eps(1e-3, "keras3", "haiku") == 1e-3
    assert cv.convert_eps(1e-6, "tf_keras2", "pytorch") == 1.001e-5  # fused floor applied
    with pytest.warns(UserWarning, match="tf_keras2"):
        assert cv.convert_eps(1e-6, "pytorch", "tf_keras2") == 1e-6
    for bad in (0.0, -1e-5, math.nan, math.inf, "1e-5", True):
        with pytest.raises(ValueError, match="eps"):
            cv.convert_eps(bad, "pytorch", "keras3")


def test_markdown_table():
    text = cv.markdown_table()
    assert text.startswith("| framework |") and text.count("\n") == len(NAMES) + 2
    for name in NAMES:
        assert f"`{name}`" in text
    assert "haiku/_src/moving_averages.py" in cv.markdown_table(sources=True)


def test_unknown_framework_raises_naming_the_argument():
    with pytest.raises(ValueError, match=r"framework must be one of .*pytorch"):
        cv.check_framework("torch")
    with pytest.raises(ValueError, match="source must be one of"):
        cv.convert_momentum(0.1, "tensorflow", "pytorch")
    with pytest.raises(ValueError, match="target must be one of"):
        cv.convert_running_stats({}, "pytorch", "jax")
    with pytest.raises(ValueError, match="read_as must be one of"):
        cv.misread_momentum(0.1, "pytorch", None)
    with pytest.raises(ValueError, match="target must be one of"):
        cv.convert_eps(1e-5, "pytorch", "Keras3")


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, math.nan, True, "0.1", None])
def test_bad_momentum_raises(bad):
    with pytest.raises(ValueError, match="value must be a momentum in"):
        cv.convert_momentum(bad, "keras3", "pytorch")
    with pytest.raises(ValueError, match="value must be a momentum in"):
        cv.misread_momentum(bad, "keras3", "pytorch")


def test_bad_state_raises_naming_the_argument():
    good = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
    convert = cv.convert_running_stats
    with pytest.raises(ValueError, match="state must have key 'running_var'"):
        convert({"running_mean": np.zeros(3)}, "pytorch", "mlx")
    with pytest.raises(ValueError, match="state must have key 'moving_mean'"):
        convert(good, "keras3", "pytorch")  # PyTorch names given for a Keras source
    with pytest.raises(ValueError, match="one shape"):
        convert({"running_mean": np.zeros(3), "running_var": np.ones(4)}, "pytorch", "mlx")
    with pytest.raises(ValueError, match="finite"):
        convert({**good, "running_var": np.array([1.0, np.nan, 1.0])}, "pytorch", "mlx")
    with pytest.raises(ValueError, match=">= 0"):
        convert({**good, "running_var": -np.ones(3)}, "pytorch", "mlx")
    with pytest.raises(ValueError, match="state must be a mapping"):
        convert([np.zeros(3), np.ones(3)], "pytorch", "mlx")
    with pytest.raises(ValueError, match="preserve"):
        convert(good, "pytorch", "mlx", preserve="names")


def test_missing_count_momentum_or_steps_raises_by_name():
    good = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
    convert = cv.convert_running_stats
    with pytest.raises(ValueError, match="count .* is needed: pytorch stores the unbiased"):
        convert(good, "pytorch", "keras3")
    with pytest.raises(ValueError, match="count must be an integer >= 2"):
        convert(good, "pytorch", "keras3", count=1)
    with pytest.raises(ValueError, match="momentum must be given with steps"):
        convert(good, "pytorch", "mlx", steps=3)
    with pytest.raises(ValueError, match="steps must be given with momentum"):
        convert(good, "pytorch", "mlx", momentum=0.1)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        convert(good, "pytorch", "mlx", momentum=0.1, steps=-1)
    with pytest.raises(ValueError, match="momentum must be a momentum in"):
        convert(good, "pytorch", "mlx", momentum=1.1, steps=3)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        convert(good, "pytorch", "haiku", count=4, momentum=0.1, steps=0)
