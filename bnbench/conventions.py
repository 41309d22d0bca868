"""Batch-norm conventions across frameworks: momentum, eps, running variance, state names.

The most common BN porting bug is a convention mismatch: Keras' ``momentum=0.99`` is
PyTorch's ``momentum=0.01``, PyTorch stores the unbiased (Bessel) batch variance where
Keras 3 and Flax store the biased one, Haiku reads a zero-debiased average. This module is
pure conventions, each entry of :data:`FRAMEWORKS` with the source lines that show it;
measuring what a mistake costs is a study's job, and :func:`misread_momentum` and
:func:`bessel_factor` are the helpers it needs.

Every framework here normalises with ``(x - mean) / sqrt(var + eps)`` (eps inside the
square root, in training and at inference), so eps carries over unchanged; only
TF-Keras 2's fused path floors it (:func:`convert_eps`). To port a trained layer so that
it computes the same outputs, copy the stored values (``preserve="outputs"`` in
:func:`convert_running_stats`); rescaling them to the target's variance convention gives
what the target would have stored, which is what a comparison of frameworks needs.
"""

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Convention:
    """One framework's BN conventions.

    ``momentum_weights`` is ``"new"`` when the argument is the weight of the new batch,
    ``r <- (1 - m) r + m * batch`` (PyTorch, MLX), ``"old"`` when it is the weight of the
    old running value, ``r <- m r + (1 - m) batch`` (Keras, Flax, Haiku's ``decay_rate``).
    ``running_var`` is ``"unbiased"`` (batch variance times ``n / (n - 1)``, ``n`` values
    per channel) or ``"biased"`` (divided by ``n``). ``debiased``: the value read is the
    EMA divided by ``1 - decay**steps`` (then ``initial_*`` has no weight). ``eps_floor``:
    the layer uses ``max(eps, eps_floor)``. ``mean_key``/``var_key`` name the state in
    :func:`convert_running_stats`; ``state`` says where it lives in the framework.
    """

    name: str
    layer: str
    momentum_arg: str
    momentum_weights: str
    default_momentum: float | None
    eps_arg: str
    default_eps: float
    running_var: str
    mean_key: str
    var_key: str
    state: str
    sources: tuple[str, ...]
    eps_floor: float | None = None
    debiased: bool = False
    initial_mean: float = 0.0
    initial_var: float = 1.0
    notes: str = ""


_TORCH = "pytorch/pytorch (torch 2.13.0) torch/"
_K3 = "keras-team/keras@3422977 keras/src/"
_TFK = (
    "keras-team/tf-keras@dd0a723 tf_keras/layers/normalization/batch_normalization.py "
    "(and keras-team/keras v2.15.0, same lines): `momentum=0.99, epsilon=1e-3` (l. 172-173), "
    "zeros/ones initializers (l. 178-179), `(variable - value) * decay`, decay = 1 - "
    "momentum (l. 867-870), fused for rank 4/5 (l. 357); `_bessels_correction_test_only = "
    "True` (l. 243) makes the Bessel fix-up a no-op (l. 948): fused keeps TF's Bessel-"
    "corrected variance (comment l. 946), unfused uses tf.nn.moments (l. 1136, 'sample "
    "variance, not unbiased variance' in tensorflow/python/ops/nn_impl.py) and "
    "`rsqrt(variance + variance_epsilon)` (l. 788-794)"
)
_FLAX = (
    "`momentum: float = 0.99`, `epsilon: float = 1e-5`, `lax.rsqrt(var + epsilon)`, "
    "_compute_stats `mu2 - _abs_sq(mu)` or `mean(_abs_sq(x - mu))` (biased)"
)
_MLX = "ml-explore/mlx@846d176 python/mlx/nn/layers/normalization.py"
_NEW = dict(momentum_arg="momentum", momentum_weights="new", default_momentum=0.1)
_NEW.update(eps_arg="eps", default_eps=1e-5, mean_key="running_mean", var_key="running_var")
_OLD = dict(momentum_arg="momentum", momentum_weights="old", default_momentum=0.99)
_OLD.update(eps_arg="epsilon", default_eps=1e-3, mean_key="moving_mean")
_OLD.update(var_key="moving_variance", state="non-trainable weights of the same names")
_OLD_FLAX = {**_OLD, "default_eps": 1e-5, "mean_key": "mean", "var_key": "var"}
_MLX_STATE = "frozen parameters running_mean, running_var"

