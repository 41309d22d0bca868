"""``TrainConfig``: everything that defines a training run and its evaluation, validated
on construction (bad input names the field), hashed whole by the sweep's cache key."""

import dataclasses

import numpy as np

from . import adaptation, corrupted
from . import data as datasets
from . import estimators as est
from .evaluate import AGGREGATIONS, ORDERS  # noqa: F401  (re-exported by train)
from .nn.sequential import check_depth
from .nn.zoo import DEPTH_MODELS, MODELS

DEFAULT_MOMENTA = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 0.9)
#: test-time adaptation modes, scored when named in ``estimators``
ADAPTATION = ("adabn", "prior", "online_ema", "robust_bn", "tent")
#: every name ``TrainConfig.estimators`` accepts
ESTIMATORS = est.NAMES + ADAPTATION
BN_VARIANTS = ("bn", "renorm")
BATCH_ORDERS = ("iid", "non_iid")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run and its evaluation.

    ``lr`` is the learning rate at batch size 64, scaled linearly with ``batch_size``
    (Goyal et al. 2017) up to ``max_lr``; SGD with Nesterov-free momentum ``momentum``,
    ``weight_decay`` on weights, 1 warm-up epoch then cosine decay. ``steps``, if set,
    replaces ``epochs``. ``bn_momenta`` are the EMA momenta tracked at once.
    PreciseBN runs once per (``precise_samples``, ``precise_batch_sizes``) pair, empty
    meaning the whole training set and the training batch size, and is reported with each
    of ``precise_aggregations``: ``"total_variance"`` (mean of batch variances plus
    variance of batch means; current fvcore) and/or ``"mean_of_batch_variances"`` (old
    fvcore, ``torch.optim.swa_utils.update_bn``).

    ``estimators`` may add the adaptation modes (:data:`ADAPTATION`): ``adabn`` (on the
    whole test set and on each of ``adapt_samples`` samples), ``prior`` (each of
    ``prior_strengths``), ``online_ema`` (each of ``online_momenta``) and ``robust_bn``
    (RoTTA's robust BN, its momentum 0.05); the modes that
    normalise test batches use ``test_batch_sizes`` x ``test_orders``. ``corruptions``
    (MNIST-1D-C names, :mod:`bnbench.shift`) at ``severities`` add shifted test sets;
    the clean test set is always scored.

    BN variants (Wu & Johnson 2021, section 4; Ioffe 2017): ``bn`` is ``"bn"`` or
    ``"renorm"`` (Batch Renorm, Ioffe's Algorithm 1, its ``rmax``/``dmax`` warm-up from
    :func:`bnbench.nn.renorm_clip`; scored also with each layer's own moving ``mu`` and
    ``sigma`` as estimator ``renorm``, the inference Ioffe prescribes); ``ghost_batch_size`` normalises groups of that many
    samples (the normalization batch size; plain BN only); ``frozen_fraction`` trains the
    last fraction of the steps with fixed population statistics computed exactly at the
    switch (FrozenBN; scored as estimator ``frozen``); ``batch_order="non_iid"`` draws
    each training batch from ``classes_per_batch`` random classes only.
    ``score_train_set`` also scores every estimator and mode on the training set itself
    (split ``"train"``: e.g. the training error with batch statistics).

    Test streams (:mod:`bnbench.streams`, scored by :mod:`bnbench.stream_eval`):
    ``streams`` names the kinds (e.g. ``("iid", "continual")``), each scored at every
    ``stream_batch_sizes`` with every method of ``estimators`` that runs on a stream
    (``population``, ``adabn``, ``test_batch``, ``prior``, ``online_ema``, ``robust_bn``,
    ``tent`` at each of ``tent_lrs`` x ``tent_modes``), on the dataset's corruptions at
    ``stream_severity`` (the gradual stream: 1-5-1 over the first
    ``gradual_corruptions``), each set cut to ``stream_examples`` examples; the
    class-correlated stream's Dirichlet concentration is ``dirichlet_alpha``. Every
    stream is built twice: over the dataset's held-out corruptions
    (``heldout_corruptions``, default the registry's ``HELDOUT``; ``stream_split``
    ``"heldout"``, for choosing hyperparameters) and over the others (``"test"``).

    ``depth``: the number of BN layers of the ``resnet`` model (default 8). ``eval_every``:
    score every estimator during training too, every so many steps or at fractions of
    training (e.g. ``(0.05, 0.1, ..., 0.95)``); each evaluation carries its ``step``.
    """

    dataset: str = "mnist1d"
    model: str = "cnn"
    batch_size: int = 64
    epochs: int = 40
    steps: int | None = None
    lr: float = 0.05
    max_lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    num_samples: int | None = None
    bn_momenta: tuple = DEFAULT_MOMENTA
    estimators: tuple = est.NAMES
    unbiased: bool = True
    precise_samples: tuple = ()
    precise_batch_sizes: tuple = ()
    precise_aggregations: tuple = ("total_variance",)
    test_batch_sizes: tuple = (2, 8, 32, 128, 1000)
    test_orders: tuple = ORDERS
    corruptions: tuple = ()
    severities: tuple = (1, 2, 3, 4, 5)
    adapt_samples: tuple = ()
    prior_strengths: tuple = (1, 4, 16, 64, 256)
    online_momenta: tuple = (0.1,)
    depth: int | None = None
    eval_every: int | tuple | None = None
    bn: str = "bn"
    ghost_batch_size: int | None = None
    frozen_fraction: float = 0.0
    batch_order: str = "iid"
    classes_per_batch: int = 2
    score_train_set: bool = False
    streams: tuple = ()
    stream_batch_sizes: tuple = (16,)
    stream_severity: int = 5
    stream_examples: int = 500
    dirichlet_alpha: float = 0.1
    gradual_corruptions: int = 2
    tent_lrs: tuple = (1e-3,)
    tent_modes: tuple = ("continual",)
    heldout_corruptions: tuple = ()

    def __post_init__(self):
        # tuples, so that configurations hash and serialise the same way
        for name in (
            "bn_momenta",
            "estimators",
            "test_batch_sizes",
            "test_orders",
            "precise_samples",
            "precise_batch_sizes",
            "precise_aggregations",
            "corruptions",
            "severities",
            "adapt_samples",
            "prior_strengths",
            "online_momenta",
            "streams",
            "stream_batch_sizes",
            "tent_lrs",
            "tent_modes",
            "heldout_corruptions",
        ):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name} must be a list or tuple, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.eval_every, (list, tuple)):
            object.__setattr__(self, "eval_every", tuple(self.eval_every))
        self.validate()

    def validate(self):
        for name in ("lr", "max_lr", "momentum", "weight_decay", "frozen_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {v!r}")

        def positive_int(name, minimum=1, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        if self.dataset not in datasets.DATASETS:
            raise ValueError(
                f"dataset must be one of {sorted(datasets.DATASETS)}, got {self.dataset!r}"
            )
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        positive_int("batch_size", 2)
        positive_int("epochs")
        positive_int("steps", optional=True)
        positive_int("seed", 0)
        positive_int("num_samples", 10, optional=True)
        if self.depth is not None:
            if self.model not in DEPTH_MODELS:
                raise ValueError(
                    f"depth applies to models {DEPTH_MODELS} only, got model {self.model!r}"
                )
            check_depth(self.depth)
        if self.bn not in BN_VARIANTS:
            raise ValueError(f"bn must be one of {BN_VARIANTS}, got {self.bn!r}")
        if self.ghost_batch_size is not None:
            positive_int("ghost_batch_size", 2)
            if self.bn != "bn":
                raise ValueError(f"ghost_batch_size applies to bn='bn' only, got bn={self.bn!r}")
            if self.batch_size % self.ghost_batch_size:
                raise ValueError(
                    f"ghost_batch_size must divide batch_size {self.batch_size}, "
                    f"got {self.ghost_batch_size}"
                )
        if isinstance(self.frozen_fraction, bool) or not 0 <= self.frozen_fraction < 1:
            raise ValueError(f"frozen_fraction must be in [0, 1), got {self.frozen_fraction!r}")
        if self.batch_order not in BATCH_ORDERS:
            raise ValueError(
                f"batch_order must be one of {BATCH_ORDERS}, got {self.batch_order!r}"
            )
        positive_int("classes_per_batch", 1)
        if self.batch_order == "non_iid" and self.batch_size < self.classes_per_batch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least classes_per_batch "
                f"({self.classes_per_batch}) for non_iid batches"
            )
        if isinstance(self.eval_every, tuple):
            if not self.eval_every or any(
                isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1
                for f in self.eval_every
            ):
                raise ValueError(
                    "eval_every must be a step count >= 1 or fractions of training in (0, 1], "
                    f"got {self.eval_every!r}"
                )
        elif self.eval_every is not None:
            positive_int("eval_every")
        for name in ("lr", "max_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum (SGD) must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        est.check_momenta(self.bn_momenta)
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators:
            raise ValueError(
                f"estimators must be a non-empty subset of {ESTIMATORS}, got {self.estimators!r}"
            )
        for name, minimum in (
            ("test_batch_sizes", 1),
            ("precise_samples", 1),
            ("precise_batch_sizes", 2),
            ("adapt_samples", 2),
        ):
            values = getattr(self, name)
            if any(isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                   or int(v) != v or v < minimum for v in values):  # fmt: skip
                raise ValueError(f"{name} must be integers >= {minimum}, got {values!r}")
        if not self.precise_aggregations or not set(self.precise_aggregations) <= set(
            AGGREGATIONS
        ):
            raise ValueError(
                f"precise_aggregations must be a non-empty subset of {AGGREGATIONS}, "
                f"got {self.precise_aggregations!r}"
            )
        if not set(self.test_orders) <= set(ORDERS):
            raise ValueError(f"test_orders must be a subset of {ORDERS}, got {self.test_orders!r}")
        batch_modes = [e for e in self.estimators if e in adaptation.BATCH_MODES]
        for name in ("test_batch_sizes", "test_orders"):
            if batch_modes and not getattr(self, name):
                raise ValueError(
                    f"{name} must not be empty: estimators {batch_modes} normalise test batches"
                )
        if "prior" in self.estimators and not self.prior_strengths:
            raise ValueError("prior_strengths must not be empty when estimators include 'prior'")
        for strength in self.prior_strengths:
            adaptation.check_strength(strength)
        est.check_momenta(self.online_momenta)
        if self.num_samples is not None and self.dataset not in datasets.SIZED:
            raise ValueError(
                f"num_samples applies to datasets {datasets.SIZED}, got dataset {self.dataset!r}"
            )
        if self.corruptions:
            if self.dataset not in corrupted.CORRUPTED:
                raise ValueError(
                    f"corruptions are MNIST-1D-C or MNIST-C test sets: dataset must be one of "
                    f"{sorted(corrupted.CORRUPTED)}, got {self.dataset!r}"
                )
            registry = corrupted.corruptions(self.dataset)
            unknown = [c for c in self.corruptions if c not in registry.CORRUPTIONS]
            if unknown:
                raise ValueError(
                    f"corruptions must be names in {sorted(registry.CORRUPTIONS)} (the "
                    f"{self.dataset} corruptions), got {unknown!r}"
                )
            if len(set(self.corruptions)) != len(self.corruptions):
                raise ValueError(f"corruptions must not repeat a name, got {self.corruptions!r}")
            if (not self.severities or len(set(self.severities)) != len(self.severities) or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer))
                or v not in registry.SEVERITIES for v in self.severities
            )):  # fmt: skip
                raise ValueError(
                    f"severities must be distinct integers in 0-5, got {self.severities!r}"
                )

        self._validate_streams()

    def _validate_streams(self):
        from . import streams as stream_kinds
        from .stream_eval import METHODS
        from .tent import MODES

        unknown = [k for k in self.streams if k not in stream_kinds.STREAMS]
        if unknown or len(set(self.streams)) != len(self.streams):
            raise ValueError(
                f"streams must be distinct names in {sorted(stream_kinds.STREAMS)}, got "
                f"{self.streams!r}"
            )
        if "tent" in self.estimators and not self.streams:
            raise ValueError("estimators 'tent' is scored on test streams: name some streams")
        if not self.streams:
            return
        if self.dataset not in corrupted.CORRUPTED:
            raise ValueError(
                f"streams are built from corrupted test sets: dataset must be one of "
                f"{sorted(corrupted.CORRUPTED)}, got {self.dataset!r}"
            )
        if not any(m in self.estimators for m in METHODS):
            raise ValueError(f"streams need estimators among {sorted(METHODS)}, got "
                             f"{self.estimators!r}")  # fmt: skip
        for name, minimum in (("stream_examples", 10), ("gradual_corruptions", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
        sizes = self.stream_batch_sizes
        if not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer))
                            or not 1 <= b <= self.stream_examples for b in sizes):  # fmt: skip
            raise ValueError(
                f"stream_batch_sizes must be integers in [1, stream_examples = "
                f"{self.stream_examples}], got {sizes!r}"
            )
        sev = self.stream_severity
        if isinstance(sev, bool) or not isinstance(sev, (int, np.integer)) or not 1 <= sev <= 5:
            raise ValueError(f"stream_severity must be an integer in 1-5, got {sev!r}")
        a = self.dirichlet_alpha
        if (
            isinstance(a, bool)
            or not isinstance(a, (int, float))
            or not (np.isfinite(a) and a > 0)
        ):
            raise ValueError(f"dirichlet_alpha must be a finite number > 0, got {a!r}")
        if "tent" in self.estimators:
            if not self.tent_lrs or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                        or not (np.isfinite(v) and v > 0) for v in self.tent_lrs):  # fmt: skip
                raise ValueError(f"tent_lrs must be numbers > 0, got {self.tent_lrs!r}")
            if not self.tent_modes or not set(self.tent_modes) <= set(MODES):
                raise ValueError(f"tent_modes must be a non-empty subset of {MODES}, got "
                                 f"{self.tent_modes!r}")  # fmt: skip
        registry = corrupted.corruptions(self.dataset)
        held = self.heldout_corruptions or registry.HELDOUT
        bad = [c for c in held if c not in registry.CORRUPTIONS]
        if bad or len(held) >= len(registry.CORRUPTIONS):
            raise ValueError(
                f"heldout_corruptions must be some (not all) of {sorted(registry.CORRUPTIONS)}, "
                f"got {tuple(held)!r}"
            )

    def to_dict(self):
        return dataclasses.asdict(self)
