"""The torch-estimators study: its jobs run with a model and data passed by import path
(in sweep worker processes), its report is built from the saved runs, and its analysis
states the known answers of a synthetic table."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from bnbench import study, sweep  # noqa: E402

TINY = {"model": "torch_tiny_model:model", "data": "torch_tiny_model:data"}


def test_study_declares_model_and_data_options():
    s = study.load("torch-estimators")
    assert s.options() == {"model": "default", "data": "default"}
    jobs = s.jobs("quick")
    assert {j["params"]["model"] for j in jobs} == {"default"}
    assert {j["params"]["model"] for j in s.jobs("quick", TINY)} == {TINY["model"]}
    with pytest.raises(ValueError, match="has no option"):
        s.jobs("quick", {"modle": "x:y"})
    with pytest.raises(ValueError, match="cannot load factory 'no_such_module:f'"):
        s.jobs("quick", {"model": "no_such_module:f"})
    with pytest.raises(ValueError, match="must be given as 'package.module:factory'"):
        s.jobs("quick", {"data": "torch_tiny_model.data"})


def test_a_wrong_factory_path_is_a_usage_error(capsys):
    assert study.main(study.load("torch-estimators"), ["--model", "no_such_module:f"]) == 2
    assert "cannot load factory" in capsys.readouterr().err


def test_study_runs_a_model_given_by_import_path(tmp_path, monkeypatch):
    s = study.load("torch-estimators")
    quick = s.presets["quick"]
    small = {"epochs": 1, "momenta": [0.1, 0.5], "precise_samples": [64, 0],
             "test_batch_sizes": [16, 128]}  # fmt: skip

    def tiny_preset(options):
        return [{**j, "params": {**j["params"], **small}} for j in quick(options)
                if j["params"]["seed"] < 2 and j["params"]["batch_size"] in (8, 32)]  # fmt: skip

    monkeypatch.setitem(s.presets, "quick", tiny_preset)
    failed = study.run(s, "quick", tmp_path, n_jobs=2, progress=False, options=TINY)
    assert failed == 0, [e for _, e in sweep.failures(tmp_path / "runs")]
    meta = json.loads((tmp_path / "study.json").read_text())
    assert meta["options"] == TINY
    report = (tmp_path / "report.md").read_text()
    assert "torch_tiny_model:model" in report and "## Findings" in report
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df.job_key.unique()) == 4
    assert set(df.estimator) == {"ema", "ema_debiased", "cumulative", "running_buffers",
                                 "precise", "population", "test_batch"}  # fmt: skip
    pop = df[df.estimator == "population"]
    assert (pop.var_error == 0).all() and (pop.passes == 1).all()
    # the hooks' EMA at the model's own momentum reproduces its running buffers
    ema = df[(df.estimator == "ema") & (df.momentum == 0.1)].set_index("job_key")
    own = df[df.estimator == "running_buffers"].set_index("job_key")
    np.testing.assert_allclose(ema.var_error, own.var_error.loc[ema.index], atol=1e-5)
    with pytest.raises(ValueError, match="with options"):
        study.run(s, "quick", tmp_path, n_jobs=1, progress=False)  # default model: refused


def synthetic():
    """Population 90%; EMA m=0.1 5 points below at batch size 8 only; EMA m=0.9 always
    10 below; cumulative 3 below; precise total as good as population with a smaller
    variance error than mean-var; prediction-time BN 20 below at B=16, equal at 128."""
    rows = []
    for seed in range(3):
        for bs in (8, 128):
            key = f"{seed}-{bs}"
            jitter = 0.1 * (seed - 1)
            base = {"job_key": key, "seed": seed, "batch_size": bs, "model": "default",
                    "data": "default", "epochs": 6, "train_size": 4000, "test_size": 1000,
                    "train_seconds": 10.0, "hook_seconds": 1.0, "bn_layers": 4,
                    "estimator_seconds": 0.1, "momentum": np.nan, "precise_samples": np.nan,
                    "aggregation": None, "test_batch_size": np.nan}  # fmt: skip

            def row(estimator, acc, var_error=0.01, base=base, jitter=jitter, **kw):
                rows.append({**base, "estimator": estimator, "test_accuracy": (acc + jitter) / 100,
                             "var_error": var_error, **kw})  # fmt: skip

            row("population", 90, 0.0)
            row("ema", 85 if bs == 8 else 90, momentum=0.1)
            row("ema", 80, 0.2, momentum=0.9)
            row("running_buffers", 85 if bs == 8 else 90)
            row("cumulative", 87)
            row("precise", 90, 0.001, precise_samples=4000, aggregation="total_variance")
            row("precise", 90, 0.05, precise_samples=4000, aggregation="mean_of_batch_variances")
            row("test_batch", 70, np.nan, test_batch_size=16)
            row("test_batch", 90, np.nan, test_batch_size=128)
    return pd.DataFrame(rows)


def test_analysis_states_the_known_findings():
    body, figures, found = study.load("torch-estimators").analyse(synthetic())
    findings = body.split("## Findings")[1].split("\n## ")[0]
    # paired: 5 points worse on every network at batch 8, exactly equal at 128
    assert "8: -5.0 [-5.0, -5.0] hurts; 128: +0.0 [+0.0, +0.0] no clear difference" in findings
    assert "m=0.9 (worst at batch 8): -10.0 [-10.0, -10.0] hurts" in findings
    assert "Momenta with no clear loss at any batch size: none" in findings
    assert "8: -3.0 [-3.0, -3.0] hurts; 128: -3.0 [-3.0, -3.0] hurts" in findings  # cumulative
    pooled = "n counts networks: 2 training batch sizes x 3 seeds"  # n=6 pairs, not 6 seeds
    assert (
        f"the population statistics; 0.0010 vs 0.0500): every batch size ({pooled}): +0.0490"
        in findings
    )
    assert f"over every training batch size ({pooled}): B=16: -20.0" in findings
    assert (
        "B=16: -20.0 [-20.0, -20.0] hurts; B=128: +0.0 [+0.0, +0.0] no clear difference"
        in findings
    )
    assert "largest difference in variance error 0" in findings
    assert "8: 10; 128: 10" in findings and "4 passes" in findings
    assert "nan" not in findings
    assert [png for png, _ in figures] == [
        "accuracy_vs_batch_size.png",
        "ema_error_vs_momentum.png",
    ]
    for _, fig in figures:
        plt.close(fig)


def test_default_model_job_on_mnist1d():
    """The quick preset's first job with its built-in CNN on MNIST-1D, shortened."""
    from bnbench.torch import jobs as torch_jobs

    job = study.load("torch-estimators").jobs("quick")[0]
    assert job["params"]["model"] == "default" and job["params"]["data"] == "default"
    params = {**job["params"], "epochs": 1, "batch_size": 128, "precise_samples": [512]}
    result = torch_jobs.run_job(params)
    rows = torch_jobs.result_rows(result)
    assert result["training"]["bn_layers"] == 4 and result["training"]["train_size"] == 4000
    by = {(r["estimator"], r.get("momentum"), r.get("aggregation")): r for r in rows}
    assert by[("population", None, None)]["passes"] == 4
    assert by[("population", None, None)]["test_accuracy"] > 0.3  # chance is 0.1
    assert by[("precise", None, "total_variance")]["precise_samples"] == 512
    for r in rows:
        assert 0 <= r["test_ece"] <= 1 and r["test_nll"] > 0


