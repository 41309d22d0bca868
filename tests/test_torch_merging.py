"""bnbench.torch.merging, the sweep kind "merging": its parameters resolved with their
defaults (the cache key) or refused by name, and its result flattened into one row per
scheme, layer and shard fraction (the job run end to end: test_rank_merging_study.py)."""

import pytest

pytest.importorskip("torch")

from bnbench.torch import merging  # noqa: E402
from bnbench.torch.distributed import FRACTIONS  # noqa: E402
from bnbench.train import TrainConfig  # noqa: E402


def test_resolve_params_fills_every_default():
    p = merging.resolve_params({"dataset": "gaussian_mixture", "epochs": 1})
    assert p == {**TrainConfig(dataset="gaussian_mixture", epochs=1).to_dict(),
                 "fractions": list(FRACTIONS), "ranks": 2, "merge_batch_size": 32}  # fmt: skip
    q = merging.resolve_params({"fractions": [0.5, 1], "ranks": 4, "merge_batch_size": 8})
    assert (q["fractions"], q["ranks"], q["merge_batch_size"]) == ([0.5, 1], 4, 8)


@pytest.mark.parametrize("fractions", [[], [0.0], [1.5], ["half"], [0.5, -0.1]])
def test_fractions_outside_zero_one_are_refused(fractions):
    with pytest.raises(ValueError, match=r"fractions must be numbers in \(0, 1\]"):
        merging.resolve_params({"fractions": fractions})


@pytest.mark.parametrize("ranks", [1, 0, True, 2.0, "2"])
def test_ranks_must_be_an_integer_of_at_least_two(ranks):
    with pytest.raises(ValueError, match="ranks must be an integer >= 2"):
        merging.resolve_params({"ranks": ranks})


def test_a_training_field_it_does_not_know_is_refused():
    with pytest.raises(TypeError):
        merging.resolve_params({"no_such_field": 1})


def test_result_rows_flatten_the_config_and_stringify_the_shard_sizes():
    result = {
        "config": {"dataset": "gaussian_mixture", "seed": 3, "bn_momenta": [0.1]},
        "training": {"seconds": 1.0},
        "ranks": 2,
        "rows": [
            {"scheme": "rank0", "layer": "all", "fraction": 0.5, "sizes": [50, 100],
             "mean_error": 0.25},
            {"scheme": "size_weighted", "layer": "all", "fraction": 0.5, "sizes": [50, 100],
             "mean_error": 0.0},
        ],
    }  # fmt: skip
    rows = merging.result_rows(result)
    assert rows == [
        {"dataset": "gaussian_mixture", "seed": 3, "ranks": 2, "scheme": "rank0",
         "layer": "all", "fraction": 0.5, "sizes": "[50, 100]", "mean_error": 0.25},
        {"dataset": "gaussian_mixture", "seed": 3, "ranks": 2, "scheme": "size_weighted",
         "layer": "all", "fraction": 0.5, "sizes": "[50, 100]", "mean_error": 0.0},
    ]  # fmt: skip
