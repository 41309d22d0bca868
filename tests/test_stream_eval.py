"""Every method on a test stream against a hand computation on a tiny network, the
segment accuracies, the costs, restoring the model, and the stream fields of TrainConfig."""

import json

import numpy as np
import pytest

from bnbench import adaptation, evaluate, nn, stream_eval, train
from bnbench.streams import make_stream
from bnbench.tent import Tent

F64 = np.float64


@pytest.fixture
def setting(rng):
    """A trained-looking tiny MLP, its source statistics, and two shifted test sets of the
    same 40 examples."""
    model = nn.Sequential([nn.Linear(3, 4, rng, bias=False, dtype=F64), nn.BatchNorm(4, dtype=F64),
                           nn.ReLU(), nn.Linear(4, 3, rng, dtype=F64)])  # fmt: skip
    x_train = rng.normal(size=(200, 3))
    source = evaluate.population_statistics(model, x_train)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    sets = {("none", 0): (x, y), ("a", 5): (2 * x + 1, y), ("b", 5): (x - 3, y)}
    return model, source, sets


def by_hand(model, stream, per_batch):
    return np.concatenate([per_batch(xb) for xb, _ in stream.batches()])


@pytest.mark.parametrize(
    ("method", "param"),
    [("population", None), ("adabn", None), ("test_batch", None), ("prior", 8.0),
     ("online_ema", 0.2), ("robust_bn", 0.05), ("tent", 0.01)],
)  # fmt: skip
def test_each_method_on_a_continual_stream_by_hand(setting, method, param):
    model, source, sets = setting
    stream = make_stream("continual", sets, 8, seed=3, corruptions=["a", "b"], severity=5)
    bn = model.layers[1]
    before = {k: v.copy() for k, v in bn.params.items()}
    got, cost = stream_eval.predict_stream(model, stream, method, source, param)
    if method == "population":
        expected = evaluate.predict(
            model, np.concatenate([b for b, _ in stream.batches()]), source
        )
    elif method == "adabn":  # the exact statistics of every example of the stream
        everything = np.concatenate([b for b, _ in stream.batches()])
        expected = evaluate.predict(model, everything,
                                    evaluate.population_statistics(model, everything))  # fmt: skip
    elif method == "test_batch":
        expected = by_hand(model, stream, lambda xb: model.forward(xb, "stats"))
    elif method == "prior":
        src = source[0]

        def mixed(xb):
            h = model.layers[0].forward(xb, "eval")
            w = param / (param + len(xb))
            stats = (w * src[0] + (1 - w) * h.mean(0), w * src[1] + (1 - w) * h.var(0, ddof=1))
            return evaluate.predict(model, xb, [stats])

        expected = by_hand(model, stream, mixed)
    elif method in ("online_ema", "robust_bn"):
        state = [source[0][0].copy(), source[0][1].copy()]
        ddof = 1 if method == "online_ema" else 0  # RoTTA's RBN: the biased batch variance

        def update(xb):
            h = model.layers[0].forward(xb, "eval")
            state[0] = (1 - param) * state[0] + param * h.mean(0)
            state[1] = (1 - param) * state[1] + param * h.var(0, ddof=ddof)
            return evaluate.predict(model, xb, [(state[0].copy(), state[1].copy())])

        expected = by_hand(model, stream, update)
    else:
        tent = Tent(model, param)
        expected = by_hand(model, stream, tent)
        tent.restore()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    for k, v in before.items():  # TENT's parameters are restored
        np.testing.assert_array_equal(bn.params[k], v)
    assert cost["forward_passes"] == (2 if method == "adabn" else 1)
    assert cost["backward_passes"] == (stream.num_batches if method == "tent" else 0)


