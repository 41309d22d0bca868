"""Sweep kind ``"merging"``: how far each scheme of merging BN statistics across ranks is
from the exact statistics, on a trained bnbench network, as per-rank shards become uneven
(:func:`bnbench.torch.shard_errors.model_merging_errors`: detectron2's equal-weight
moments, mmpretrain's mean of per-rank means and variances, rank 0 alone, and the exact
size-weighted merge). Needs the torch extra (the merging code is shared with the torch
adapter)."""

import numpy as np

from ..train import TrainConfig, train_network
from .distributed import FRACTIONS
from .shard_errors import model_merging_errors

#: the job's own parameters, beside the TrainConfig fields
DEFAULTS = {"fractions": list(FRACTIONS), "ranks": 2, "merge_batch_size": 32}


def resolve_params(params):
    """Every parameter with its default (the cache key): TrainConfig fields and
    :data:`DEFAULTS`."""
    own = {k: params.get(k, v) for k, v in DEFAULTS.items()}
    rest = {k: v for k, v in params.items() if k not in DEFAULTS}
    fractions = own["fractions"]
    if not fractions or any(not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be numbers in (0, 1], got {fractions!r}")
    if isinstance(own["ranks"], bool) or not isinstance(own["ranks"], int) or own["ranks"] < 2:
        raise ValueError(f"ranks must be an integer >= 2, got {own['ranks']!r}")
    return {**TrainConfig(**rest).to_dict(), **own}


def run_job(params):
    """Train the network of ``params``, then every scheme's error for the population
    statistics and for PreciseBN over shuffled uneven shards of the training set."""
    from .. import data as datasets

    p = resolve_params(params)
    config = TrainConfig(**{k: v for k, v in p.items() if k not in DEFAULTS})
    data = datasets.load(config.dataset, config.num_samples)
    model, _, timing = train_network(config, data)
    x = data.x_train[np.random.default_rng([config.seed, 7]).permutation(len(data.x_train))]
    rows = []
    for statistic in ("population", "precise"):
        df = model_merging_errors(model, x, statistic, tuple(p["fractions"]), p["ranks"],
                                  batch_size=p["merge_batch_size"])  # fmt: skip
        rows += df.to_dict("records")
    return {"config": config.to_dict(), "training": timing, "rows": rows,
            "ranks": p["ranks"]}  # fmt: skip


def result_rows(result):
    config = {k: v for k, v in result["config"].items() if not isinstance(v, (list, tuple))}
    return [{**config, "ranks": result["ranks"], **{k: (str(v) if k == "sizes" else v)
                                                   for k, v in r.items()}}
            for r in result["rows"]]  # fmt: skip
