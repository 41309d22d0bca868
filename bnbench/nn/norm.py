"""Batch-norm layers on the bnbench kernels: BatchNorm (with the ghost and FrozenBN
options) and Batch Renormalization.

Modes: ``"train"`` normalises as training does (ghost batches, Batch Renorm's correction
or frozen statistics, by variant) and keeps what ``backward`` needs; ``"stats"`` is plain
batch norm with the whole batch's statistics, for the evaluation passes that measure
statistics (population, PreciseBN); ``"eval"`` uses ``eval_stats``, set by whoever
evaluates: ``(mean, var)``, or a callable ``(x) -> (mean, var)`` given the layer's input
(test-time adaptation, :mod:`bnbench.adaptation`). In ``"train"`` and ``"stats"`` mode
(after which ``backward`` works too: TENT, :mod:`bnbench.tent`) the statistics of the
whole batch go, with the number of values per channel, to every
estimator in ``observers`` (for ghost batches: their exact aggregate,
:func:`bnbench.merge_group_stats`).

``relu=True``: the layer is BN followed by a ReLU (the model builders set it where a ReLU
follows a BN, :func:`bnbench.nn.fuse_relu`). Plain batch norm (``"train"`` without ghost
batches or frozen statistics, ``"stats"``, ``"eval"``) runs the fused kernels
(:func:`bnbench.functional.batch_norm_relu_train` and its siblings); the variants that
have none (ghost batches, FrozenBN, Batch Renorm's training) run their own kernel, then
the ReLU (:class:`bnbench.nn.ReLU`'s kernels): the same values either way, bit for bit
on the CPU backend. The backward masks with the layer's output.
"""

import numpy as np

from .. import functional as F
from .._checks import check_axis, kernel_view
from .layers import Layer, relu_backward_kernel, relu_kernel


