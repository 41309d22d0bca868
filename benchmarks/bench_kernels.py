"""Batch-norm kernels per backend, dtype and shape: time and effective bandwidth."""

import numpy as np

import bnbench as bn

from .common import BACKENDS, backend_or_skip, channel, synchronize, tensor

SHAPES = [(256, 1024), (128, 32, 40), (32, 64, 56, 56)]
BYTE_MODEL = {"forward_train": 3, "forward_eval": 2, "backward": 5}  # x input bytes
DTYPES = ["float32", "float64"]


class _Kernel:
    params = (BACKENDS, DTYPES, [str(s) for s in SHAPES])
    param_names = ["backend", "dtype", "shape"]
    op = None
    rounds = 1
    repeat = (3, 10, 2.0)  # 3-10 samples, stop after 2 s: every benchmark well under 10 s

    def setup(self, backend, dtype, shape):
        backend_or_skip(backend)
        shape = eval(shape)  # a tuple literal from our own params
        if backend == "reference" and np.prod(shape) > 1e6:
            raise NotImplementedError("the float64 oracle is too slow for this shape")
        self.backend = backend
        self.x = tensor(shape, dtype)
        self.dy = tensor(shape, dtype, seed=1)
        self.w = channel(shape[1], dtype)
        self.b = channel(shape[1], dtype, seed=1)
        self.out = np.empty_like(self.x)
        self.stats = bn.batch_norm_train(self.x, self.w, self.b, backend="reference")
        self.call()  # compile / warm up

    def call(self):
        raise NotImplementedError

    def _timed(self):
        self.call()
        synchronize(self.backend)

    def track_gbps(self, backend, dtype, shape):
        """Effective bandwidth of the median of 21 calls (3 calls swung +-40% between
        commits that did not touch the kernels on a shared 2-core VM)."""
        import time

        times = []
        for _ in range(21):
            t0 = time.perf_counter()
            self._timed()
            times.append(time.perf_counter() - t0)
        return BYTE_MODEL[self.op] * self.x.nbytes / float(np.median(times)) / 1e9

    track_gbps.unit = "GB/s"


class ForwardTrain(_Kernel):
    op = "forward_train"

    def call(self):
        bn.batch_norm_train(self.x, self.w, self.b, backend=self.backend, out=self.out)

    def time_forward_train(self, backend, dtype, shape):
        self._timed()


class ForwardEval(_Kernel):
    op = "forward_eval"

    def call(self):
        s = self.stats
        bn.batch_norm_eval(
            self.x, self.w, self.b, mean=s.mean, var=s.var, backend=self.backend, out=self.out
        )

    def time_forward_eval(self, backend, dtype, shape):
        self._timed()


class Backward(_Kernel):
    op = "backward"

    def call(self):
        s = self.stats
        bn.batch_norm_backward(
            self.dy,
            self.x,
            self.w,
            mean=s.mean,
            invstd=s.invstd,
            backend=self.backend,
            out=self.out,
        )

    def time_backward(self, backend, dtype, shape):
        self._timed()


class _Variant(_Kernel):
    """Ghost batch norm and Batch Renorm, with plain batch norm's parameters (backends,
    dtypes, shapes) so that asv compares them with ForwardTrain and Backward directly.
    A backend without the operation (the torch peer) is skipped."""

    variant = None
    G = 32  # ghost batch size where it divides N, else N // 2
    clip = {"rmax": 3.0, "dmax": 5.0}

    def setup(self, backend, dtype, shape):
        from bnbench.kernels import supports

        if not supports(backend_or_skip(backend), self.variant):
            raise NotImplementedError(f"{backend} has no {self.variant} kernel")
        super().setup(backend, dtype, shape)

    @property
    def ghost(self):
        N = self.x.shape[0]
        return self.G if N % self.G == 0 and N > self.G else N // 2

    @property
    def running(self):
        s = self.stats
        return {"running_mean": s.mean + 0.5, "running_var": s.var * 2, **self.clip}


class GhostForwardTrain(_Variant):
    op, variant = "forward_train", "ghost"

    def call(self):
        bn.batch_norm_train(self.x, self.w, self.b, ghost_batch_size=self.ghost,
                            backend=self.backend, out=self.out)  # fmt: skip

    def time_ghost_forward_train(self, backend, dtype, shape):
        self._timed()


class GhostBackward(_Variant):
    op, variant = "backward", "ghost"

    def setup(self, backend, dtype, shape):
        self.gstats = None
        super().setup(backend, dtype, shape)

    def call(self):
        if self.gstats is None:
            self.gstats = bn.batch_norm_train(self.x, self.w, self.b,
                                              ghost_batch_size=self.ghost, backend="reference")  # fmt: skip
        s = self.gstats
        bn.batch_norm_backward(self.dy, self.x, self.w, mean=s.mean, invstd=s.invstd,
                               ghost_batch_size=self.ghost, backend=self.backend, out=self.out)  # fmt: skip

    def time_ghost_backward(self, backend, dtype, shape):
        self._timed()


class RenormForwardTrain(_Variant):
    op, variant = "forward_train", "renorm"

    def call(self):
        bn.batch_renorm_train(self.x, self.w, self.b, **self.running, backend=self.backend,
                              out=self.out)  # fmt: skip

    def time_renorm_forward_train(self, backend, dtype, shape):
        self._timed()


class RenormBackward(_Variant):
    op, variant = "backward", "renorm"

    def setup(self, backend, dtype, shape):
        self.rstats = None
        super().setup(backend, dtype, shape)

    def call(self):
        if self.rstats is None:
            self.rstats = bn.batch_renorm_train(self.x, self.w, self.b, **self.running,
                                                backend="reference")  # fmt: skip
        s = self.rstats
        bn.batch_renorm_backward(self.dy, self.x, self.w, mean=s.mean, invstd=s.invstd, r=s.r,
                                 d=s.d, backend=self.backend, out=self.out)  # fmt: skip

    def time_renorm_backward(self, backend, dtype, shape):
        self._timed()


class RunningUpdate:
    """Running-statistics update for K momenta at once."""

    params = (BACKENDS, [1, 8, 64])
    param_names = ["backend", "momenta"]

    def setup(self, backend, k):
        backend_or_skip(backend)
        self.backend = backend
        self.rm, self.rv = np.zeros((k, 256)), np.ones((k, 256))
        self.mean, self.var = channel(256, np.float64), channel(256, np.float64, seed=1)
        self.momenta = np.geomspace(0.001, 0.9, k)
        self.call()

    def call(self):
        bn.update_running_stats(
            self.rm,
            self.rv,
            mean=self.mean,
            var=self.var,
            count=64,
            momenta=self.momenta,
            backend=self.backend,
        )

    def time_update(self, backend, k):
        self.call()
        synchronize(self.backend)


def timeraw_cold_compile():
    """First call of every CPU kernel with Numba's cache off: what a fresh install pays."""
    return """
import os
os.environ["BNBENCH_NUMBA_CACHE"] = "0"
import numpy as np
import bnbench as bn
for shape in [(64, 8), (4, 8, 10)]:
    x = np.ones(shape, np.float32) + np.arange(shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    r = bn.batch_norm_train(x)
    bn.batch_norm_eval(x, mean=r.mean, var=r.var)
    bn.batch_norm_backward(x, x, mean=r.mean, invstd=r.invstd)
"""


timeraw_cold_compile.repeat = 1
timeraw_cold_compile.number = 1
timeraw_cold_compile.timeout = 300
