"""Training: one SGD step of each model and BN variant, its peak memory, and the test
accuracy of a small fixed training run per estimator (so an accuracy regression shows
beside a speed one)."""

import functools

from threadpoolctl import threadpool_limits

from bnbench import data, nn, train
from bnbench.perf import steps

MODELS = ["mlp", "cnn"]
#: the models whose training step is timed against PyTorch's (the MNIST image CNN too)
STEP_MODELS = [*MODELS, "cnn2d"]
#: BN variant -> layer factory (as bnbench.train builds them)
VARIANTS = {
    "bn": nn.BatchNorm,
    "ghost16": functools.partial(nn.BatchNorm, ghost_batch_size=16),
    "renorm": nn.BatchRenorm,
}


class TrainingStep:
    """One SGD step (forward, loss, backward, SGD; an EMA estimator per BN layer), as
    the training-throughput study times it (:mod:`bnbench.perf.steps`)."""

    params = ([*STEP_MODELS, "resnet"], [2, 16, 64, 256, 512])
    param_names = ["model", "batch_size"]

    def setup(self, model, batch_size, norm=nn.BatchNorm):
        self.limits = threadpool_limits(1, user_api="blas")  # as bnbench.train does
        self.step = steps.bnbench_step(model, batch_size, norm=norm)
        self.model = self.step.model
        self.step()

    def teardown(self, *params):
        self.limits.restore_original_limits()

    def time_step(self, model, batch_size):
        self.step()

    def peakmem_step(self, model, batch_size):
        self.step()


class TorchTrainingStep:
    """The same step of the same network in PyTorch (CPU), Numba's thread count: the peer
    of :class:`TrainingStep` (the network definition is the training-throughput
    study's ``torch_network``). Skipped where torch is not installed."""

    params = (STEP_MODELS, [2, 16, 64, 256, 512])
    param_names = ["model", "batch_size"]

    def setup(self, model, batch_size):
        try:
            import torch
            from bnbench_studies.training_throughput import torch_network
        except ImportError as err:
            raise NotImplementedError(f"PyTorch peer unavailable: {err}") from err
        import numba

        torch.set_num_threads(numba.get_num_threads())
        self.step = steps.torch_step(torch_network(model), batch_size,
                                     features=steps.INPUT_FEATURES[model])  # fmt: skip
        self.step()

    def time_step(self, model, batch_size):
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