class BatchNorm(Layer):
    """Batch norm over channel ``axis``: 1 (``(N, C, *spatial)``) or -1 (channels-last,
    ``(N, *spatial, C)``; see :mod:`bnbench.functional`). A normaliser ``eval_stats(x)``
    gets ``x`` as a channel-first view either way.

    ``ghost_batch_size=G`` (Hoffer et al. 2017): in training, each group of G consecutive
    samples is normalised with its own statistics (a batch of exactly G, or smaller
    than G, is plain batch norm). :meth:`freeze` (Wu & Johnson 2021, section 4, FrozenBN):
    training goes on with fixed statistics, the layer then an affine map whose backward
    has no batch terms. ``relu=True``: followed by a ReLU, fused where the mode allows
    (see the module docstring).
    """

    def __init__(self, num_features, eps=1e-5, dtype=np.float32, backend="cpu",
                 ghost_batch_size=None, axis=1, relu=False):  # fmt: skip
        super().__init__()
        self.relu = relu
        self.fused = False  # whether the last train/stats forward ran a fused kernel
        self.num_features, self.eps, self.backend = num_features, eps, backend
        self.axis = axis
        self.ghost_batch_size = ghost_batch_size
        self._param("weight", np.ones(num_features, dtype))
        self._param("bias", np.zeros(num_features, dtype))
        self.observers = []
        self.eval_stats = None
        self.frozen = None  # (mean, var) while FrozenBN trains with fixed statistics
        self.last_batch = None  # (mean, var, count) of the last train/stats-mode batch

    def freeze(self, stats):
        """Train on with fixed ``(mean, var)`` (``None``: back to batch statistics)."""
        self.frozen = None if stats is None else tuple(np.asarray(s, np.float64) for s in stats)

    def _observe(self, mean, var, count):
        self.last_batch = (mean, var, count)
        for observer in self.observers:
            observer.update(mean, var, count)

    def forward(self, x, mode):
        if mode == "eval":
            return self._eval(x)
        self.fused = False
        y = self._normalise(x, mode)
        if self.relu:
            if not self.fused:  # a variant without a fused kernel: its output, then ReLU
                relu_kernel(y.reshape(-1), y.reshape(-1))  # in place: y is this layer's own
            self.y = y
        return y

    def _eval(self, x):
        if self.eval_stats is None:
            raise RuntimeError("BatchNorm in eval mode needs eval_stats = (mean, var)")
        stats = self.eval_stats
        if callable(stats):
            stats = stats(x if self._axis(x) == 1 else np.moveaxis(x, -1, 1))
        mean, var = (np.asarray(s, dtype=x.dtype) for s in stats)
        fn = F.batch_norm_relu_eval if self.relu else F.batch_norm_eval
        return fn(x, self.params["weight"], self.params["bias"], mean=mean, var=var,
                  eps=self.eps, axis=self.axis, backend=self.backend)  # fmt: skip

    def _normalise(self, x, mode):
        """The ``"train"`` / ``"stats"`` output, keeping what backward needs."""
        w, b = self.params["weight"], self.params["bias"]
        count = x.size // self.num_features
        self.x, self.kind = x, "plain"
        if mode == "train" and self.frozen is not None:
            return self._frozen_forward(x, count)
        G = self.ghost_batch_size
        if mode == "train" and G is not None and x.shape[0] > G:
            res = F.batch_norm_train(x, w, b, eps=self.eps, ghost_batch_size=G,
                                     axis=self.axis, backend=self.backend)  # fmt: skip
            self.kind, self.mean, self.invstd = "ghost", res.mean, res.invstd
            whole = F.merge_group_stats(res.mean, res.var, count=count // (x.shape[0] // G))
            self._observe(whole.mean, whole.var, whole.count)
            return res.y
        if mode == "train":
            res = self._train_forward(x)
        else:  # "stats": plain BN with the batch's statistics; backward works after it
            res = self._batch(x)  # (test-time adaptation by gradient, bnbench.tent)
            self.mean, self.invstd = res.mean, res.invstd
        self._observe(res.mean, res.var, count)
        return res.y

    def _plain(self, x):
        w, b = self.params["weight"], self.params["bias"]
        return F.batch_norm_train(x, w, b, eps=self.eps, axis=self.axis, backend=self.backend)

    def _batch(self, x):
        """Plain BN of ``x`` with its own statistics, with the ReLU fused if there is one."""
        if not self.relu:
            return self._plain(x)
        self.fused = True
        w, b = self.params["weight"], self.params["bias"]
        return F.batch_norm_relu_train(x, w, b, eps=self.eps, axis=self.axis,
                                       backend=self.backend)  # fmt: skip

    def _axis(self, x):
        return check_axis(self.axis, x)

    def _rows(self, a):
        """``(rows, C, L)`` float64 copy of ``a`` (x or dy): statistics over axes 0, 2."""
        return kernel_view(a, self._axis(a)).astype(np.float64)

    def _train_forward(self, x):
        res = self._batch(x)
        self.mean, self.invstd = res.mean, res.invstd
        return res

    def _frozen_forward(self, x, count):
        mean, var = self.frozen
        x3 = self._rows(x)
        self._observe(x3.mean(axis=(0, 2)), x3.var(axis=(0, 2)), count)  # estimators go on
        self.kind, self.invstd = "frozen", 1.0 / np.sqrt(var + self.eps)
        self.xhat = (x3 - mean[:, None]) * self.invstd[:, None]
        w, b = (self.params[k].astype(np.float64)[:, None] for k in ("weight", "bias"))
        return (self.xhat * w + b).astype(x.dtype).reshape(x.shape)

    def backward(self, dy):
        dy = np.ascontiguousarray(dy)
        if self.relu and not self.fused:  # the ReLU's backward first (mask: its output)
            masked = np.empty_like(dy)
            relu_backward_kernel(dy.reshape(-1), self.y.reshape(-1), masked.reshape(-1))
            dy = masked
        w = self.params["weight"]
        if self.kind == "frozen":  # an affine map with constant statistics
            d3 = self._rows(dy)
            self.grads["weight"][...] = (d3 * self.xhat).sum(axis=(0, 2))
            self.grads["bias"][...] = d3.sum(axis=(0, 2))
            scale = (w.astype(np.float64) * self.invstd)[:, None]
            return (d3 * scale).astype(dy.dtype).reshape(dy.shape)
        dx, dw, db = self._backward(dy)
        self.grads["weight"][...] = dw
        self.grads["bias"][...] = db
        return dx

    def _backward(self, dy):
        if self.fused:
            return F.batch_norm_relu_backward(dy, self.x, self.params["weight"], y=self.y,
                                              mean=self.mean, invstd=self.invstd,
                                              axis=self.axis, backend=self.backend)  # fmt: skip
        ghost = self.ghost_batch_size if self.kind == "ghost" else None
        return F.batch_norm_backward(dy, self.x, self.params["weight"], mean=self.mean,
                                     invstd=self.invstd, ghost_batch_size=ghost,
                                     axis=self.axis, backend=self.backend)  # fmt: skip


def renorm_clip(progress, rmax=3.0, dmax=5.0):
    """Batch Renorm's warm-up: ``(rmax, dmax)`` at ``progress`` (fraction of training).

    Ioffe (2017, section 4) trains with ``rmax = 1, dmax = 0`` (plain BN) for the first
    5k of 130k steps, then relaxes them to 3 and 5, reached at 40k and 25k steps. The
    same schedule as fractions of training: plain BN up to 4%, ``rmax`` linear to its
    maximum at 31%, ``dmax`` at 19%. For comparison, torchrl's ``BatchRenorm1d`` defaults
    to ``max_r=3, max_d=5, momentum=0.01`` and switches from BN to the full clipping
    after ``warmup_steps=10000`` (linearly with ``smooth=True``); Keras'
    ``BatchNormalization(renorm=True)`` takes ``renorm_clipping={"rmax", "rmin", "dmax"}``
    without a schedule (unclipped by default) and ``renorm_momentum=0.99`` (0.01 here).
    """
    start = 5 / 130
    tr = min(1.0, max(0.0, (progress - start) / (40 / 130 - start)))
    td = min(1.0, max(0.0, (progress - start) / (25 / 130 - start)))
    return 1.0 + (rmax - 1.0) * tr, dmax * td


class BatchRenorm(BatchNorm):
    """Batch Renormalization, Ioffe (2017), Algorithm 1.

    Training normalises each batch with its own statistics corrected towards the layer's
    moving averages ``mu`` and ``sigma``: with ``sigma_B = sqrt(var_B + eps)`` (biased
    batch variance, eps inside), ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` (constants of the backward pass),
    ``y = weight * ((x - mu_B) / sigma_B * r + d) + bias``; then ``mu <- mu + momentum
    (mu_B - mu)`` and ``sigma <- sigma + momentum (sigma_B - sigma)``: a moving average
    of the batch *standard deviation* (eps included), not of the variance. Inference uses
    ``y = weight * (x - mu) / sigma + bias`` (:attr:`statistics` gives them as the
    ``(mean, var)`` that BN's ``1/sqrt(var + eps)`` turns into exactly ``1/sigma``).
    ``rmax``/``dmax`` are set by the trainer (:func:`renorm_clip`); ``momentum`` is
    Ioffe's ``alpha`` (0.01, PyTorch convention).

    One documented choice the paper leaves open: ``mu`` and ``sigma`` start at the first
    training batch's ``mu_B`` and ``sigma_B``, not at 0 and 1 (with momentum 0.01 a start
    at 1 would still weigh 37% after 100 steps, and on a short run the correction would
    pull batches towards it). The torchrl / Keras convention (a moving average of the
    unbiased batch variance, ``sigma = sqrt(running_var + eps)``) differs from Algorithm
    1 where batches are small: at batch 2 its ``r`` averages 0.63 instead of about 1.
    """

    def __init__(self, num_features, eps=1e-5, dtype=np.float32, backend="cpu", momentum=0.01,
                 axis=1, relu=False):  # fmt: skip
        super().__init__(num_features, eps, dtype, backend, axis=axis, relu=relu)
        self.momentum = momentum
        self.running_mean = self.running_sigma = None  # set by the first training batch
        self.rmax, self.dmax = 1.0, 0.0

    @property
    def statistics(self):
        """``(mu, sigma^2 - eps)``: the moving averages as BN's ``(mean, var)``, float64
        (so that inference divides by exactly ``sigma``); ``None`` before training."""
        if self.running_mean is None:
            return None
        return self.running_mean.copy(), np.maximum(self.running_sigma**2 - self.eps, 0.0)

    def _train_forward(self, x):
        w, b = self.params["weight"], self.params["bias"]
        if self.running_mean is None:
            first = self._plain(x)
            self.running_mean = first.mean.astype(np.float64)
            self.running_sigma = np.sqrt(first.var.astype(np.float64) + self.eps)
        mean, var = self.statistics
        res = F.batch_renorm_train(
            x, w, b, running_mean=mean.astype(x.dtype), running_var=var.astype(x.dtype),
            rmax=self.rmax, dmax=self.dmax, eps=self.eps, axis=self.axis, backend=self.backend,
        )  # fmt: skip
        self.mean, self.invstd, self.r, self.d = res.mean, res.invstd, res.r, res.d
        self.kind = "renorm"
        self.running_mean += self.momentum * (res.mean - self.running_mean)
        sigma_b = np.sqrt(res.var.astype(np.float64) + self.eps)
        self.running_sigma += self.momentum * (sigma_b - self.running_sigma)
        return res

    def _backward(self, dy):
        if self.kind != "renorm":  # after a "stats" pass: plain BN
            return super()._backward(dy)
        return F.batch_renorm_backward(dy, self.x, self.params["weight"], mean=self.mean,
                                       invstd=self.invstd, r=self.r, d=self.d,
                                       axis=self.axis, backend=self.backend)  # fmt: skip
