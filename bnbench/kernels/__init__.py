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
