"""Scoring statistics on a PyTorch model: accuracy, NLL and ECE (:mod:`bnbench.metrics`)
with every BN layer normalising with the statistics given, and the test-time adaptation
modes of :mod:`bnbench.adaptation` offered for torch models.

During :func:`evaluate` each BN layer's ``forward`` is replaced (an instance attribute,
removed afterwards) by inference-mode batch norm with the chosen statistics, computed
from the layer's own input where the mode adapts. The model's buffers are never written,
and its train/eval flags are put back, after an error too.

Adaptation modes (objects of :class:`Adaptation`), the same definitions as the NumPy
networks use (the normalisers of :mod:`bnbench.adaptation`, fed the layer's input as a
float64 NumPy array: on a GPU that is a copy to the host):

* :func:`prediction_time`: each test batch normalised with its own statistics (Nado et
  al. 2020), what BN in training mode does at test time, without touching buffers;
* :func:`prior`: Schneider et al. (2020): source and batch statistics mixed with prior
  strength ``N``;
* :func:`online_ema`: running statistics started at the source statistics and updated on
  the stream of test batches (each batch predicted after its own update);
* :func:`robust_bn`: RoTTA's robust BN layer (Yuan et al. 2023), the same EMA with the
  batch's biased variance and momentum 0.05 (:func:`bnbench.adaptation.robust_bn`).

TENT (Wang et al. 2021), which also updates the BN affine parameters, is
:func:`bnbench.torch.tta.tent`: a :class:`~bnbench.torch.tta.Tent` is accepted by
:func:`predict` and :func:`evaluate` in place of statistics.

AdaBN (Li et al. 2016) is fixed statistics, :func:`adabn`: the population statistics
of the unlabeled test data.
"""

import numpy as np
import torch

from .. import adaptation, metrics
from .. import evaluate as np_evaluate
from . import _core
from .tta import Tent