_TABLE = (
    Convention(
        name="pytorch",
        layer="torch.nn.BatchNorm1d/2d/3d",
        running_var="unbiased",
        state="buffers running_mean, running_var, num_batches_tracked (= steps)",
        notes="momentum=None is a cumulative average (weight 1/num_batches_tracked)",
        sources=(
            f"{_TORCH}nn/modules/batchnorm.py: `eps: float = 1e-5, momentum: float | None = "
            "0.1` (l. 41-42), torch.zeros/torch.ones buffers (l. 67-71), 'moving average of "
            "the variance is calculated via the unbiased estimator' (l. 321-324), `(1 - "
            "momentum) * x_hat + momentum * x_t` (l. 339)",
            f"{_TORCH}_decomp/decompositions.py: `torch.rsqrt(biased_var + eps)` (l. 2098), "
            "`unbiased_var = squeezed_var * (n / (n - 1))`, `new_running_var = momentum * "
            "unbiased_var + (1 - momentum) * running_var` (l. 2114-2115); checked against "
            "torch.nn.BatchNorm1d in tests/test_conventions.py",
        ),
        **_NEW,
    ),
    Convention(
        name="keras3",
        layer="keras.layers.BatchNormalization (Keras 3, every backend)",
        running_var="biased",
        sources=(
            f"{_K3}layers/normalization/batch_normalization.py: `momentum=0.99, epsilon=1e-3`"
            " (l. 163-164), zeros/ones initializers (l. 169-170), `moving_mean * momentum + "
            "mean * (1.0 - momentum)` (l. 386-390)",
            f"{_K3}backend/*/nn.py: moments biased on every backend (jax `jnp.var` l. 1056, "
            "numpy/torch `mean(square(x)) - square(mean)` l. 953/1043, tensorflow "
            "tf.nn.moments l. 1623); `rsqrt(variance + epsilon)` (jax l. 1082, torch l. 1090)",
        ),
        **_OLD,
    ),
    Convention(
        name="tf_keras2",
        layer="tf_keras / tf.keras (Keras 2) BatchNormalization, fused path",
        running_var="unbiased",
        eps_floor=1.001e-5,
        notes="fused is the default for 4-D/5-D input with the channel axis 1 or last and "
        "no renorm, virtual_batch_size, adjustment or float64; on GPU the kernel is cuDNN",
        sources=(
            _TFK,
            "tensorflow/tensorflow tensorflow/core/kernels/fused_batch_norm_op.cc (CPU): "
            "`(exponential_avg_factor * rest_size_adjust) * batch_variance`, rest_size_adjust"
            " = n / (n - 1) 'for Bessel's correction'; tensorflow/python/ops/nn_impl.py "
            "fused_batch_norm: `min_epsilon = 1.001e-5`, `epsilon if epsilon > min_epsilon`",
        ),
        **_OLD,
    ),
    Convention(
        name="tf_keras2_unfused",
        layer="tf_keras / tf.keras (Keras 2) BatchNormalization, unfused path",
        running_var="biased",
        notes="2-D (Dense) input, fused=False, renorm, virtual_batch_size, synchronized",
        sources=(_TFK,),
        **_OLD,
    ),
    Convention(
        name="flax_linen",
        layer="flax.linen.BatchNorm",
        running_var="biased",
        sources=(
            "google/flax@18f8f31 flax/linen/normalization.py: zeros/ones (l. 358-371), "
            f"`momentum * ra_mean.value + (1 - momentum) * mean` (l. 401-404); {_FLAX}",
        ),
        **{**_OLD_FLAX, "state": "variables['batch_stats'][layer]['mean'], [...]['var']"},
    ),
    Convention(
        name="flax_nnx",
        layer="flax.nnx.BatchNorm",
        running_var="biased",
        sources=(
            "google/flax@18f8f31 flax/nnx/nn/normalization.py: zeros/ones (l. 312-313), "
            f"`momentum * self.mean[...] + (1 - momentum) * mean` (l. 404-409); {_FLAX}",
        ),
        **{**_OLD_FLAX, "state": "nnx.BatchStat attributes layer.mean, layer.var"},
    ),
    Convention(
        name="haiku",
        layer="hk.BatchNorm",
        momentum_arg="decay_rate",
        momentum_weights="old",
        default_momentum=None,
        eps_arg="eps",
        default_eps=1e-5,
        running_var="biased",
        debiased=True,
        initial_var=0.0,
        mean_key="mean_ema/average",
        var_key="var_ema/average",
        state="state['batch_norm/~/mean_ema'] and ['.../var_ema'], each with average, "
        "hidden and counter (= steps); shape (1, ..., 1, C)",
        notes="decay_rate has no default; hidden starts at 0; inference reads average",
        sources=(
            "google-deepmind/dm-haiku@f4d858a haiku/_src/batch_norm.py: `decay_rate: float, "
            "eps: float = 1e-5` (l. 68-69), `hk.ExponentialMovingAverage(decay_rate, "
            "name='mean_ema')` (l. 124-125), `var = mean_of_squares - jnp.square(mean)` "
            "(l. 181), `rsqrt(var + eps)` (l. 204)",
            "google-deepmind/dm-haiku@f4d858a haiku/_src/moving_averages.py: `zero_debias: "
            "bool = True` (l. 50), hidden init jnp.zeros (l. 122), `hidden * decay + value * "
            "(one - decay)` (l. 123), `average /= (one - jnp.power(decay, counter))` (l. 127)",
        ),
    ),
    Convention(
        name="mlx",
        layer="mlx.nn.BatchNorm (MLX >= 0.32.1)",
        running_var="unbiased",
        state=_MLX_STATE,
        sources=(
            f"{_MLX}: `eps: float = 1e-5, momentum: float = 0.1` (l. 321-322), mx.zeros/"
            "mx.ones (l. 340-341), `_calc_stats(x, ddof=1)` and `(1 - mu) * self.running_var"
            " + mu * running_var` (l. 405-407), `mx.rsqrt(var + self.eps)` (l. 412); since "
            "43c9e03 'Fix BatchNorm running variance estimator (#3817)', first in v0.32.1",
        ),
        **_NEW,
    ),
    Convention(
        name="mlx_pre_0_32_1",
        layer="mlx.nn.BatchNorm (MLX <= 0.32.0)",
        running_var="biased",
        state=_MLX_STATE,
        sources=(
            "ml-explore/mlx@43c9e03^ python/mlx/nn/layers/normalization.py: `(1 - mu) * "
            "self.running_var + mu * var`, var from `mx.var(..., ddof=0)` (l. 375-378)",
        ),
        **_NEW,
    ),
)

