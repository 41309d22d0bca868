"""bnbench.torch.diagnosis: the gap and its bootstrap interval against direct computations,
the per-layer table, the recommendation's rule, the model left exactly as it was, and the
factories and the command (bad inputs: test_torch_diagnose_checks.py; the report folder:
test_torch_diagnose_report.py)."""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")
nn = torch.nn

from test_torch_estimators import assert_untouched, snapshot  # noqa: E402

from bnbench.torch import jobs  # noqa: E402
from bnbench.torch.diagnosis import (  # noqa: E402
    diagnose,
    main_from_factories,
    paired_bootstrap,
)

RESAMPLES = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def arrays(seed=0):
    """Four overlapping Gaussian classes in 8 dimensions, far from zero mean and unit
    variance (so that BN statistics matter): 1000 training and 400 test examples."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 8))
    y = rng.integers(0, 4, 1400)
    x = ((centers[y] + 0.8 * rng.normal(size=(1400, 8))) * 3 + 2).astype(np.float32)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def net():
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))  # fmt: skip


def trained_model():
    """A model factory for main_from_factories: the net trained for 4 epochs (0.1 s)."""
    x, y, _, _ = (torch.as_tensor(a) for a in arrays())
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        for i in range(0, 1000, 32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32].long()).backward()
            opt.step()
    return model


@pytest.fixture(scope="module")
def setup():
    x, y, xt, yt = (torch.as_tensor(a) for a in arrays())
    y, yt = y.long(), yt.long()
    train = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 1000, 32)]
    test = [(xt[i : i + 100], yt[i : i + 100]) for i in range(0, 400, 100)]
    return trained_model(), train, test


def corrupted(model, layer="1", factor=10.0):
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_submodule(layer).running_var *= factor
    return model


def correct(model, test, statistics=None):
    """Per-example correctness of a copy of ``model`` in eval mode (with ``statistics``
    loaded into its buffers): the oracle, independent of diagnose's hooks."""
    model = copy.deepcopy(model).eval()
    if statistics is not None:
        bt.load_statistics(model, statistics)
    with torch.no_grad():
        return np.concatenate([(model(x).argmax(1) == y).numpy() for x, y in test])


