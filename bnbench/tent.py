"""TENT for bnbench networks: test-time entropy minimisation of the BN affine parameters.

Wang, Shelhamer, Liu, Olshausen and Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization" (ICLR 2021), section 3 and the reference code (DequanWang/tent, ``tent.py``):

* every BN layer normalises with the test batch's own statistics (``configure_model``:
  ``track_running_stats = False``), so the running estimates play no part;
* only the BN affine parameters (``weight`` = scale, ``bias`` = shift) are updated; the
  loss is the mean over the batch of the prediction entropy
  ``H(p) = -sum_k p_k log p_k``, ``p = softmax(logits)``;
* one optimiser step per test batch (``STEPS: 1``); the prediction for the batch is the
  forward pass *before* that step (``forward_and_adapt`` returns the outputs it took the
  gradient of);
* the reference configuration's optimiser: Adam, learning rate 1e-3, betas (0.9, 0.999),
  no weight decay (``cfgs/tent.yaml``, CIFAR-10-C); its ImageNet-C setting is SGD with
  momentum 0.9 and learning rate 0.00025 (batch 64), available as ``optimizer="sgd"``;
* ``continual`` (the reference default, ``episodic=False``): the parameters and the
  optimiser state carry over from batch to batch; ``episodic``: both are reset to the
  source model before every batch. With one step, episodic TENT predicts exactly what
  prediction-time BN predicts (the update only acts on later batches): a fact of the
  method, kept so that a reader sees it measured.

A :class:`Tent` adapts a model in place; :meth:`Tent.restore` puts every BN parameter
back (the stream evaluation always does). A non-finite loss raises :class:`Diverged`.
"""

import numpy as np

#: the reference configuration's optimiser (cfgs/tent.yaml)
DEFAULT_LR = 1e-3
OPTIMIZERS = ("adam", "sgd")
MODES = ("continual", "episodic")


class Diverged(ValueError):
    """TENT's entropy became non-finite: the adapted network diverged."""


def entropy_and_grad(logits):
    """Per-example entropy ``(B,)`` of ``softmax(logits)`` (float64) and the gradient of
    their mean with respect to the logits ``(B, K)``: ``-p (log p + H) / B``."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    h = -(p * logp).sum(axis=1)
    return h, -p * (logp + h[:, None]) / z.shape[0]


def bn_parameters(model):
    """``(layer, name)`` of every BN affine parameter of ``model``, or a clear error for
    a network without any (TENT has nothing to adapt there)."""
    pairs = [(layer, name) for layer in getattr(model, "bn_layers", [])
             for name in ("weight", "bias") if name in layer.params]  # fmt: skip
    if not pairs:
        raise ValueError(
            "tent needs a network with BN affine parameters (weight and bias) to adapt, "
            f"got {type(model).__name__} without any"
        )
    return pairs


class Tent:
    """TENT on ``model`` (a bnbench network): call it with each test batch in stream order
    to get that batch's logits. ``lr`` > 0; ``optimizer`` ``"adam"`` (betas, eps as
    PyTorch's Adam) or ``"sgd"`` (``momentum``); ``mode`` one of :data:`MODES`."""

    def __init__(self, model, lr=DEFAULT_LR, mode="continual", optimizer="adam",
                 betas=(0.9, 0.999), eps=1e-8, momentum=0.9):  # fmt: skip
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float, np.floating))
            or not (np.isfinite(lr) and lr > 0)
        ):
            raise ValueError(f"tent learning rate must be a finite number > 0, got {lr!r}")
        if mode not in MODES:
            raise ValueError(f"tent mode must be one of {MODES}, got {mode!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"tent optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.model, self.lr, self.mode, self.optimizer = model, float(lr), mode, optimizer
        self.betas, self.eps, self.momentum = betas, eps, momentum
        self.params = bn_parameters(model)
        self.source = [layer.params[name].copy() for layer, name in self.params]
        self._reset_state()
        self.steps = 0  # optimiser steps taken, over the whole stream

    def _reset_state(self):
        self.m = [np.zeros(s.shape) for s in self.source]
        self.v = [np.zeros(s.shape) for s in self.source]
        self.t = 0

    def restore(self):
        """Every adapted parameter back to the source model's value; optimiser reset."""
        for (layer, name), value in zip(self.params, self.source, strict=True):
            layer.params[name][...] = value
        self._reset_state()

    def __call__(self, x):
        if self.mode == "episodic":
            self.restore()
        logits = self.model.forward(x, "stats")  # BN with the test batch's statistics
        h, grad = entropy_and_grad(logits)
        if not np.all(np.isfinite(h)):
            raise Diverged(f"tent diverged: non-finite entropy after {self.steps} steps")
        self.model.backward(grad.astype(logits.dtype))
        self._step()
        return logits

    def _step(self):
        self.t += 1
        self.steps += 1
        b1, b2 = self.betas
        for i, (layer, name) in enumerate(self.params):
            p, g = layer.params[name], layer.grads[name].astype(np.float64)
            if self.optimizer == "sgd":  # PyTorch's SGD with momentum (no dampening)
                self.m[i] = self.momentum * self.m[i] + g if self.t > 1 else g
                step = self.lr * self.m[i]
            else:  # PyTorch's Adam
                self.m[i] = b1 * self.m[i] + (1 - b1) * g
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                m_hat = self.m[i] / (1 - b1**self.t)
                v_hat = self.v[i] / (1 - b2**self.t)
                step = self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
            p[...] = (p - step).astype(p.dtype)