#: The table: framework name -> :class:`Convention`.
FRAMEWORKS = {c.name: c for c in _TABLE}


def check_framework(name, argument="framework"):
    """The :class:`Convention` of framework ``name``, or a ValueError listing the known ones."""
    if not isinstance(name, str) or name not in FRAMEWORKS:
        raise ValueError(f"{argument} must be one of {sorted(FRAMEWORKS)}, got {name!r}")
    return FRAMEWORKS[name]


def _number(value, argument, expected, ok, integer=False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not ok(value):
        raise ValueError(f"{argument} must be {expected}, got {value!r}")
    return value if integer else float(value)


def _check_momentum(value, argument="value"):
    return _number(value, argument, "a momentum in (0, 1)", lambda v: 0 < v < 1)


def batch_weight(value, framework):
    """The weight of the new batch, ``1 - decay``, that ``value`` means in ``framework``."""
    conv = check_framework(framework)
    value = _check_momentum(value)
    return value if conv.momentum_weights == "new" else 1.0 - value


def convert_momentum(value, source, target):
    """The momentum for ``target`` that means what ``value`` means in ``source``
    (``convert_momentum(0.99, "keras3", "pytorch") == 0.01``, up to rounding)."""
    src, tgt = check_framework(source, "source"), check_framework(target, "target")
    value = _check_momentum(value)
    return value if src.momentum_weights == tgt.momentum_weights else 1.0 - value


def misread_momentum(value, written_in, read_as):
    """The momentum a user effectively gets by passing ``value``, meant in ``written_in``'s
    convention, unchanged to a ``read_as`` layer; returned in ``written_in``'s convention, so
    it compares directly with ``value`` (pytorch 0.1 read by Keras: 0.9)."""
    check_framework(written_in, "written_in")
    check_framework(read_as, "read_as")
    return convert_momentum(_check_momentum(value), read_as, written_in)


def bessel_factor(count):
    """``count / (count - 1)``: unbiased variance over biased, ``count`` values per channel."""
    count = _number(count, "count", "an integer >= 2 (values per channel)", lambda v: v >= 2, True)
    return count / (count - 1)


def convert_eps(value, source, target):
    """The eps to build the ``target`` layer with so that it normalises like ``source``.

    Every framework here adds eps inside the square root, ``1 / sqrt(var + eps)``, so the
    value carries over (the mistake is to keep the target's default: Keras' 1e-3 is 100
    times PyTorch's 1e-5). TF-Keras 2's fused path uses ``max(eps, 1.001e-5)``: from it the
    effective eps is returned; into it, a smaller eps cannot be matched and a warning says so.
    """
    src, tgt = check_framework(source, "source"), check_framework(target, "target")
    value = _number(value, "eps", "a positive finite number", lambda v: 0 < v < math.inf)
    eps = max(value, src.eps_floor or 0.0)
    if tgt.eps_floor is not None and eps < tgt.eps_floor:
        warnings.warn(
            f"{target} uses max(eps, {tgt.eps_floor}): eps={eps} cannot be reproduced",
            stacklevel=2,
        )
    return eps


def _stat(state, key, source):
    if key not in state:
        raise ValueError(f"state must have key {key!r} for source={source!r}, got {sorted(state)}")
    a = np.array(state[key], dtype=np.float64)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"state[{key!r}] must be non-empty and finite")
    return a


