"""Estimators: one update per training batch, and reading the estimate out."""

import numpy as np

from bnbench import estimators as est

from .common import channel

C = 100
MOMENTA = np.geomspace(0.001, 0.9, 8)
FACTORIES = {
    "ema": lambda: est.EMA(C, MOMENTA),
    "ema_debiased": lambda: est.DebiasedEMA(C, MOMENTA),
    "cumulative": lambda: est.CumulativeAverage(C),
    "precise": lambda: est.BatchAggregate(C),
}


class Estimators:
    params = list(FACTORIES)
    param_names = ["estimator"]

    def setup(self, name):
        self.est = FACTORIES[name]()
        self.mean, self.var = channel(C, np.float32), channel(C, np.float32, seed=1)
        self.est.update(self.mean, self.var, count=64)  # warm up

    def time_update(self, name):
        self.est.update(self.mean, self.var, count=64)

    def time_finalize(self, name):
        return self.est.mean, self.est.var
