"""Batch-norm kernels, one module per backend, one contract.

Every backend module provides, for C-contiguous ``x``/``dy``/``out`` of shape
``(N, C, L)`` (``L = prod(spatial)``, 1 for ``(N, C)`` input) and per-channel ``(C,)``
parameters of the input's dtype:

``forward_train(x, weight, bias, eps, out) -> (mean, var, invstd)``
    batch mean and biased variance per channel, ``invstd = 1/sqrt(var + eps)``; writes
    ``out = (x - mean) * invstd * weight + bias``.
``forward_eval(x, weight, bias, mean, var, eps, out) -> None``
    the same affine map with given statistics.
``backward(dy, x, weight, mean, invstd, out) -> (dweight, dbias)``
    writes ``out = dx``.
``update_running(running_mean, running_var, mean, var, momenta) -> None``
    advances ``(K, C)`` running estimates in place, one row per momentum:
    ``r <- (1 - m) r + m * stat``.

Ghost batch norm and Batch Renorm (every bnbench backend; a peer may lack them, see
:data:`OPERATIONS` and :func:`supports`):

``forward_train_ghost(x, weight, bias, eps, group_size, out) -> (mean, var, invstd)``
    the batch axis split into ``N // group_size`` groups of ``group_size`` consecutive
    samples, each normalised with its own statistics; ``mean``, ``var`` (biased),
    ``invstd`` are ``(N // group_size, C)``. ``group_size = N`` is ``forward_train``
    bit for bit (its statistics as ``(1, C)``).
``backward_ghost(dy, x, weight, mean, invstd, group_size, out) -> (dweight, dbias)``
    ``mean``, ``invstd`` ``(N // group_size, C)``; writes ``out = dx``.
``forward_train_renorm(x, weight, bias, running_mean, running_var, rmax, dmax, eps, out) -> (mean, var, invstd, r, d)``
    Batch Renorm (Ioffe 2017): ``out = ((x - mean) * invstd * r + d) * weight + bias``
    with ``r = clip(sqrt(var + eps) / sigma, 1/rmax, rmax)``,
    ``d = clip((mean - running_mean) / sigma, -dmax, dmax)``,
    ``sigma = sqrt(running_var + eps)``; all ``(C,)``.
``backward_renorm(dy, x, weight, mean, invstd, r, d, out) -> (dweight, dbias)``
    ``r`` and ``d`` held constant (stop-gradient); writes ``out = dx``.

Batch norm followed by a ReLU, fused (every bnbench backend; the PyTorch peer composes
its two ops):

``forward_train_relu(x, weight, bias, eps, out) -> (mean, var, invstd)``
    ``forward_train``'s statistics; writes ``out = relu(y)``, ``relu(v) = v if v > 0
    else v * 0`` (NaN stays NaN).
``forward_eval_relu(x, weight, bias, mean, var, eps, out) -> None``
    ``out = relu(forward_eval(...))``.
``backward_relu(dy, y, x, weight, mean, invstd, out) -> (dweight, dbias)``
    the gradients of ``relu(batch_norm(x))``: ``backward`` of ``dy`` masked by the fused
    output, ``dy if y > 0 else dy * 0`` (the mask PyTorch's ReLU backward takes from its
    result, and cuDNN's fused BN-activation backward from ``yData``).

Optional, for a peer without an out= backward:
``backward_fresh(dy, x, weight, mean, invstd) -> (dx, dweight, dbias)`` with ``dx``
allocated by the peer; :mod:`bnbench.functional` uses it when no ``out=`` is given, and
the throughput study then times no ``out=`` backward for it.

Returned statistics may be float64; ``bnbench.functional`` validates the input and casts
the results to the input's dtype. Kernels themselves assume valid input.
"""


def is_device_array(a):
    """Whether ``a`` is a CUDA device array: anything but a NumPy array with
    ``__cuda_array_interface__``, or numba's device arrays (whose simulator stand-ins lack
    the interface). Decided without importing CUDA."""
    import numpy as np

    if isinstance(a, np.ndarray):
        return False
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host")


#: Operations beyond the plain four (``forward_train``, ``forward_eval``, ``backward``,
#: ``update_running``, which every backend and peer provides), by name: the module
#: functions that implement each. Every bnbench backend provides all of them
#: (tests/test_functional.py checks it); a peer provides those its library has.
OPERATIONS = {
    "ghost": ("forward_train_ghost", "backward_ghost"),
    "renorm": ("forward_train_renorm", "backward_renorm"),
    "relu": ("forward_train_relu", "forward_eval_relu", "backward_relu"),
}


def supports(impl, operation):
    """Whether backend module ``impl`` implements ``operation`` (a key of
    :data:`OPERATIONS`, or one of the plain four)."""
    return all(hasattr(impl, fn) for fn in OPERATIONS.get(operation, (operation,)))
