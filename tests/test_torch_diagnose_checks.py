"""bnbench.torch._diagnose_checks: diagnose's bad inputs and bad settings, each an error
naming the argument before any long computation, the model untouched."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bnbench.torch")
nn = torch.nn

from test_torch_diagnosis import setup  # noqa: E402, F401
from test_torch_estimators import assert_untouched, snapshot  # noqa: E402

from bnbench.torch.diagnosis import diagnose  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _bad_cases(train, test):
    x, y = test[0]
    return {
        "no BN": (nn.Sequential(nn.Linear(8, 4)), train, test, "no BatchNorm layers"),
        "train shape": (None, [(x[:, :5], y)], test, "train_batches.*forward fails"),
        "test shape": (None, train, [(x[:, :5], y)], "test_batches.*forward fails"),
        "empty train": (None, [], test, "train_batches yielded no batch"),
        "empty test": (None, train, [], "test_batches yielded no batch"),
        "no labels": (None, train, [x, x], "test_batches must yield \\(input, labels\\)"),
        "float labels": (None, train, [(x, y.float())], "test_batches must yield"),
        "label range": (None, train, [(x, y + 4)], "test_batches: labels must lie in \\[0, 4\\)"),
        "iterator": (None, iter(train), test, "train_batches must be re-iterable"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no BN",
        "train shape",
        "test shape",
        "empty train",
        "empty test",
        "no labels",
        "float labels",
        "label range",
        "iterator",
    ],
)
def test_bad_inputs_raise_naming_the_argument(setup, case):  # noqa: F811 (the fixture)
    model, train, test = setup
    bad_model, tr, te, match = _bad_cases(train, test)[case]
    target = bad_model if bad_model is not None else model
    snap = snapshot(target)
    with pytest.raises((ValueError, TypeError), match=match):
        diagnose(target, tr, te, resamples=200)
    assert_untouched(target, snap)


@pytest.mark.parametrize("kwargs, match", [
    ({"precise_samples": [0]}, "precise_samples"), ({"precise_samples": [2.5]}, "precise_samples"),
    ({"test_batch_size": 1}, "test_batch_size"), ({"resamples": 10}, "resamples"),
    ({"aggregation": "median"}, "aggregation"), ({"margin": -1}, "margin"),
])  # fmt: skip
def test_bad_settings_raise_naming_them(setup, kwargs, match):  # noqa: F811 (the fixture)
    model, train, test = setup
    with pytest.raises(ValueError, match=match):
        diagnose(model, train, test, **kwargs)