class Adaptation:
    """A test-time adaptation mode: ``mode`` one of :data:`bnbench.adaptation.BATCH_MODES`,
    ``source`` statistics ``{layer: (mean, var)}`` for the modes that start from them,
    ``param`` the prior strength or the online (or robust BN) momentum."""

    def __init__(self, mode, source=None, param=None):
        if mode not in adaptation.BATCH_MODES:
            raise ValueError(
                f"adaptation mode must be one of {sorted(adaptation.BATCH_MODES)}, got {mode!r}"
            )
        if mode != "test_batch" and not isinstance(source, dict):
            raise TypeError(
                f"{mode} needs source statistics {{layer: (mean, var)}}, got {source!r}"
            )
        self.mode, self.source, self.param = mode, source, param
        if mode != "test_batch":  # check the statistics and the parameter now
            if not source:
                raise ValueError(
                    f"{mode} needs source statistics {{layer: (mean, var)}}, got {{}}"
                )
            for name, stats in source.items():
                self._numpy(stats, f"source[{name!r}]")
            adaptation.normalisers(mode, [self._numpy(next(iter(source.values())))], param)

    @staticmethod
    def _numpy(stats, name="statistics", channels=None):
        """``(mean, var)`` as float64 NumPy ``(C,)`` arrays, checked: two 1-D arrays of
        one length (``channels`` if given), finite, ``var >= 0``."""
        if not isinstance(stats, (tuple, list)) or len(stats) != 2:
            raise ValueError(f"{name} must be a pair (mean, var), got {type(stats).__name__}")
        mean, var = (np.asarray(_core.to_numpy(torch.as_tensor(s)), np.float64) for s in stats)
        want = (channels,) if channels is not None else mean.shape
        if mean.ndim != 1 or mean.shape != want or var.shape != want:
            raise ValueError(
                f"{name} must be (mean, var) of shape {want if channels else '(C,)'} each, got "
                f"{mean.shape} and {var.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            raise ValueError(f"{name} must be finite, got NaN or infinite values")
        if np.any(var < 0):
            raise ValueError(f"{name}: var must be >= 0, got minimum {float(var.min())!r}")
        return mean, var

    def normalisers(self, layers):
        """Fresh per-layer normalisers (stateful modes start over)."""
        if self.mode == "test_batch":
            return {n: adaptation.batch_statistics() for n in layers}
        missing = sorted(set(layers) - set(self.source))
        if missing:
            raise ValueError(f"source statistics miss BN layer(s) {missing}")
        names = list(layers)
        made = adaptation.normalisers(self.mode, [
            self._numpy(self.source[n], f"source[{n!r}]", layers[n].num_features) for n in names
        ], self.param)  # fmt: skip
        return dict(zip(names, made, strict=True))

    def __repr__(self):
        return f"Adaptation({self.mode!r}, param={self.param!r})"


def prediction_time():
    """Prediction-time BN: every test batch normalised with its own statistics."""
    return Adaptation("test_batch")


def prior(source, strength):
    """Schneider et al. (2020): ``N/(N+n)`` source + ``n/(N+n)`` batch statistics."""
    return Adaptation("prior", source, strength)


def online_ema(source, momentum):
    """Running statistics from ``source``, updated on each test batch with ``momentum``."""
    return Adaptation("online_ema", source, momentum)


def robust_bn(source, momentum=adaptation.ROBUST_BN_MOMENTUM):
    """RoTTA's robust BN: running statistics from ``source``, updated on each test batch
    with ``momentum`` (0.05) and the batch's biased variance, the batch then normalised
    with the updated statistics (:func:`bnbench.adaptation.robust_bn`)."""
    return Adaptation("robust_bn", source, momentum)


def adabn(model, unlabeled_batches, device=None):
    """AdaBN (Li et al. 2016): the exact statistics of the unlabeled test data, layer by
    layer (:func:`bnbench.torch.population_statistics` over it: one pass per BN layer);
    score them with :func:`evaluate` like any fixed statistics."""
    from .statistics import population_statistics

    return population_statistics(model, unlabeled_batches, device)


def _adaptive(layer, normalise, check):
    def forward(x):
        check()  # an adapted layer called twice in one pass would adapt twice per batch
        mean, var = normalise(_core.to_numpy(x))
        return _core.fixed_forward(layer, *(torch.as_tensor(s) for s in (mean, var)))(x)

    return forward


def _check_fixed(statistics, layers):
    if set(statistics) != set(layers):
        raise ValueError(
            f"statistics must name every BN layer: missing {sorted(set(layers) - set(statistics))}"
            f", unknown {sorted(set(statistics) - set(layers))}"
        )
    for name, stats in statistics.items():
        Adaptation._numpy(stats, f"statistics[{name!r}]", layers[name].num_features)


def predict(model, batches, statistics=None, device=None):
    """``(logits, labels)`` as NumPy arrays: the model in eval mode, BN layers normalising
    with ``statistics`` (``None``: the model's own running buffers; a dict of fixed
    statistics; an :class:`Adaptation`; or a :class:`~bnbench.torch.tta.Tent`, which
    adapts the BN affine parameters on the stream: :meth:`Tent.predict`). Batches are
    ``(input, labels, ...)``, taken in order."""
    if isinstance(statistics, Tent):
        return statistics.predict(model, batches, device)
    layers = _core.bn_layers(model)
    device = _core.check_device(_core.model_device(model) if device is None else device)
    if statistics is not None and not isinstance(statistics, (dict, Adaptation)):
        raise TypeError(
            f"statistics must be None, a dict {{layer: (mean, var)}}, an Adaptation or a Tent, "
            f"got {type(statistics).__name__}"
        )
    if isinstance(statistics, dict):
        _check_fixed(statistics, layers)
    logits, labels = [], []
    with _core.preserved(model) as hooks, torch.no_grad():
        model.eval()
        if isinstance(statistics, Adaptation):
            guard = _core.PassGuard(model, hooks)
            for name, fn in statistics.normalisers(layers).items():
                hooks.override(layers[name],
                               _adaptive(layers[name], fn, lambda n=name: guard.check(n)))  # fmt: skip
        elif statistics is not None:
            for name, (mean, var) in statistics.items():
                hooks.override(layers[name], _core.fixed_forward(
                    layers[name], torch.as_tensor(mean), torch.as_tensor(var)))  # fmt: skip
        for i, (x, rest) in enumerate(_core.iterate(batches, device, "evaluate")):
            if not rest or not isinstance(rest[0], torch.Tensor):
                raise TypeError(f"batch {i} must be (input, labels): evaluate needs the labels")
            out = model(x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise TypeError(f"the model must return (N, classes) logits, got {out!r:.80}")
            logits.append(_core.to_numpy(out))
            labels.append(_core.to_numpy(rest[0]))
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(model, batches, statistics=None, device=None):
    """``{"accuracy", "nll", "ece", "samples"}`` of ``model`` on labelled ``batches`` with
    ``statistics`` (see :func:`predict`), computed by :func:`bnbench.metrics.scores`. The
    model's buffers and train/eval flags are exactly as before afterwards."""
    logits, labels = predict(model, batches, statistics, device)
    return {**metrics.scores(logits, labels), "samples": int(labels.shape[0])}


def statistics_error(statistics, reference, eps=None, *, model=None):
    """``(mean_error, var_error)`` of ``statistics`` against ``reference``, averaged over
    the layers of ``reference``: :func:`bnbench.evaluate.statistics_error` (RMS over
    channels of the mean error in reference standard deviations, ``(mean - mean_ref) /
    sqrt(var_ref + eps)``, and of ``log((var + eps) / (var_ref + eps))``).

    ``eps`` is the one BN layers normalise with, so it must be the layers' own: give the
    ``model`` the statistics belong to (each layer's ``eps`` is used for its statistics)
    or a number ``eps`` for every layer, exactly one of the two."""
    if (model is None) == (eps is None):
        raise TypeError(
            "statistics_error needs exactly one of model= (each BN layer's own eps) or eps= "
            f"(one for every layer), got model={type(model).__name__}, eps={eps!r}"
        )
    names = list(reference)
    if model is not None:
        layers = _core.bn_layers(model)
        unknown = sorted(set(names) - set(layers))
        if unknown:
            raise ValueError(f"reference names BN layer(s) {unknown} the model does not have")
        epss = [float(layers[n].eps) for n in names]
    else:
        epss = [float(eps)] * len(names)
    errs = np.array([
        np_evaluate.statistics_error(
            [tuple(_core.to_numpy(torch.as_tensor(s)) for s in statistics[n])],
            [tuple(_core.to_numpy(torch.as_tensor(s)) for s in reference[n])], e,
        )[0]
        for n, e in zip(names, epss, strict=True)
    ])  # fmt: skip
    return float(errs[:, 0].mean()), float(errs[:, 1].mean())
