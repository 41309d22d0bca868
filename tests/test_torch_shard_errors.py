"""What each merging scheme costs as shards become uneven (bnbench.torch.shard_errors): on
one layer's values and on a torch model and a bnbench network, against the exact
statistics of the union; the model is left as it was."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bnbench.torch")
from test_torch_distributed import cnn, rank_batches, snapshot, untouched  # noqa: E402, F401

from bnbench.torch import distributed as bd  # noqa: E402
from bnbench.torch import shard_errors as se  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_merging_errors_grow_as_shards_become_uneven():
    rng = np.random.default_rng(0)  # ranks see different data: sorted, two groups
    x = np.concatenate([rng.normal(0, 1, (400, 4, 3)), rng.normal(1.5, 2, (400, 4, 3))])
    df = se.merging_errors(x)
    assert len(df) == len(bd.SCHEMES) * len(bd.FRACTIONS) * 2
    assert set(df.columns) >= {"scheme", "fraction", "sizes", "layer", "mean_error"}
    df = df[df.layer == "all"].set_index(["scheme", "fraction"]).sort_index(ascending=False)
    assert df.loc["size_weighted"][["mean_error", "var_error"]].max().max() < 1e-12
    assert df.loc[("equal_moments", 1.0), "mean_error"] < 1e-12  # equal sizes: exact
    for scheme in ("equal_moments", "equal_mean_var", "rank0"):
        assert df.loc[scheme].mean_error.is_monotonic_increasing, scheme
        assert df.loc[scheme].mean_error.iloc[-1] > 0.3
    assert df.loc["equal_moments"].var_error.is_monotonic_increasing
    assert df.loc[("rank0", 0.125), "sizes"] == "50,400"


def test_model_merging_errors_on_a_torch_model():
    model = cnn().double()
    x = torch.cat([b[0] for r in (0, 1) for b in rank_batches(r)])
    x = torch.cat([x, x * 0.5 + 3])  # ranks see different data
    snap = snapshot(model)
    for statistic in ("precise", "population"):
        df = se.model_merging_errors(model, x, statistic, batch_size=8)
        assert set(df.layer) == {"1", "4", "all"}
        df = df[df.layer == "all"].set_index(["scheme", "fraction"]).sort_index(ascending=False)
        assert df.loc["size_weighted"][["mean_error", "var_error"]].max().max() < 1e-9
        assert df.loc["rank0"].mean_error.is_monotonic_increasing, statistic
        assert df.loc["equal_moments"].mean_error.is_monotonic_increasing, statistic
    assert untouched(model, snap)


def test_model_merging_errors_on_a_bnbench_network():
    from bnbench.nn import mlp

    net = mlp(in_features=6, classes=3, hidden=8, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (64, 6)), rng.normal(2, 1, (64, 6))]).astype(np.float32)
    df = se.model_merging_errors(net, x, "population", fractions=(1.0, 0.5, 0.25), batch_size=16)
    df = df[df.layer == "all"].set_index(["scheme", "fraction"]).sort_index(ascending=False)
    assert df.loc["size_weighted"].mean_error.max() < 1e-6
    assert df.loc["rank0"].mean_error.is_monotonic_increasing
    assert all(layer.eval_stats is None for layer in net.bn_layers)
