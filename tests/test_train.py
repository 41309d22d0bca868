"""Training runs, estimator evaluation, population statistics, and configurations that
only fail once data is known (the others: tests/test_trainconfig.py)."""

import json

import numpy as np
import pytest

from bnbench import cli, data, evaluate, nn, train
from bnbench.estimators import NAMES

FAST = dict(
    dataset="gaussian_mixture", epochs=3, bn_momenta=(0.01, 0.5), test_batch_sizes=(2, 32, 300)
)


@pytest.fixture(scope="module")
def result():
    return train.run(train.TrainConfig(model="mlp", batch_size=32, **FAST))


def test_short_run_learns_and_reports_every_estimator(result):
    ev = result["evaluations"]
    assert {e["estimator"] for e in ev} == set(NAMES)
    pop = next(e for e in ev if e["estimator"] == "population")
    assert pop["test_accuracy"] > 0.9  # 4 separable blobs; chance is 0.25
    assert pop["mean_error"] == 0 and pop["var_error"] == 0
    ema = [e for e in ev if e["estimator"] == "ema"]
    assert [e["momentum"] for e in ema] == [0.01, 0.5]
    tb = [e for e in ev if e["estimator"] == "test_batch"]
    assert {(e["test_batch_size"], e["test_order"]) for e in tb} == {
        (b, o) for b in (2, 32, 300) for o in ("iid", "sorted")
    }
    full_iid = next(e for e in tb if e["test_batch_size"] == 300)
    assert full_iid["test_accuracy"] > 0.9
    assert set(train.costs(result)) == set(NAMES)
    assert all(e["estimator_seconds"] >= 0 for e in ev)
    for e in ev:  # every evaluation is scored with the same metric columns
        assert {"test_accuracy", "test_nll", "test_ece"} <= set(e)
        assert (e["test_accuracy"] is None) == (e["error"] is not None)
        if e["error"] is None:
            assert e["test_nll"] > 0 and 0 <= e["test_ece"] <= 1
    assert {(e["corruption"], e["severity"]) for e in ev} == {("none", 0)}
    assert result["training"]["steps"] == 3 * (900 // 32)
    json.dumps(result)  # JSON-ready


def test_same_seed_same_result_bitwise(result):
    again = train.run(train.TrainConfig(model="mlp", batch_size=32, **FAST))

    def strip(res):
        evs = [
            {k: v for k, v in e.items() if k != "estimator_seconds"} for e in res["evaluations"]
        ]
        return {**{k: v for k, v in res.items() if k != "training"}, "evaluations": evs}

    assert strip(again) == strip(result)
    assert again["training"]["final_train_loss"] == result["training"]["final_train_loss"]


def test_different_seed_differs(result):
    other = train.run(train.TrainConfig(model="mlp", batch_size=32, seed=1, **FAST))
    assert other["training"]["final_train_loss"] != result["training"]["final_train_loss"]


def brute_force_population(model, x):
    """Layer by layer over ``x`` in float64, upstream BN in inference mode with the
    statistics found for it (Sequential models of Linear/Conv1d/BN/ReLU/..., residual
    blocks included: ``h + body(h)``)."""
    expected = []
    _brute_force(model, x.astype(np.float64), expected)
    return expected


def _brute_force(model, h, expected):
    for layer in model.layers:
        if isinstance(layer, nn.Residual):
            h = h + _brute_force(layer, h, expected)
        elif isinstance(layer, nn.BatchNorm):
            channel = layer.axis % h.ndim  # channel-first or channels-last
            axes = tuple(a for a in range(h.ndim) if a != channel)
            m, v = h.mean(axis=axes), h.var(axis=axes)
            expected.append((m, v))
            layer.eval_stats = (m, v)
            shape = tuple(-1 if a == channel else 1 for a in range(h.ndim))
            w, b = (layer.params[k].astype(np.float64).reshape(shape) for k in ("weight", "bias"))
            h = (h - m.reshape(shape)) / np.sqrt(v.reshape(shape) + layer.eps) * w + b
            if layer.relu:  # its ReLU fused (nn.fuse_relu)
                h = np.maximum(h, 0)
        else:
            h = layer.forward(h.astype(np.float32), "eval").astype(np.float64)
    return h


def assert_stats_close(got, expected):
    assert len(got) == len(expected)
    for (gm, gv), (em, ev) in zip(got, expected, strict=True):
        np.testing.assert_allclose(gm, em, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(gv, ev, rtol=1e-4, atol=1e-6)


def test_population_matches_brute_force(rng):
    """Layer by layer over the whole training set, upstream BN in inference mode."""
    d = data.gaussian_mixture(num_samples=400, num_features=12)
    cfg = train.TrainConfig(model="cnn", batch_size=16, **{**FAST, "epochs": 1})
    model, _, _ = train.train_network(cfg, d)
    got = evaluate.population_statistics(model, d.x_train)
    assert_stats_close(got, brute_force_population(model, d.x_train))


@pytest.mark.parametrize("model", ["cnn", "resnet"])
def test_checkpoint_population_is_that_networks_exact_statistics(model):
    d = data.gaussian_mixture(num_samples=400, num_features=12)
    cfg = train.TrainConfig(model=model, batch_size=16, eval_every=5, **{**FAST, "epochs": 1})
    seen = []

    def at_checkpoint(step, model, running):
        assert all(layer.observers == [] for layer in model.bn_layers)  # estimators detached
        brute = brute_force_population(model, d.x_train)
        assert_stats_close(evaluate.population_statistics(model, d.x_train), brute)
        # what the checkpoint records is scored with exactly those statistics
        recorded = next(e for e in evaluate.evaluate_network(model, d, cfg, running)
                        if e["estimator"] == "population")  # fmt: skip
        logits = evaluate.predict(model, d.x_test, brute)
        assert recorded["test_accuracy"] == pytest.approx(
            float((logits.argmax(1) == d.y_test).mean()), abs=0.005
        )
        seen.append((step, brute[0][1].copy()))

    train.train_network(cfg, d, at_checkpoint=at_checkpoint)
    assert [s for s, _ in seen] == list(range(5, 300 // 16, 5))
    assert not np.array_equal(seen[0][1], seen[-1][1])  # the network moved in between


def test_checkpoints_are_scored_without_changing_training(result):
    cfg = train.TrainConfig(model="mlp", batch_size=32, eval_every=(0.25, 0.5, 0.75), **FAST)
    res = train.run(cfg)
    total = res["training"]["steps"]
    steps = sorted({e["step"] for e in res["evaluations"]})
    assert steps == [round(f * total) for f in (0.25, 0.5, 0.75)] + [total]

    def final(r):
        return [{k: v for k, v in e.items() if k != "estimator_seconds"}
                for e in r["evaluations"] if e["step"] == total]  # fmt: skip

    assert final(res) == final(result)  # bitwise the same training and final scores
    assert res["training"]["final_train_loss"] == result["training"]["final_train_loss"]
    assert res["training"]["checkpoint_seconds"] > 0 == result["training"]["checkpoint_seconds"]
    at = {e["estimator"]: e for e in res["evaluations"] if e["step"] == steps[0]}
    # statistics errors at a checkpoint are against that checkpoint's own population
    assert at["population"]["mean_error"] == 0 and at["ema"]["mean_error"] > 0
    assert set(train.costs(res)) == set(train.costs(result))


@pytest.mark.parametrize(
    ("eval_every", "match"),
    [
        (0, r"eval_every must be an integer >= 1, got 0"),
        ((0.5, 1.5), r"eval_every must be a step count >= 1 or fractions of training in \(0, 1\]"),
        ((), r"eval_every must be a step count >= 1 or fractions"),
        (10_000, r"eval_every must be at most the training length \(84 steps\), got 10000"),
    ],
)  # fmt: skip
def test_bad_checkpoint_interval(eval_every, match):
    with pytest.raises(ValueError, match=match):
        train.run(train.TrainConfig(model="mlp", batch_size=32, eval_every=eval_every, **FAST))


def test_resnet_trains_and_depth_is_checked():
    cfg = train.TrainConfig(model="resnet", depth=4, batch_size=32, estimators=("population",),
                            **{**FAST, "epochs": 3})  # fmt: skip
    res = train.run(cfg)
    (pop,) = res["evaluations"]
    assert pop["test_accuracy"] > 0.9 and len(pop["layer_mean_error"]) == 4
    with pytest.raises(ValueError, match=r"depth must be an even integer in 2-64"):
        train.TrainConfig(model="resnet", depth=5)
    with pytest.raises(
        ValueError, match=r"depth applies to models \('resnet', 'resnet2d'\) only, got model 'cnn'"
    ):
        train.TrainConfig(model="cnn", depth=8)


def test_sorted_test_batches_hurt(result):
    tb = {(e["test_batch_size"], e["test_order"]): e["test_accuracy"]
          for e in result["evaluations"] if e["estimator"] == "test_batch"}  # fmt: skip
    # at the same test batch size, class-sorted batches (one class each) lose to iid ones
    assert tb[(32, "sorted")] < tb[(32, "iid")] - 0.1
    assert tb[(2, "sorted")] < tb[(2, "iid")]


def test_precise_samples_fewer_than_a_batch_is_recorded():
    cfg = train.TrainConfig(model="mlp", batch_size=32, precise_samples=(10, 64), **FAST)
    pre = [e for e in train.run(cfg)["evaluations"] if e["estimator"] == "precise"]
    small, ok = sorted(pre, key=lambda e: e["precise_samples"])
    assert (
        small["test_accuracy"] is None
        and "precise_samples (10) < recompute batch size (32)" in small["error"]
    )
    assert ok["test_accuracy"] > 0.5 and ok["error"] is None
    # whole recompute batches only: the sample count actually used is recorded
    assert ok["precise_samples"] == 64 and ok["precise_samples_used"] == 64
    with pytest.raises(ValueError, match=r"precise_samples \(10\) must be at least"):
        evaluate.precise_statistics(None, np.zeros((100, 2)), 10, 32, np.random.default_rng(0))


def test_precise_records_the_samples_it_used():
    cfg = train.TrainConfig(model="mlp", batch_size=32, precise_samples=(100,),
                            estimators=("precise",), **FAST)  # fmt: skip
    (pre,) = [e for e in train.run(cfg)["evaluations"] if e["estimator"] == "precise"]
    assert pre["precise_samples"] == 100 and pre["precise_samples_used"] == 96  # 3 x 32


def test_sizes_beyond_the_test_set_are_refused_before_training():
    for field in ("test_batch_sizes", "adapt_samples"):
        cfg = train.TrainConfig(model="mlp", estimators=("adabn", "test_batch"),
                                **{**FAST, field: (301,)})  # fmt: skip
        with pytest.raises(ValueError, match=rf"{field} must be at most the test set size 300"):
            train.run(cfg)


def test_mlp_test_batch_of_one_is_recorded_not_raised():
    cfg = train.TrainConfig(model="mlp", batch_size=32, **{**FAST, "test_batch_sizes": (1,)})
    tb = [e for e in train.run(cfg)["evaluations"] if e["estimator"] == "test_batch"]
    assert all(e["test_accuracy"] is None and "more than one value" in e["error"] for e in tb)


def test_cli_train_json(capsys):
    code = cli.main(["train", "--dataset", "gaussian_mixture", "--model", "mlp", "--epochs", "1",
                     "--momenta", "0.1", "--test-batch-sizes", "64", "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {e["estimator"] for e in out["evaluations"]} == set(NAMES)
    assert out["config"]["bn_momenta"] == [0.1]


def test_cli_train_table_and_bad_config(capsys):
    assert cli.main(["train", "--dataset", "gaussian_mixture", "--model", "cnn", "--epochs", "1",
                     "--test-batch-sizes", "64"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "population" in out and "test acc" in out and "ECE" in out and "ms/step" in out
    with pytest.raises(SystemExit) as exit_:  # argparse: a choice outside the list
        cli.main(["train", "--model", "nope"])
    assert exit_.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "gaussian_mixture", "--lr", "-1"]) == 2
    assert "lr must be > 0, got -1.0" in capsys.readouterr().err


def test_cli_train_exposes_every_config_field(capsys):
    import dataclasses

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(train.TrainConfig):
        assert "--" + field.name.replace("_", "-") in text, field.name
    code = cli.main(["train", "--dataset", "gaussian_mixture", "--model", "mlp", "--epochs", "1",
                     "--weight-decay", "0", "--momentum", "0.5", "--lr", "0.01",
                     "--precise-aggregations", "total_variance,mean_of_batch_variances",
                     "--test-orders", "sorted", "--test-batch-sizes", "64", "--unbiased", "false",
                     "--estimators", "precise,test_batch", "--json"])  # fmt: skip
    assert code == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert (config["weight_decay"], config["momentum"], config["lr"]) == (0, 0.5, 0.01)
    assert config["test_orders"] == ["sorted"] and config["unbiased"] is False
    assert config["precise_aggregations"] == list(train.AGGREGATIONS)


def test_precise_settings_ride_along_on_one_run():
    cfg = train.TrainConfig(
        model="mlp", batch_size=32, precise_samples=(64, 10_000), precise_batch_sizes=(16, 32),
        precise_aggregations=train.AGGREGATIONS, estimators=("precise", "population"), **FAST,
    )  # fmt: skip
    res = train.run(cfg)
    pre = [e for e in res["evaluations"] if e["estimator"] == "precise"]
    assert {(e["precise_samples"], e["precise_batch_size"], e["aggregation"]) for e in pre} == {
        (s, b, a) for s in (64, 900) for b in (16, 32) for a in train.AGGREGATIONS
    }
    whole = [e for e in pre if e["precise_samples"] == 900]
    by_agg = {(e["precise_batch_size"], e["aggregation"]): e for e in whole}
    for bs in (16, 32):  # one recompute pass, two different variance estimates
        total, mean_of_vars = (by_agg[(bs, a)] for a in train.AGGREGATIONS)
        assert total["layer_mean_error"] == mean_of_vars["layer_mean_error"]
        assert total["var_error"] != mean_of_vars["var_error"]
        assert total["estimator_seconds"] == mean_of_vars["estimator_seconds"]
