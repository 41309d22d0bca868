"""Every study script: its presets build valid jobs, and its analysis turns a (tiny, real)
results table into a report with findings and figures."""

import matplotlib.pyplot as plt
import pytest

from bnbench import study, sweep
from bnbench.train import TrainConfig

NAMES = ["momentum-batch-size", "test-batch-statistics", "precise-bn-samples", "kernel-throughput"]


def test_all_studies_are_found():
    assert sorted(study.available()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("preset", ["quick", "full"])
def test_presets_build_valid_jobs(name, preset):
    jobs = study.load(name).jobs(preset)
    assert jobs and len({sweep.job_key(j) for j in jobs}) == len(jobs)
    for job in jobs:
        if job["kind"] == "train":
            TrainConfig(**job["params"])  # raises on a bad configuration


def shrink(job):
    """The same job on synthetic data, trained for one epoch."""
    if job["kind"] == "kernel":
        return {"kind": "kernel", "params": {"shape": [64, 8], "budget_s": 0.01}}
    p = {**job["params"], "dataset": "gaussian_mixture", "epochs": 1}
    p["precise_samples"] = [s for s in p.get("precise_samples", []) if s <= 256] or []
    p["test_batch_sizes"] = [b for b in p.get("test_batch_sizes", [300]) if b <= 300]
    return {"kind": "train", "params": p}


@pytest.mark.parametrize("name", NAMES)
def test_analysis_writes_findings_and_figures(name, tmp_path):
    s = study.load(name)
    jobs = s.jobs("quick")
    picked = [shrink(j) for j in jobs if j["params"].get("seed", 0) < 2][:8]
    if name == "momentum-batch-size":  # keep both models and two batch sizes
        picked = [shrink(j) for j in jobs
                  if j["params"]["seed"] < 2 and j["params"]["batch_size"] in (8, 64)]  # fmt: skip
    sweep.run(picked, tmp_path / "runs", n_jobs=2, progress=False)
    df = sweep.collect(tmp_path / "runs")
    body, figures = s.analyse(df)
    assert "## Findings" in body and "nan" not in body.split("## Findings")[1].split("##")[1]
    assert figures
    for png, fig in figures:
        assert png.endswith(".png") and fig.axes
        plt.close(fig)
