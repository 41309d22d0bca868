"""TENT (Wang et al. 2021) on a user's own PyTorch model: the algorithm of
:mod:`bnbench.tent`, as the reference code (DequanWang/tent, ``tent.py``) runs it, with
torch's own autograd and optimisers.

``bnbench.torch.predict(model, batches, bnbench.torch.tent(...))`` (or ``evaluate``)
runs the stream in order; for each batch:

* every BN layer normalises with the batch's own statistics (the reference's
  ``track_running_stats = False``): its ``forward`` is replaced, for the run only, by
  ``F.batch_norm(x, None, None, weight, bias, training=True)``, so no running buffer is
  read or written;
* only the BN affine parameters (``weight``, ``bias``) require grad; the loss is the mean
  over the batch of the softmax entropy of the logits, one ``backward`` and one optimiser
  step (torch's ``Adam`` or ``SGD``) per batch;
* the batch's prediction is the forward pass *before* its step (``forward_and_adapt``
  returns the outputs it took the gradient of);
* ``episodic``: parameters and optimiser state reset to the source model before every
  batch; ``continual`` (the reference default): both carry over.

The rest of the model stays in eval mode by default (``model_mode="eval"``: dropout off,
the user's other layers as at inference), so the only difference from prediction-time BN
is the adaptation itself; ``model_mode="train"`` is the reference's ``model.train()``
(dropout active, every module's training flag set). BN layers use batch statistics
either way.

Afterwards every parameter (the adapted ones copied back bit for bit; the others are
never written), its ``requires_grad`` flag and ``.grad``, every buffer and every
module's train/eval flag are as before, and no hook or override is left: after an error
too. A non-finite loss raises :class:`bnbench.tent.Diverged`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import tent as np_tent
from ..tent import Diverged
from . import _core

#: ``model_mode`` values: the non-BN modules in eval mode, or the reference's model.train()
MODEL_MODES = ("eval", "train")

__all__ = ["MODEL_MODES", "Diverged", "Tent", "tent"]


def _number(value, name, low, high, low_open=False):
    """``value`` as a float in ``[low, high)`` (``(low, high)`` if ``low_open``), or a
    ``ValueError`` naming ``name``."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value < high
    )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high})"
        raise ValueError(f"tent {name} must be a number in {interval}, got {value!r}")
    return float(value)