def test_bnbench_study_command_reaches_the_study_options(capsys):
    from bnbench import cli

    s = study.load("torch-estimators")
    assert study.parse_option_pairs(s, ["model=torch_tiny_model:model", "data=x.y:z"]) == {
        "model": "torch_tiny_model:model", "data": "x.y:z"}  # fmt: skip
    with pytest.raises(ValueError, match=r"has no option\(s\) \['--modle'\]"):
        study.parse_option_pairs(s, ["modle=a:b"])
    with pytest.raises(ValueError, match="must be NAME=VALUE"):
        study.parse_option_pairs(s, ["model"])
    with pytest.raises(ValueError, match="has no options of its own"):
        study.parse_option_pairs(study.load("kernel-throughput"), ["model=a:b"])
    with pytest.raises(
        ValueError, match=r"has no option\(s\) \['--model'\]; its options are \['dataset'\]"
    ):
        study.parse_option_pairs(study.load("covariate-shift"), ["model=a:b"])
    assert cli.main(["study", "torch-estimators", "-o", "model=no_such_module:f"]) == 2
    assert "cannot load factory 'no_such_module:f'" in capsys.readouterr().err


def test_cost_table_has_one_row_per_test_batch_size_and_precise_count():
    """Each test batch size's evaluation and each PreciseBN sample count is its own
    timing (one row kept per run and item, not one per estimator); PreciseBN asked for
    the whole set is "all" even when whole batches leave a few samples out."""
    df = synthetic()
    df.loc[(df.estimator == "test_batch") & (df.test_batch_size == 16), "estimator_seconds"] = 0.5
    df.loc[(df.estimator == "test_batch") & (df.test_batch_size == 128), "estimator_seconds"] = 0.2
    precise = df.estimator == "precise"
    df.loc[precise, ["precise_request", "precise_samples", "estimator_seconds"]] = [0, 3999, 0.3]
    extra = df[precise].copy()
    extra[["precise_request", "precise_samples", "estimator_seconds"]] = [256, 256, 0.03]
    df = pd.concat([df, extra], ignore_index=True)
    body, figures, _ = study.load("torch-estimators").analyse(df)
    for _, fig in figures:
        plt.close(fig)
    cost = body.split("## What each estimator costs")[1].split("## Method")[0]
    assert "| test_batch 16 | 0.5 | 0.5 |" in cost and "| test_batch 128 | 0.2 | 0.2 |" in cost
    assert "| precise 256 | 0.03 | 0.03 |" in cost and "| precise all | 0.3 | 0.3 |" in cost
    assert "| ema | 0.1 | 0.1 |" in cost and "| population | 0.1 | 0.1 |" in cost
    assert "PreciseBN over all samples" in body and "PreciseBN over 256 samples" in body
    assert "batches of exactly B" in body.split("## Method")[1]
