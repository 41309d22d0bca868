"""Seeded inputs shared by the benchmarks (a cached helper: inputs are only appended to)."""

import functools

import numpy as np

#: every backend a benchmark is parametrised over; unavailable ones are skipped in setup
BACKENDS = ["reference", "cpu", "torch", "cuda"]


@functools.cache
def tensor(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2.0 + 0.5).astype(dtype)


@functools.cache
def channel(C, dtype, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, C).astype(dtype)


def backend_or_skip(name):
    """The backend module, or NotImplementedError (asv's skip) where it is unavailable."""
    from bnbench import registry

    try:
        return registry.get_backend(name)
    except (ValueError, registry.BackendUnavailable) as err:
        raise NotImplementedError(str(err)) from err


def synchronize(name):
    """Wait for the device where a backend runs asynchronously (CUDA)."""
    if name == "cuda":
        from numba import cuda

        cuda.synchronize()