def test_scores_pool_streams_and_report_segments(setting):
    model, source, sets = setting
    streams = [make_stream("iid", sets, 8, seed=1, test_set=k) for k in sets]
    out = stream_eval.score_streams(model, streams, "test_batch", source)
    logits = np.concatenate([stream_eval.predict_stream(model, s, "test_batch", source)[0]
                             for s in streams])  # fmt: skip
    labels = np.concatenate([s.labels for s in streams])
    assert out["test_accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)))
    segments = json.loads(out["segment_accuracy"])
    assert [(c, s, n) for c, s, n, _ in segments] == [("none", 0, 40), ("a", 5, 40), ("b", 5, 40)]
    for (_, _, _, acc), part in zip(
        segments, np.split(logits.argmax(1) == labels, 3), strict=True
    ):
        assert acc == pytest.approx(part.mean())
    assert out["seconds_per_example"] > 0


def test_a_method_that_cannot_run_is_recorded(setting):
    model, source, sets = setting
    stream = make_stream("iid", sets, 1, seed=0)  # one value per channel: undefined
    out = stream_eval.score_streams(model, [stream], "test_batch", source)
    assert "more than one value per channel" in out["error"] and "test_accuracy" not in out
    model.layers[1].params["weight"][...] = np.inf
    out = stream_eval.score_streams(model, [make_stream("iid", sets, 8, 0)], "tent", source, 1e-3)
    assert out["error"].startswith("diverged: tent diverged")
    with pytest.raises(ValueError, match="stream method must be one of"):
        stream_eval.predict_stream(model, stream, "sar", source)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"streams": ("iid", "sideways")}, r"streams must be distinct names in"),
        ({"estimators": ("tent",)}, r"estimators 'tent' is scored on test streams"),
        ({"streams": ("iid",), "stream_batch_sizes": (0,)}, r"stream_batch_sizes must be integers in \[1"),
        ({"streams": ("iid",), "dirichlet_alpha": 0.0}, r"dirichlet_alpha must be a finite number > 0"),
        ({"streams": ("iid",), "stream_severity": 6}, r"stream_severity must be an integer in 1-5"),
        ({"streams": ("iid",), "estimators": ("tent",), "tent_lrs": (-1.0,)}, r"tent_lrs must be numbers > 0"),
        ({"streams": ("iid",), "estimators": ("tent",), "tent_modes": ("offline",)}, r"tent_modes must be"),
        ({"streams": ("iid",), "heldout_corruptions": ("fog",)}, r"heldout_corruptions must be some"),
        ({"streams": ("iid",), "dataset": "gaussian_mixture"}, r"streams are built from corrupted test sets"),
    ],
)  # fmt: skip
def test_stream_fields_are_checked_before_training(fields, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**fields)


def test_a_run_scores_streams_on_test_and_heldout_corruptions():
    cfg = train.TrainConfig(model="mlp", epochs=1, num_samples=500, bn_momenta=(0.1,),
                            estimators=("population", "test_batch", "robust_bn", "tent"),
                            test_batch_sizes=(16,), streams=("continual", "iid"),
                            stream_batch_sizes=(16,), stream_examples=40)  # fmt: skip
    rows = [e for e in train.run(cfg)["evaluations"] if e["stream"]]
    assert {(e["stream"], e["stream_split"]) for e in rows} == {
        (k, s) for k in ("continual", "iid") for s in ("test", "heldout")}  # fmt: skip
    held = json.loads(next(e for e in rows if e["stream_split"] == "heldout"
                           and e["stream"] == "continual")["segment_accuracy"])  # fmt: skip
    assert [c for c, *_ in held] == ["correlated_noise", "shear"]  # MNIST-1D-C's HELDOUT
    test = json.loads(next(e for e in rows if e["stream_split"] == "test" and e["stream"] == "iid"
                           and e["estimator"] == "tent")["segment_accuracy"])  # fmt: skip
    assert [c for c, *_ in test] == [
        "none",
        "gaussian_noise",
        "translation",
        "scale",
        "gain_offset",
    ]
    assert all(e["test_accuracy"] is not None for e in rows)
    assert adaptation.ROBUST_BN_MOMENTUM in {e["momentum"] for e in rows}
