"""The sweep engine: cache keys, resume, failures, Dask, provenance, old records."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import TINY

from bnbench import study, sweep


def tiny_jobs(n, **extra):
    return [{"kind": "train", "params": {**TINY, "seed": s, **extra}} for s in range(n)]


def test_cache_key_changes_with_every_parameter():
    base = tiny_jobs(1)[0]
    keys = {sweep.job_key(base)}
    for field, value in [("seed", 7), ("epochs", 2), ("model", "cnn"), ("bn_momenta", [0.2]),
                         ("test_batch_sizes", [100]), ("lr", 0.01)]:  # fmt: skip
        job = {"kind": "train", "params": {**base["params"], field: value}}
        keys.add(sweep.job_key(job))
    keys.add(sweep.job_key({"kind": "kernel", "params": base["params"]}))
    assert len(keys) == 8
    assert sweep.job_key(base) == sweep.job_key(json.loads(json.dumps(base)))


def test_cache_key_is_the_resolved_configuration():
    base = tiny_jobs(1)[0]
    params = base["params"]
    # defaults spelled out, NumPy scalars and tuples: the same run, the same key
    same = [
        {**params, "lr": 0.05, "momentum": 0.9, "batch_size": 64},
        {**params, "seed": np.int64(0), "epochs": np.int32(1), "bn_momenta": (np.float64(0.1),)},
    ]
    for p in same:
        assert sweep.job_key({"kind": "train", "params": p}) == sweep.job_key(base)
        assert sweep.config_key({"kind": "train", "params": p}) == sweep.config_key(base)
    assert sweep.job_key(base, threads=2) != sweep.job_key(base, threads=1)


def test_cache_key_changes_with_the_code_and_the_libraries(monkeypatch):
    base = tiny_jobs(1)[0]
    kernel = {"kind": "kernel", "params": {"shape": [64, 8], "budget_s": 0.01}}
    before = sweep.job_key(base), sweep.job_key(kernel)
    monkeypatch.setattr(sweep, "code_hash", lambda: "edited-source")
    assert sweep.job_key(base) != before[0]
    monkeypatch.undo()
    versions = {**sweep.library_versions(), "numba": "0.0.1"}
    monkeypatch.setattr(sweep, "library_versions", lambda: versions)
    assert sweep.job_key(base) != before[0]
    monkeypatch.undo()
    # kernel timings belong to a machine; training results to its CPU model only
    # (fastmath reassociation: another SIMD width can change the last bits)
    here = sweep.machine()
    monkeypatch.setattr(sweep, "machine", lambda: {**here, "host": "elsewhere", "cpu_count": 64})
    assert sweep.job_key(kernel) != before[1] and sweep.job_key(base) == before[0]
    monkeypatch.setattr(sweep, "machine", lambda: {**here, "cpu": "another CPU"})
    assert sweep.job_key(base) != before[0]


def test_source_hash_covers_every_module(tmp_path):
    """Editing any module of the package, a nested one included, or adding one, changes
    the code hash (before, the test only checked the hash's length)."""
    import shutil
    from pathlib import Path

    root = tmp_path / "bnbench"
    shutil.copytree(Path(sweep.__file__).parent, root,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    first = sweep.source_tree_hash(root)
    assert first == sweep.code_hash() and len(first) == 16
    seen = {first}
    for edit in ("stats.py", "nn/norm.py", "torch/evaluation.py"):
        path = root / edit
        path.write_text(path.read_text() + "\n# edited\n")
        seen.add(sweep.source_tree_hash(root))
    (root / "kernels" / "new_backend.py").write_text("x = 1\n")
    seen.add(sweep.source_tree_hash(root))
    assert len(seen) == 5


def test_a_code_change_reruns_instead_of_reusing(tmp_path, monkeypatch):
    jobs = tiny_jobs(1)
    assert sweep.run(jobs, tmp_path, n_jobs=1, progress=False) == (1, 0, 0)
    assert sweep.run(jobs, tmp_path, n_jobs=1, progress=False) == (0, 0, 1)
    monkeypatch.setattr(sweep, "code_hash", lambda: "edited-source")
    assert sweep.run(jobs, tmp_path, n_jobs=1, progress=False) == (1, 0, 0)
    # two records of one experiment: the table holds the newest only
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert sweep.collect(tmp_path).job_key.nunique() == 1


def test_run_skips_finished_jobs_and_collects_tidy_rows(tmp_path):
    jobs = tiny_jobs(3)
    assert sweep.run(jobs, tmp_path, n_jobs=2, progress=False) == (3, 0, 0)
    assert sweep.run(jobs, tmp_path, n_jobs=2, progress=False) == (0, 0, 3)
    df = sweep.collect(tmp_path)
    assert len(df) == 3 * 2  # ema and population per run
    assert set(df.seed) == {0, 1, 2} and df.job_key.nunique() == 3
    assert {
        "model",
        "batch_size",
        "estimator",
        "momentum",
        "test_accuracy",
        "train_seconds",
    } <= set(df.columns)


def test_failing_run_is_recorded_and_others_go_on(tmp_path):
    jobs = tiny_jobs(2) + [{"kind": "train", "params": {**TINY, "model": "nope"}}]
    done, failed, _ = sweep.run(jobs, tmp_path, n_jobs=2, progress=False)
    assert (done, failed) == (2, 1)
    ((job, error),) = sweep.failures(tmp_path)
    assert job["params"]["model"] == "nope" and "model must be one of" in error
    assert sweep.collect(tmp_path).job_key.nunique() == 2
    # a re-run with the same threads per job retries only the failed one
    assert sweep.run(jobs, tmp_path, n_jobs=2, progress=False) == (0, 1, 2)


def test_empty_grid_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="the grid is empty"):
        sweep.run([], tmp_path)


def test_dask_local_cluster_gives_the_same_table(tmp_path):
    pytest.importorskip("distributed")
    jobs = tiny_jobs(2)
    sweep.run(jobs, tmp_path / "local", n_jobs=2, progress=False)
    assert sweep.run(jobs, tmp_path / "dask", n_jobs=2, scheduler="local", progress=False)[0] == 2
    cols = [
        "job_key",
        "estimator",
        "momentum",
        "test_batch_size",
        "test_accuracy",
        "test_nll",
        "test_ece",
        "mean_error",
    ]
    a, b = (sweep.collect(tmp_path / d)[cols].sort_values(cols[:4]).reset_index(drop=True)
            for d in ("local", "dask"))  # fmt: skip
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("scheduler", [None, "local"])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_each_job_runs_with_its_share_of_the_threads(tmp_path, scheduler, n_jobs):
    # numba.set_num_threads acts on the calling thread only: under Dask, jobs run on pool
    # threads, so the count must be set inside each job (before the fix the worker's main
    # thread had 1 thread and the job ran with every core).
    if scheduler:
        pytest.importorskip("distributed")
    sweep.run(tiny_jobs(1), tmp_path, n_jobs=n_jobs, scheduler=scheduler, progress=False)
    (record,) = sweep.Store(tmp_path).records()
    assert record["provenance"]["threads"] == sweep.threads_per_job(n_jobs)


def test_every_record_carries_its_provenance(tmp_path):
    sweep.run(tiny_jobs(1), tmp_path, n_jobs=1, progress=False, meta={"study": "s"})
    (record,) = sweep.Store(tmp_path).records()
    prov = record["provenance"]
    assert {"git_commit", "git_dirty", "code", "host", "cpu", "threads", "versions"} <= set(prov)
    assert prov["code"] == sweep.code_hash() and prov["versions"]["numba"]
    assert record["study"] == "s" and record["key"] == sweep.job_key(
        tiny_jobs(1)[0], sweep.threads_per_job(1)
    )


def test_records_of_the_timing_kinds_still_load_after_the_move_to_perf():
    """Records name their job kind, never a module: a record written when the timings
    lived in bnbench.throughput and bnbench.step_timing resolves to bnbench.perf."""
    from bnbench.perf import kernels, steps

    assert sweep._module("kernel") is kernels and sweep._module("step") is steps
    old = [
        {"key": "k1", "job": {"kind": "kernel", "params": {"shape": [256, 1024], "budget_s": 0.3}},
         "result": {"rows": [{"op": "forward_train", "backend": "cpu", "median_ms": 0.1}]}},
        {"key": "k2", "job": {"kind": "step", "params": {"model": "mlp", "batch_size": 8}},
         "result": {"rows": [{"model": "mlp", "library": "bnbench", "median_ms": 0.2}]}},
    ]  # fmt: skip
    df = sweep.table(old)
    assert list(df.job_key) == ["k1", "k2"] and list(df.median_ms) == [0.1, 0.2]
    # the training-throughput study now names its PyTorch peer (the library has none):
    # its jobs resolve to what they resolved to when the peer was the library's default
    job = study.load("training-throughput").presets["quick"]()[0]
    peer = sweep.resolved(job)["params"]["peer"]
    assert peer == "bnbench_studies.training_throughput:torch_network"
