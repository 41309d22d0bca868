"""bnbench for PyTorch models (the optional ``bnbench[torch]`` extra).

Every estimator of :mod:`bnbench.estimators`, scored, on a user's own
``torch.nn.Module`` with BatchNorm layers, and bnbench's kernels as a torch op:

* :func:`track`: running estimators (EMA at K momenta, debiased EMA, cumulative) fed by
  forward hooks during the user's own training loop;
* :func:`precise_statistics` (PreciseBN, both aggregations) and
  :func:`population_statistics` (exact, one pass per BN layer);
* :func:`evaluate` (accuracy, NLL, ECE) with fixed statistics or a test-time adaptation
  mode (:func:`prediction_time`, :func:`prior`, :func:`online_ema`; AdaBN is
  :func:`population_statistics` over unlabeled test data), and :func:`load_statistics`;
* :class:`BatchNorm1d`, :class:`BatchNorm2d` and :func:`batch_norm`: drop-in modules and
  an autograd function running bnbench's kernels.

Importing :mod:`bnbench` never imports torch; importing this package does.
"""

from .evaluation import (
    Adaptation,
    evaluate,
    online_ema,
    predict,
    prediction_time,
    prior,
    statistics_error,
)
from .statistics import (
    AGGREGATIONS,
    Statistics,
    load_statistics,
    population_statistics,
    precise_statistics,
)
from .tracking import RUNNING, Tracker, track

__all__ = [
    "AGGREGATIONS",
    "RUNNING",
    "Adaptation",
    "Statistics",
    "Tracker",
    "evaluate",
    "load_statistics",
    "online_ema",
    "population_statistics",
    "precise_statistics",
    "predict",
    "prediction_time",
    "prior",
    "statistics_error",
    "track",
]