class Tent:
    """TENT's configuration, given to :func:`bnbench.torch.predict` or
    :func:`~bnbench.torch.evaluate` in place of statistics (see :func:`tent`). After a run,
    ``steps`` is the number of optimiser steps taken and ``parameters`` ``{name: tensor}``
    the adapted BN weights and biases at the end of the stream (detached copies; the
    model itself is restored)."""

    def __init__(self, lr=np_tent.DEFAULT_LR, mode="continual", optimizer="adam",
                 betas=(0.9, 0.999), eps=1e-8, momentum=0.9, model_mode="eval"):  # fmt: skip
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float, np.integer, np.floating))
            or not (math.isfinite(lr) and lr > 0)
        ):
            raise ValueError(f"tent learning rate must be a finite number > 0, got {lr!r}")
        if mode not in np_tent.MODES:
            raise ValueError(f"tent mode must be one of {np_tent.MODES}, got {mode!r}")
        if optimizer not in np_tent.OPTIMIZERS:
            raise ValueError(
                f"tent optimizer must be one of {np_tent.OPTIMIZERS}, got {optimizer!r}"
            )
        if model_mode not in MODEL_MODES:
            raise ValueError(f"tent model_mode must be one of {MODEL_MODES}, got {model_mode!r}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"tent betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_number(b, f"betas[{i}]", 0, 1) for i, b in enumerate(betas))
        self.eps = _number(eps, "eps", 0, math.inf)
        self.momentum = _number(momentum, "momentum", 0, 1)
        self.lr, self.mode, self.optimizer = float(lr), mode, optimizer
        self.model_mode = model_mode
        self.steps, self.parameters = 0, {}

    def __repr__(self):
        extra = f"betas={self.betas}, eps={self.eps}" if self.optimizer == "adam" else (
            f"momentum={self.momentum}")  # fmt: skip
        return (
            f"Tent(lr={self.lr}, mode={self.mode!r}, optimizer={self.optimizer!r}, {extra}, "
            f"model_mode={self.model_mode!r})"
        )

    def _optimiser(self, params):
        if self.optimizer == "sgd":  # the reference's ImageNet-C setting (no dampening)
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)

    def predict(self, model, batches, device=None):
        """``(logits, labels)`` as NumPy arrays: each batch's pre-step logits, the batches
        ``(input, labels, ...)`` taken in order; what :func:`bnbench.torch.predict` runs."""
        layers = _core.bn_layers(model)
        adapted = {n: m for n, m in layers.items() if m.weight is not None and m.bias is not None}
        if not adapted:
            raise ValueError(
                f"tent needs BN affine parameters (weight and bias) to adapt, but every BN "
                f"layer of the model ({type(model).__name__}: {sorted(layers)}) has "
                "affine=False"
            )
        device = _core.check_device(_core.model_device(model) if device is None else device)
        names = [f"{n}.{k}" for n in adapted for k in ("weight", "bias")]
        params = [getattr(m, k) for m in adapted.values() for k in ("weight", "bias")]
        source = [p.detach().clone() for p in params]
        saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        logits, labels = [], []
        self.steps, self.parameters = 0, {}
        with _core.preserved(model) as hooks:
            try:
                model.train(self.model_mode == "train")
                for name, layer in layers.items():
                    hooks.override(layer, _batch_forward(name, layer))
                model.requires_grad_(False)
                for p in params:
                    p.requires_grad_(True)
                    p.grad = None
                optimiser = None
                for i, (x, rest) in enumerate(_core.iterate(batches, device, "tent")):
                    if not rest or not isinstance(rest[0], torch.Tensor):
                        raise TypeError(
                            f"batch {i} must be (input, labels): evaluate needs the labels"
                        )
                    if self.mode == "episodic" or optimiser is None:
                        with torch.no_grad():  # the source model, a fresh optimiser state
                            for p, value in zip(params, source, strict=True):
                                p.copy_(value)
                        optimiser = self._optimiser(params)
                    logits.append(self._step(model, x, optimiser))
                    labels.append(_core.to_numpy(rest[0]))
                self.parameters = {
                    n: p.detach().clone() for n, p in zip(names, params, strict=True)
                }
            finally:
                with torch.no_grad():
                    for p, value in zip(params, source, strict=True):
                        p.copy_(value)
                for p, flag, grad in saved:
                    p.requires_grad_(flag)
                    p.grad = grad
        return np.concatenate(logits), np.concatenate(labels)

    def _step(self, model, x, optimiser):
        """One forward, entropy, backward and optimiser step; the pre-step logits."""
        with torch.enable_grad():
            out = model(x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise TypeError(f"the model must return (N, classes) logits, got {out!r:.80}")
            loss = -(out.softmax(1) * out.log_softmax(1)).sum(1).mean(0)  # softmax_entropy
            if not bool(torch.isfinite(loss)):
                raise Diverged(f"tent diverged: non-finite entropy after {self.steps} steps")
            loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        self.steps += 1
        return _core.to_numpy(out)


def _batch_forward(name, layer):
    """A BN ``forward`` normalising with the input's own statistics, the layer's affine
    parameters and ``eps``, differentiable, touching no buffer."""

    def forward(x):
        if x.numel() == x.shape[1]:
            raise ValueError(
                f"tent: BN layer {name!r} normalises with the batch's own statistics, which "
                f"needs more than one value per channel, got an input of shape {tuple(x.shape)}"
            )
        return F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)

    return forward


def tent(lr=np_tent.DEFAULT_LR, mode="continual", optimizer="adam", betas=(0.9, 0.999),
         eps=1e-8, momentum=0.9, model_mode="eval"):  # fmt: skip
    """TENT for :func:`bnbench.torch.predict` / :func:`~bnbench.torch.evaluate`: ``lr``
    > 0 (1e-3, the reference's CIFAR-10-C setting); ``mode`` ``"continual"`` or
    ``"episodic"``; ``optimizer`` ``"adam"`` (``betas``, ``eps``, no weight decay) or
    ``"sgd"`` (``momentum``; the reference's ImageNet-C setting is lr 0.00025, momentum
    0.9); ``model_mode`` ``"eval"`` (dropout and other non-BN layers as at inference) or
    ``"train"`` (the reference's ``model.train()``)."""
    return Tent(lr, mode, optimizer, betas, eps, momentum, model_mode)
