"""Scoring a trained network: the evaluation path (every estimator on the clean test set,
as a checkpoint does), each test-time adaptation mode over the test set, and the accuracy
of source statistics against AdaBN on corrupted MNIST-1D (tracked)."""

import numpy as np
from threadpoolctl import threadpool_limits

from bnbench import adaptation, data, evaluate, shift, train

MODES = {"test_batch": None, "prior": 16, "online_ema": 0.1}


class _Trained:
    """A CNN trained for one epoch on MNIST-1D; ``time_`` bodies score it on the 1000
    test samples."""

    timeout = 120

    def setup(self, *params):
        self.limits = threadpool_limits(1, user_api="blas")
        self.data = data.load("mnist1d")
        self.config = train.TrainConfig(model="cnn", epochs=1, bn_momenta=(0.1,),
                                        estimators=("ema", "population"))  # fmt: skip
        self.model, self.running, _ = train.train_network(self.config, self.data)
        self.source = evaluate.population_statistics(self.model, self.data.x_train)

    def teardown(self, *params):
        self.limits.restore_original_limits()


class AdaptationMode(_Trained):
    params = (list(MODES),)
    param_names = ["mode"]

    def time_predict_batches(self, mode):
        """The whole test set in batches of exactly 64, normalised by ``mode``."""
        d = self.data
        evaluate.predict_batches(self.model, d.x_test, d.y_test, 64, "iid",
                                 np.random.default_rng(0),
                                 lambda: adaptation.normalisers(mode, self.source, MODES[mode]))  # fmt: skip


class FixedStatistics(_Trained):
    def time_adabn(self):
        """AdaBN: the exact statistics of the test set, then a prediction with them."""
        stats = evaluate.population_statistics(self.model, self.data.x_test)
        evaluate.predict(self.model, self.data.x_test, stats)

    def time_evaluate_network(self):
        """Every estimator of the configuration scored once (a checkpoint's cost)."""
        evaluate.evaluate_network(self.model, self.data, self.config, self.running)


class ShiftAccuracy:
    """MNIST-1D CNN, 5 epochs, seed 0: test accuracy (%) at severity 5, mean over the
    corruptions, with the source statistics, AdaBN and prediction-time BN at 64."""

    params = (["population", "adabn", "test_batch"],)
    param_names = ["estimator"]
    timeout = 300

    def setup_cache(self):
        cfg = train.TrainConfig(model="cnn", epochs=5, bn_momenta=(0.1,),
                                estimators=("population", "adabn", "test_batch"),
                                test_batch_sizes=(64,), test_orders=("iid",),
                                corruptions=tuple(shift.CORRUPTIONS), severities=(5,))  # fmt: skip
        out = {}
        for e in train.run(cfg)["evaluations"]:
            if e["severity"] == 5 and e["adapt_samples"] in (None, 1000):
                out.setdefault(e["estimator"], []).append(100 * e["test_accuracy"])
        return {k: round(float(np.mean(v)), 2) for k, v in out.items()}

    def track_accuracy_severity5(self, results, estimator):
        return results[estimator]

    track_accuracy_severity5.unit = "%"
