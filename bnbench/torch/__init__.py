"""bnbench for PyTorch models (the optional ``bnbench[torch]`` extra).

Every estimator of :mod:`bnbench.estimators`, scored, on a user's own
``torch.nn.Module`` with BatchNorm layers, and bnbench's kernels as a torch op:

* :func:`track`: running estimators (EMA at K momenta, debiased EMA, cumulative) fed by
  forward hooks during the user's own training loop;
* :func:`precise_statistics` (PreciseBN, both aggregations) and
  :func:`population_statistics` (exact, one pass per BN layer), on one process or merged
  exactly across the ranks of a ``torch.distributed`` process group; how other merging
  schemes err as per-rank batches become uneven: :mod:`bnbench.torch.distributed`;
* :func:`evaluate` (accuracy, NLL, ECE) with fixed statistics or a test-time adaptation
  mode (:func:`prediction_time`, :func:`prior`, :func:`online_ema`, :func:`robust_bn`,
  :func:`tent`; :func:`adabn` is the population statistics of unlabeled test data), and
  :func:`load_statistics`;
* :func:`diagnose`: is a model's eval-mode gap its BN statistics, and which estimate
  fixes it (a report folder with the answer);
* :class:`BatchNorm1d`, :class:`BatchNorm2d`, :func:`batch_norm` and :func:`convert`:
  drop-in modules and an autograd op running bnbench's kernels (:mod:`bnbench.torch.op`).

Importing :mod:`bnbench` never imports torch; importing this package does.
"""

from . import distributed
from .diagnosis import Diagnosis, diagnose, format_table, main_from_factories, paired_bootstrap
from .distributed import SCHEMES as MERGE_SCHEMES
from .evaluation import (
    Adaptation,
    adabn,
    evaluate,
    online_ema,
    predict,
    prediction_time,
    prior,
    robust_bn,
    statistics_error,
)
from .fold import fold
from .op import BatchNorm1d, BatchNorm2d, batch_norm, convert
from .shard_errors import merging_errors, model_merging_errors
from .statistics import (
    AGGREGATIONS,
    Statistics,
    load_statistics,
    population_statistics,
    precise_statistics,
)
from .tracking import RUNNING, Tracker, track
from .tta import MODEL_MODES as TENT_MODEL_MODES
from .tta import Diverged, Tent, tent

__all__ = [
    "AGGREGATIONS",
    "Diagnosis",
    "Diverged",
    "MERGE_SCHEMES",
    "RUNNING",
    "TENT_MODEL_MODES",
    "Tent",
    "Adaptation",
    "BatchNorm1d",
    "BatchNorm2d",
    "adabn",
    "Statistics",
    "Tracker",
    "batch_norm",
    "convert",
    "diagnose",
    "distributed",
    "evaluate",
    "fold",
    "format_table",
    "load_statistics",
    "main_from_factories",
    "merging_errors",
    "model_merging_errors",
    "online_ema",
    "paired_bootstrap",
    "population_statistics",
    "precise_statistics",
    "predict",
    "prediction_time",
    "prior",
    "robust_bn",
    "statistics_error",
    "tent",
    "track",
]