def convert_running_stats(
    state, source, target, *, count=None, momentum=None, steps=None, preserve="statistics"
):
    """A BN state in ``source``'s key names, converted to ``target``'s names and conventions.

    ``state`` maps ``FRAMEWORKS[source].mean_key`` and ``.var_key`` (e.g. ``running_mean``
    and ``running_var``) to per-channel arrays of one shape (other keys are ignored); the
    result maps the target's two keys to float64 arrays of that shape.

    ``preserve="outputs"`` copies the values under the new names: the ported layer then
    normalises exactly as the source did at inference (build it with :func:`convert_eps`).
    ``preserve="statistics"`` (default) returns what the target layer would have stored had
    it trained on the same batches: the variance is rescaled by :func:`bessel_factor` when
    the two store different conventions, which needs ``count``, the number of values per
    channel of each batch (N * H * W of a batch; the same for every batch). For an EMA of
    batch variances that factor is the batch's, ``count / (count - 1)``, not the
    population's: every batch variance was corrected with its own count.

    The initial values (0, 1; Haiku's debiasing gives them no weight) keep a weight
    ``(1 - w)**steps`` in the stored average, ``w`` the new-batch weight. With ``momentum``
    (in the source's convention) and ``steps`` (PyTorch's ``num_batches_tracked``, Haiku's
    ``counter``), the conversion is exact; without them that weight is taken as 0, an error
    of that order (under 3e-5 after 100 steps at PyTorch momentum 0.1).
    """
    src, tgt = check_framework(source, "source"), check_framework(target, "target")
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a mapping of arrays, got {type(state).__name__}")
    if preserve not in ("statistics", "outputs"):
        raise ValueError(f"preserve must be 'statistics' or 'outputs', got {preserve!r}")
    mean, var = _stat(state, src.mean_key, source), _stat(state, src.var_key, source)
    if mean.shape != var.shape:
        raise ValueError(
            f"state[{src.mean_key!r}] and state[{src.var_key!r}] must have one shape, "
            f"got {mean.shape} and {var.shape}"
        )
    if np.any(var < 0):
        raise ValueError(f"state[{src.var_key!r}] must be >= 0 (a variance)")
    if preserve == "outputs":
        return {tgt.mean_key: mean, tgt.var_key: var}
    if (momentum is None) != (steps is None):
        given, missing = ("momentum", "steps") if steps is None else ("steps", "momentum")
        raise ValueError(f"{missing} must be given with {given} (or leave both None)")
    w0 = 0.0
    if steps is not None:
        _number(steps, "steps", "an integer >= 0", lambda v: v >= 0, integer=True)
        w0 = (1.0 - batch_weight(_check_momentum(momentum, "momentum"), source)) ** int(steps)
    if (src.debiased or tgt.debiased) and w0 == 1.0:
        raise ValueError("steps must be >= 1 for a debiased (haiku) average")
    factor = 1.0
    if src.running_var != tgt.running_var:
        if count is None:
            raise ValueError(
                f"count (values per channel of each batch) is needed: {source} stores the "
                f"{src.running_var} variance, {target} the {tgt.running_var} one"
            )
        f = bessel_factor(count)
        factor = f if tgt.running_var == "unbiased" else 1.0 / f

    def convert(stored, initial_src, initial_tgt, scale):
        data = stored * (1.0 - w0) if src.debiased else stored - w0 * initial_src
        data = data * scale
        return data / (1.0 - w0) if tgt.debiased else data + w0 * initial_tgt

    return {
        tgt.mean_key: convert(mean, src.initial_mean, tgt.initial_mean, 1.0),
        tgt.var_key: convert(var, src.initial_var, tgt.initial_var, factor),
    }


def markdown_table(sources=False):
    """The table as markdown (one row per framework), optionally followed by the sources."""
    head = (
        "| framework | layer | momentum is the weight of | default | eps | running var "
        "| debiased | initial mean/var | state |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for c in _TABLE:
        weight = "new batch" if c.momentum_weights == "new" else "old value"
        floor = f" (>= {c.eps_floor:g})" if c.eps_floor else ""
        rows.append(
            f"| `{c.name}` | {c.layer} | {weight} (`{c.momentum_arg}`) | "
            f"{'none' if c.default_momentum is None else f'{c.default_momentum:g}'} | "
            f"{c.default_eps:g}{floor} | {c.running_var} | {'yes' if c.debiased else 'no'} | "
            f"{c.initial_mean:g} / {c.initial_var:g} | `{c.mean_key}`, `{c.var_key}` |"
        )
    text = head + "\n".join(rows) + "\n"
    if sources:
        text += "\n" + "\n".join(f"- `{c.name}`: " + "; ".join(c.sources) for c in _TABLE)
        text += "\n"
    return text
