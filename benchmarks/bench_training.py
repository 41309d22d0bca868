"""Training: one SGD step of each model and BN variant, its peak memory, and the test
accuracy of a small fixed training run per estimator (so an accuracy regression shows
beside a speed one)."""

import numpy as np
from threadpoolctl import threadpool_limits

from bnbench import data, nn, train

MODELS = ["mlp", "cnn"]
#: BN variant -> layer factory (as bnbench.train builds them)
VARIANTS = {
    "bn": nn.BatchNorm,
    "ghost16": lambda c, dtype: nn.BatchNorm(c, dtype=dtype, ghost_batch_size=16),
    "renorm": nn.BatchRenorm,
}


class TrainingStep:
    params = ([*MODELS, "resnet"], [16, 64, 256])
    param_names = ["model", "batch_size"]

    def setup(self, model, batch_size, norm=nn.BatchNorm):
        rng = np.random.default_rng(0)
        self.model = nn.build(model, 40, 10, rng, norm=norm)
        self.opt = nn.SGD(self.model, 0.05, 0.9, 5e-4)
        self.x = rng.standard_normal((batch_size, 40)).astype(np.float32)
        self.y = rng.integers(0, 10, batch_size)
        self.limits = threadpool_limits(1, user_api="blas")  # as bnbench.train does
        self.step()

    def teardown(self, model, batch_size):
        self.limits.restore_original_limits()

    def step(self):
        _, grad = nn.cross_entropy(self.model.forward(self.x, "train"), self.y)
        self.model.backward(grad)
        self.opt.step()

    def time_step(self, model, batch_size):
        self.step()

    def peakmem_step(self, model, batch_size):
        self.step()


class VariantStep(TrainingStep):
    """One SGD step of the CNN at batch 64 with each BN variant (ghost batches of 16,
    Batch Renorm with rmax = 3, dmax = 5)."""

    params = (list(VARIANTS),)
    param_names = ["variant"]

    def setup(self, variant):
        super().setup("cnn", 64, VARIANTS[variant])
        for layer in self.model.bn_layers:
            layer.rmax, layer.dmax = 3.0, 5.0

    def teardown(self, variant):
        self.limits.restore_original_limits()

    def time_step(self, variant):
        self.step()

    def peakmem_step(self, variant):
        self.step()


class Accuracy:
    """MNIST-1D, 3 epochs at batch size 64, seed 0: test accuracy per estimator (%)."""

    params = (MODELS, ["ema", "ema_debiased", "cumulative", "precise", "population", "test_batch"])
    param_names = ["model", "estimator"]
    timeout = 300

    def setup_cache(self):
        data.load("mnist1d")  # generated once, then cached on disk
        out = {}
        for model in MODELS:
            cfg = train.TrainConfig(
                model=model,
                epochs=3,
                bn_momenta=(0.1,),
                test_batch_sizes=(1000,),
                test_orders=("iid",),
            )
            for e in train.run(cfg)["evaluations"]:
                out[(model, e["estimator"])] = round(100 * e["test_accuracy"], 2)
        return out

    def track_test_accuracy(self, results, model, estimator):
        return results[(model, estimator)]

    track_test_accuracy.unit = "%"
