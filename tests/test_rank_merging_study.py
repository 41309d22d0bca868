"""Sweep kind 'merging' and the rank-merging study: a tiny real run end to end."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest

pytest.importorskip("torch")

from bnbench import study  # noqa: E402
from bnbench.torch import merging  # noqa: E402


def test_a_merging_job_and_its_report():
    rows = []
    for seed in range(3):
        params = {"dataset": "gaussian_mixture", "model": "mlp", "epochs": 1, "seed": seed,
                  "estimators": ["population"], "bn_momenta": [0.1], "fractions": [1.0, 0.25]}  # fmt: skip
        rows += [
            {**r, "job_key": f"r{seed}"} for r in merging.result_rows(merging.run_job(params))
        ]
    df = pd.DataFrame(rows)
    exact = df[(df.scheme == "size_weighted") & (df.layer == "all")]
    assert (exact.var_error < 1e-9).all() and (exact.mean_error < 1e-9).all()
    rank0 = df[(df.scheme == "rank0") & (df.layer == "all")].groupby("fraction").mean_error.mean()
    assert rank0[0.25] > rank0[1.0] > 0  # rank 0 alone errs more as it holds less
    body, figures, found = study.load("rank-merging").analyse(df)
    assert "size-weighted (exact): 0.0000" in body and len(found) == 2
    for _, fig in figures:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"fractions must be numbers in \(0, 1\]"):
        merging.resolve_params({"fractions": [0.0]})
