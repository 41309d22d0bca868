"""Input checks (bnbench._checks, behind every public function): bad input raises a clear
error naming the argument, the expectation and the value."""

import numpy as np
import pytest

import bnbench as bn
from bnbench import registry

X = np.ones((4, 3, 5), np.float32)
C3 = np.ones(3, np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: bn.batch_norm_train([[1.0, 2.0]]), TypeError, r"x must be a numpy.ndarray, got list"),
        (lambda: bn.batch_norm_train(np.ones(5, np.float32)), ValueError, r"x must have shape \(N, C\).*got \(5,\)"),
        (lambda: bn.batch_norm_train(np.ones((4, 3), np.int64)), TypeError, r"x must have dtype float32 or float64, got int64"),
        (lambda: bn.batch_norm_train(np.ones((4, 3), np.float16)), TypeError, r"x must have dtype .* got float16"),
        (lambda: bn.batch_norm_train(np.ones((0, 3), np.float32)), ValueError, r"x must not be empty"),
        (lambda: bn.batch_norm_train(X, np.ones(4, np.float32)), ValueError, r"weight must have shape \(3,\).*got \(4,\)"),
        (lambda: bn.batch_norm_train(X, C3, np.ones((3, 1), np.float32)), ValueError, r"bias must have shape \(3,\)"),
        (lambda: bn.batch_norm_train(X, np.ones(3)), TypeError, r"weight must have the dtype of x \(float32\), got float64"),
        (lambda: bn.batch_norm_train(X, [1, 1, 1]), TypeError, r"weight must be a numpy.ndarray of shape \(3,\), got list"),
        (lambda: bn.batch_norm_train(X, eps=0.0), ValueError, r"eps must be a positive finite float, got 0.0"),
        (lambda: bn.batch_norm_train(X, eps=-1e-5), ValueError, r"eps must be .* got -1e-05"),
        (lambda: bn.batch_norm_train(X, eps=float("nan")), ValueError, r"eps must be .* got nan"),
        (lambda: bn.batch_norm_train(X, eps="1e-5"), TypeError, r"eps must be a positive float, got str"),
        (lambda: bn.batch_norm_train(np.ones((1, 3), np.float32)), ValueError, r"more than one value per channel.*\(1, 3\)"),
        (lambda: bn.batch_norm_train(np.ones((1, 3, 1), np.float32)), ValueError, r"more than one value per channel"),
        (lambda: bn.batch_norm_train(X, backend="gpu"), ValueError, r"backend must be one of .*'cpu'.* got 'gpu'"),
        (lambda: bn.batch_norm_train(X, out=np.empty((4, 3, 5))), ValueError, r"out must have the shape \(4, 3, 5\) and dtype float32"),
        (lambda: bn.batch_norm_train(X, out=np.empty((4, 3, 10), np.float32)[:, :, ::2]), ValueError, r"out must be a writeable C-contiguous"),
        (lambda: bn.batch_norm_eval(X, C3, C3, mean=None, var=C3), TypeError, r"mean must be a numpy.ndarray of shape \(3,\), got NoneType"),
        (lambda: bn.batch_norm_eval(X, C3, C3, mean=C3, var=-C3), ValueError, r"var must be non-negative, got minimum -1.0"),
        (lambda: bn.batch_norm_eval(X, C3, C3, mean=C3, var=np.ones(2, np.float32)), ValueError, r"var must have shape \(3,\)"),
        (lambda: bn.batch_norm_backward(np.ones((4, 3), np.float32), X, C3, mean=C3, invstd=C3), ValueError, r"dy must have the shape of x \(4, 3, 5\), got \(4, 3\)"),
        (lambda: bn.batch_norm_backward(X.astype(np.float64), X, C3, mean=C3, invstd=C3), TypeError, r"dy must have the dtype of x \(float32\), got float64"),
        (lambda: bn.batch_norm_backward(X, X, C3, mean=C3, invstd=np.ones(3)), TypeError, r"invstd must have the dtype of x"),
    ],
)  # fmt: skip
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


RM = np.zeros((2, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"momenta": [0.1, 1.5]}, ValueError, r"momenta must be values in \(0, 1\]"),
        ({"momenta": [0.0, 0.1]}, ValueError, r"momenta must be values in \(0, 1\]"),
        ({"momenta": [0.1]}, ValueError, r"running_mean must be C-contiguous with shape \(K=1, C\), got \(2, 3\)"),
        ({"count": 1}, ValueError, r"count must be an integer >= 2 \(unbiased variance\), got 1"),
        ({"count": 2.5}, ValueError, r"count must be an integer >= 2"),
        ({"mean": np.zeros(4)}, ValueError, r"mean must have shape \(3,\), got \(4,\)"),
        ({"running_var": np.zeros((2, 4))}, ValueError, r"running_var must have the shape of running_mean"),
        ({"running_mean": np.zeros((2, 3), np.int32)}, TypeError, r"running_mean must be a float32 or float64"),
    ],
)  # fmt: skip
def test_update_running_stats_bad_input(kwargs, error, match):
    args = {"running_mean": RM.copy(), "running_var": RM.copy(), "mean": np.zeros(3),
            "var": np.ones(3), "count": 8, "momenta": [0.1, 0.01]}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(error, match=match):
        bn.update_running_stats(**args)


def test_count_one_allowed_for_biased_update():
    rm, rv = np.zeros((1, 3)), np.zeros((1, 3))
    bn.update_running_stats(
        rm, rv, mean=np.ones(3), var=np.ones(3), count=1, momenta=[0.5], unbiased=False
    )
    np.testing.assert_array_equal(rv, 0.5)


def test_unavailable_peer_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(registry.PEERS, "missing", "bnbench.kernels.no_such_module")
    registry.get_backend.cache_clear()
    with pytest.raises(registry.BackendUnavailable, match="backend 'missing' is not available"):
        registry.get_backend("missing")
    assert "missing" not in registry.available(peers=True)
    registry.get_backend.cache_clear()


@pytest.mark.parametrize(
    "call",
    [
        # PyTorch's F.batch_norm(input, running_mean, running_var, weight, bias, training,
        # momentum, eps) order must not silently mean something else here
        lambda: bn.batch_norm_train(X, C3, C3, 0.1),
        lambda: bn.batch_norm_eval(X, C3, C3, C3, C3),
        lambda: bn.batch_norm_eval(X, C3, C3, 1e-5, mean=C3, var=C3),
        lambda: bn.batch_norm_backward(X, X, C3, C3, C3),
        lambda: bn.update_running_stats(RM.copy(), RM.copy(), np.zeros(3), np.ones(3), 8, [0.1, 0.1]),
    ],
    ids=["train eps", "eval stats", "eval eps", "backward stats", "update stats"],
)  # fmt: skip
def test_statistics_and_eps_are_keyword_only(call):
    with pytest.raises(TypeError, match="positional argument"):
        call()


def test_keyword_statistics_are_required():
    with pytest.raises(
        TypeError, match="missing 2 required keyword-only arguments: 'mean' and 'var'"
    ):
        bn.batch_norm_eval(X, C3, C3)
    with pytest.raises(TypeError, match="'mean' and 'invstd'"):
        bn.batch_norm_backward(X, X)