def direct_bootstrap(a, b, resamples, seed, confidence=0.95):
    """The paired percentile bootstrap written out: resample indices, both accuracies."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        diffs.append(100 * (a[idx].mean() - b[idx].mean()))
    return np.percentile(diffs, [50 * (1 - confidence), 50 * (1 + confidence)])


# the gap and the per-layer table


def test_corrupted_buffers_show_a_gap_and_the_layer_first(setup):
    model, train, test = setup
    bad = corrupted(model, "1")
    result = diagnose(bad, train, test, resamples=RESAMPLES, seed=3)
    assert result.gap.low > 0, result.gap
    assert result.layers["layer"].iloc[0] == "1"
    assert result.layers["var_error"].iloc[0] == pytest.approx(np.log(10), rel=0.1)
    assert "eval/train gap is the statistics" in result.verdict
    assert result.recommended != "running buffers"
    # the gap and its interval against a direct computation on the same seed
    population = bt.population_statistics(copy.deepcopy(bad).train(), train)
    pop, buf = correct(bad, test, population), correct(bad, test)
    assert result.gap.mean == pytest.approx(100 * (pop.mean() - buf.mean()))
    low, high = direct_bootstrap(pop, buf, RESAMPLES, 3)
    assert (result.gap.low, result.gap.high) == pytest.approx((low, high))
    scores = result.scores.set_index("estimate")
    assert scores.loc["buffers", "accuracy"] == pytest.approx(100 * buf.mean())
    assert scores.loc["population", "accuracy"] == pytest.approx(100 * pop.mean())


def test_the_table_names_the_corrupted_layer_first_wherever_it_is(setup):
    model, train, test = setup
    result = diagnose(corrupted(model, "4"), train, test, precise_samples=(), resamples=200)
    assert list(result.layers["layer"]) == ["4", "1"]


def test_exact_buffers_mean_the_statistics_are_fine(setup):
    model, train, test = setup
    exact = copy.deepcopy(model).train()
    bt.load_statistics(exact, bt.population_statistics(exact, train))
    x, y = (torch.cat(t) for t in zip(*train, strict=True))  # DataLoaders work as lists do
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), 32, shuffle=True)
    result = diagnose(exact, loader, test, resamples=RESAMPLES)
    assert result.gap.low <= 0 <= result.gap.high
    assert result.verdict.startswith("The statistics are fine")
    assert result.recommended == "running buffers"
    assert result.layers["output_error"].max() < 1e-4


def test_paired_bootstrap_against_a_direct_computation():
    rng = np.random.default_rng(5)
    a, b = rng.random(60) < 0.8, rng.random(60) < 0.6
    d = paired_bootstrap(a, b, resamples=500, seed=11)
    assert d.mean == pytest.approx(100 * (a.mean() - b.mean()))
    assert (d.low, d.high) == pytest.approx(tuple(direct_bootstrap(a, b, 500, 11)))
    assert d.n == 60 and d.verdict == ("helps" if d.low > 0 else "no clear difference")
    same = paired_bootstrap(a, a, resamples=200)
    assert (same.low, same.high, same.verdict) == (0.0, 0.0, "no clear difference")


def test_the_recommendation_is_the_cheapest_estimate_within_the_margin(setup):
    model, train, test = setup
    result = diagnose(corrupted(model, "1"), train, test, precise_samples=(64, 256, None),
                      resamples=RESAMPLES, margin=0.5)  # fmt: skip
    s = result.scores
    fixed = s[s["estimate"].isin(["buffers", "precise", "population"])]
    chosen = fixed[fixed["label"] == result.recommended].iloc[0]
    assert chosen["estimate"] == "population" or chosen["vs_low"] > -0.5
    cheaper = fixed[fixed["forward_samples"] < chosen["forward_samples"]]
    assert (cheaper["vs_low"] <= -0.5).all()
    assert list(fixed["label"]) == ["running buffers", "PreciseBN 64", "PreciseBN 256",
                                    "PreciseBN all", "population"]  # fmt: skip
    assert fixed["forward_batches"].tolist()[:3] == [0, 2, 8]
    assert result.recommendation.startswith("Use ")
    assert f"[{result.recommended!r}]" in result.recommendation


def test_train_mode_rebatched_matches_the_torch_jobs_prediction_time(setup):
    model, train, test = setup
    result = diagnose(model, train, test, precise_samples=(), test_batch_size=64, seed=2,
                      resamples=200)  # fmt: skip
    xt, yt = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    ref = jobs.prediction_time_scores(model, xt, yt, 64, np.random.default_rng([2, 3, 64]))
    row = result.scores.set_index("estimate").loc["test_batch"]
    assert row["accuracy"] == pytest.approx(100 * ref["test_accuracy"])
    assert row["nll"] == pytest.approx(ref["test_nll"])
    assert row["label"] == "train mode (test batches of 64)"


# the model is left as it was


def test_the_model_is_untouched_after_success_and_after_an_error(setup):
    _, train, test = setup
    model = corrupted(trained_model(), "1")
    model.train()
    model[4].eval()  # mixed flags must come back as they were
    snap = snapshot(model)
    diagnose(model, train, test, resamples=200)
    assert_untouched(model, snap)

    class Reshuffled:  # a test loader reversed on odd passes: fails after the population pass
        passes = 0

        def __iter__(self):
            self.passes += 1
            return iter(test if self.passes % 2 else test[::-1])

    with pytest.raises(ValueError, match="test_batches must yield the same examples"):
        diagnose(model, train, Reshuffled(), resamples=200)
    assert_untouched(model, snap)
    bad_test = [*test[:2], (test[2][0][:, :5], test[2][1])]  # the third batch has 5 features
    with pytest.raises(ValueError, match="test_batches"):
        diagnose(model, train, bad_test, resamples=200)
    assert_untouched(model, snap)


def test_main_from_factories(tmp_path):
    result = main_from_factories("test_torch_diagnosis:trained_model",
                                 "test_torch_diagnosis:arrays", tmp_path / "f", batch_size=50,
                                 precise_samples=(100,), resamples=200)  # fmt: skip
    assert result.settings["train_samples"] == 1000 and result.settings["test_samples"] == 400
    assert (tmp_path / "f" / "report.md").is_file()
    prov = json.loads((tmp_path / "f" / "provenance.json").read_text())
    assert prov["diagnose"]["model_factory"] == "test_torch_diagnosis:trained_model"
    with pytest.raises(ValueError, match="cannot load factory"):
        main_from_factories("test_torch_diagnosis:nothing", "test_torch_diagnosis:arrays")


def test_the_diagnose_command_on_the_readme_example(tmp_path, capsys):
    """``bnbench diagnose`` on the README's example prints its table and writes a report;
    a factory that does not load is one line and exit status 2."""
    from bnbench import cli

    out = tmp_path / "diag"
    argv = ["diagnose", "--model", "bnbench.torch.example:trained_model",
            "--data", "bnbench.torch.example:data", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("estimate") and "running buffers" in printed
    assert (out / "report.md").is_file() and (out / "findings.json").is_file()
    assert cli.main(["diagnose", "--model", "nowhere:f", "--data", "nowhere:g"]) == 2
    assert "cannot load factory 'nowhere:f'" in capsys.readouterr().err
