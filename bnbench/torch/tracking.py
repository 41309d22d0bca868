"""Running estimators attached to a PyTorch model for the length of the user's own
training loop.

:func:`track` registers a forward pre-hook on every BN layer. Each time a BN layer runs
in training mode (exactly when PyTorch updates its ``running_mean``), the hook reads the
per-channel mean and biased variance of the layer's input (in float64, detached: the
training computation and its numerics are untouched) and feeds them to the estimators of
:mod:`bnbench.estimators`, the same classes the NumPy networks use: :class:`~bnbench.
estimators.EMA` at K momenta at once, :class:`~bnbench.estimators.DebiasedEMA` and
:class:`~bnbench.estimators.CumulativeAverage` (PyTorch's ``momentum=None``).

The estimators keep float64 NumPy state, so on a GPU every BN call copies two ``(C,)``
vectors to the host (one synchronisation per layer and step): the price of one
implementation of every estimator. The time spent in the hooks is in
:attr:`Tracker.seconds`.
"""

import contextlib
import time

from .. import estimators as est
from . import _core

#: the running estimators :func:`track` offers, by name
RUNNING = {"ema": est.EMA, "ema_debiased": est.DebiasedEMA, "cumulative": est.CumulativeAverage}


class Tracker:
    """The running estimators of one :func:`track` context, per BN layer."""

    def __init__(self, layers, estimators, momenta, unbiased):
        unknown = [e for e in estimators if e not in RUNNING]
        if unknown or not estimators:
            raise ValueError(
                f"estimators must be one or more of {sorted(RUNNING)}, got {list(estimators)!r}"
            )
        self.momenta = est.check_momenta(momenta)
        self.layers = layers
        self.estimators = {name: {} for name in estimators}
        self.devices = {}
        self.unbiased = unbiased
        self.seconds = 0.0
        self.updates = 0

    def _make(self, name, layer):
        cls = RUNNING[name]
        c = layer.num_features
        if cls is est.CumulativeAverage:
            return cls(c, unbiased=self.unbiased)
        return cls(c, momenta=self.momenta, unbiased=self.unbiased)

    def observe(self, name, x):
        t0 = time.perf_counter()
        mean, var, count = _core.batch_moments(x)
        self.devices[name] = x.device
        for kind, per_layer in self.estimators.items():
            if name not in per_layer:
                per_layer[name] = self._make(kind, self.layers[name])
            per_layer[name].update(mean, var, count)
        self.updates += 1
        self.seconds += time.perf_counter() - t0

    def statistics(self, estimator="ema", momentum=None):
        """``{layer: (mean, var)}`` of ``estimator`` (float64 tensors on the device the
        layer ran on); ``momentum`` picks one of the tracked momenta of an EMA (optional
        when only one was tracked)."""
        if estimator not in self.estimators:
            raise ValueError(
                f"estimator must be one of the tracked {sorted(self.estimators)}, "
                f"got {estimator!r}"
            )
        row = None
        if estimator != "cumulative":
            if momentum is None and self.momenta.size > 1:
                raise ValueError(
                    f"momentum must be one of {self.momenta.tolist()} for {estimator!r}"
                )
            matches = [k for k, m in enumerate(self.momenta) if momentum is None or m == momentum]
            if not matches:
                raise ValueError(
                    f"momentum must be one of {self.momenta.tolist()}, got {momentum!r}"
                )
            row = matches[0]
        missing = [n for n in self.layers if n not in self.estimators[estimator]]
        if missing:
            raise ValueError(
                f"BN layer(s) {missing} never ran in training mode inside the tracking "
                "context: they have no statistics"
            )
        out = {}
        for name, e in self.estimators[estimator].items():
            mean, var = (e.mean, e.var) if row is None else (e.mean[row], e.var[row])
            dev = self.devices[name]
            out[name] = (_core.as_tensor(mean, dev), _core.as_tensor(var, dev))
        return out


@contextlib.contextmanager
def track(model, momenta=(0.1,), estimators=tuple(RUNNING), unbiased=True):
    """Track running estimators of every BN layer of ``model`` while the body runs the
    user's own training loop; yields a :class:`Tracker`.

    ``momenta``: EMA momenta in (0, 1], PyTorch convention, all tracked at once;
    ``estimators``: any of ``"ema"``, ``"ema_debiased"``, ``"cumulative"``;
    ``unbiased``: feed the Bessel-corrected batch variance, as PyTorch does.

    A forward pass with the model in eval mode (a validation pass inside the loop) is
    ignored, as PyTorch ignores it; a BN layer in eval mode while the model trains
    (frozen BN) and a BN layer called twice in one forward pass are errors. The hooks are
    removed when the context exits, however it exits; the model's parameters, buffers and
    flags are never touched by the hooks. An error raised by a hook comes from inside the
    user's forward pass: what that pass did before it (say, the first call of a reused BN
    layer updating its buffers) is the user's own computation and stays::

        with track(model, momenta=[0.01, 0.1]) as tracker:
            for x, y in loader:
                ...  # the user's training step, unchanged
        stats = tracker.statistics("ema", momentum=0.01)
    """
    layers = _core.bn_layers(model)
    tracker = Tracker(layers, tuple(estimators), momenta, unbiased)
    hooks = _core.Hooks()
    guard = _core.PassGuard(model, hooks)

    def make_hook(name):
        def hook(module, args):
            guard.check(name)
            if module.training:
                tracker.observe(name, args[0])
            elif model.training:
                raise ValueError(
                    f"BN layer {name!r} ran in eval mode while the model trains: its "
                    "statistics cannot be tracked (call model.train() on the whole model)"
                )

        return hook

    try:
        for name, layer in layers.items():
            hooks.pre(layer, make_hook(name))
        yield tracker
    finally:
        hooks.remove()
