"""The CPU backend's fused kernels (:mod:`bnbench.kernels.cpu_fused`): bit for bit the
unfused pair, batch norm then a ReLU, where the arithmetic is the same (the parallel
kernels, the serial twins, both mixed; the reference's fused functions by the same check),
on hard inputs too. Every backend's fused functions against the oracle: tests/test_fused.py."""

import numba
import numpy as np
import pytest
from test_fused import CASES, DTYPES, assert_bitwise, fused, inputs, unfused

from bnbench import config
from bnbench.kernels import cpu, cpu_fused

BITWISE = ["reference", "cpu"]


@pytest.fixture
def compiled_alike(monkeypatch):
    """The parallel gradient sums (spatial and dense), unfused and fused, compiled afresh
    in this process.

    Numba's cached machine code of a parallel kernel that reduces inside a loop (with
    ``reassoc``) rounds differently from the same kernel compiled in-process (the
    spatial gradient sums of (16, 8, 33) float64: the last bits of sum(dy); the serial
    twins agree). So right after an edit of one of the two modules, one kernel is fresh
    and the other cached, and they disagree in the last bits though they run the same
    operations. Both fresh here: the bound holds for kernels compiled alike."""
    pairs = ((cpu, "_spatial_grad_sums"), (cpu_fused, "_spatial_grad_sums_relu"),
             (cpu, "_dense_grad_sums"), (cpu_fused, "_dense_grad_sums_relu"))  # fmt: skip
    for module, name in pairs:
        kernel = getattr(module, name)
        if kernel not in _FRESH:  # one compilation per kernel and session
            _FRESH[kernel] = numba.njit(parallel=True, fastmath=config.FASTMATH)(
                kernel.parallel.py_func
            )
        monkeypatch.setattr(kernel, "parallel", _FRESH[kernel])


_FRESH = {}


@pytest.mark.parametrize("backend", BITWISE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES, ids=str)
def test_bit_for_bit_the_unfused_pair(backend, dtype, shape, axis, rng, compiled_alike):
    x, w, b, dy = inputs(rng, shape, axis, dtype)
    assert_bitwise(fused(backend, x, w, b, dy, axis), unfused(backend, x, w, b, dy, axis))


@pytest.mark.parametrize("shape", [(64, 32, 50), (2048, 64)], ids=str)
def test_bit_for_bit_on_hard_inputs(shape, rng, compiled_alike):
    """Outputs near 0 (where a recomputed pre-activation could flip the mask), a shifted
    mean, and the reduction over long rows."""
    x, w, b, dy = inputs(rng, shape, 1, np.float32, loc=1e3, scale=1.0)
    b[:] = 0  # y straddles 0 in every channel
    assert_bitwise(fused("cpu", x, w, b, dy, 1), unfused("cpu", x, w, b, dy, 1))


@pytest.mark.parametrize("shape", [(300, 7), (9, 5, 40)], ids=str)
def test_serial_twins(shape, rng, monkeypatch):
    """Below the size thresholds the fused kernels' serial twins run (a parallel call
    fails the test): bit for bit the unfused serial kernels, and the parallel kernels'
    results up to the order of the chunks' sums."""
    x, w, b, dy = inputs(rng, shape, 1, np.float64)
    parallel = fused("cpu", x, w, b, dy, 1)
    monkeypatch.setattr(cpu, "SERIAL_BELOW", 1 << 40)
    monkeypatch.setattr(cpu, "ELEMENTWISE_SERIAL_BELOW", 1 << 40)
    for name, obj in vars(cpu_fused).items():
        if isinstance(obj, cpu.ParallelKernel):

            def fail(*args, _name=name):
                raise AssertionError(f"parallel {_name} called")

            monkeypatch.setattr(obj, "parallel", fail)
    serial = fused("cpu", x, w, b, dy, 1)
    assert_bitwise(serial, unfused("cpu", x, w, b, dy, 1))
    for s, p in [*zip(serial[0], parallel[0], strict=True), (serial[1], parallel[1]),
                 *zip(serial[2], parallel[2], strict=True)]:  # fmt: skip
        np.testing.assert_allclose(s, p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(300, 7), (9, 5, 40)], ids=str)
def test_serial_sums_beside_parallel_passes(shape, rng, monkeypatch):
    """Where the sums run serially and the elementwise passes in parallel, the backward
    masks in a parallel pass of its own (the mask pass is not serialised): still the
    unfused pair bit for bit."""
    monkeypatch.setattr(cpu, "SERIAL_BELOW", 1 << 40)
    calls = []
    monkeypatch.setattr(cpu_fused._relu_grad_pass, "parallel",
                        lambda *a, f=cpu_fused._relu_grad_pass.parallel: calls.append(1) or f(*a))  # fmt: skip
    x, w, b, dy = inputs(rng, shape, 1, np.float64)
    assert_bitwise(fused("cpu", x, w, b, dy, 1), unfused("cpu", x, w, b, dy, 1))
    assert calls
