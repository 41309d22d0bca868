"""TrainConfig: every field validated before any training, with a message that names the
field and what was expected."""

import pytest

from bnbench.trainconfig import TrainConfig


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("estimators", ("ema", "magic"), r"estimators must be a non-empty subset of .* 'magic'"),
        ("estimators", (), r"estimators must be a non-empty subset"),
        ("model", "resnet50", r"model must be one of \[.*'mlp', 'resnet'.*\], got 'resnet50'"),
        ("dataset", "cifar", r"dataset must be one of .* got 'cifar'"),
        ("bn_momenta", (0.1, 0.0), r"momenta must be one or more values in \(0, 1\]"),
        ("bn_momenta", (1.1,), r"momenta must be one or more values in \(0, 1\]"),
        ("batch_size", 1, r"batch_size must be an integer >= 2, got 1"),
        ("precise_samples", (0,), r"precise_samples must be integers >= 1, got \(0,\)"),
        ("precise_batch_sizes", (1,), r"precise_batch_sizes must be integers >= 2"),
        ("precise_aggregations", ("median",), r"precise_aggregations must be a non-empty subset"),
        ("epochs", 0, r"epochs must be an integer >= 1, got 0"),
        ("lr", -1.0, r"lr must be > 0"),
        ("momentum", 1.0, r"momentum \(SGD\) must be in \[0, 1\)"),
        ("test_batch_sizes", (0,), r"test_batch_sizes must be integers >= 1"),
        ("test_orders", ("reversed",), r"test_orders must be a subset of"),
        ("corruptions", ("fog",), r"corruptions must be names in \[.*'gain_offset'.*got \['fog'\]"),
        ("prior_strengths", (0,), r"prior strength N must be finite and > 0, got 0"),
        ("prior_strengths", (-4,), r"prior strength N must be finite and > 0"),
        ("adapt_samples", (1,), r"adapt_samples must be integers >= 2"),
        ("online_momenta", (0.0,), r"momenta must be one or more values in \(0, 1\]"),
        ("test_batch_sizes", ("a",), r"test_batch_sizes must be integers >= 1, got \('a',\)"),
        ("lr", "0.1", r"lr must be a number, got '0.1'"),
        ("frozen_fraction", "0.2", r"frozen_fraction must be a number"),
        ("corruptions", "gaussian_noise", r"corruptions must be a list or tuple, got 'gaussian_noise'"),
        ("estimators", "ema", r"estimators must be a list or tuple, got 'ema'"),
    ],
)  # fmt: skip
def test_bad_configuration(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_bad_severities():
    # 3.0 passed `3.0 in range(6)` and crashed after a full training
    for bad in [(6,), (-1,), (2.5,), (), (3.0,), (1, 1)]:
        with pytest.raises(ValueError, match=r"severities must be distinct integers in 0-5"):
            TrainConfig(corruptions=("gaussian_noise",), severities=bad)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"estimators": ("prior",), "prior_strengths": ()}, r"prior_strengths must not be empty"),
        ({"estimators": ("test_batch",), "test_batch_sizes": ()}, r"test_batch_sizes must not be empty: estimators \['test_batch'\]"),
        ({"estimators": ("online_ema",), "test_orders": ()}, r"test_orders must not be empty"),
        ({"corruptions": ("shear", "shear")}, r"corruptions must not repeat a name"),
    ],
)  # fmt: skip
def test_configurations_that_would_score_nothing_are_refused(fields, match):
    """Each of these used to train and then record zero evaluations of the mode (or a
    doubled one) as a successful run."""
    with pytest.raises(ValueError, match=match):
        TrainConfig(**fields)


def test_corruptions_need_mnist1d():
    with pytest.raises(ValueError, match=r"corruptions are MNIST-1D-C .* got 'gaussian_mixture'"):
        TrainConfig(dataset="gaussian_mixture", corruptions=("gaussian_noise",))
