"""The CPU backend's fused kernels (:mod:`bnbench.kernels.cpu_fused`): bit for bit the
unfused pair, batch norm then a ReLU, where the arithmetic is the same (the parallel
kernels, the serial twins, both mixed; the reference's fused functions by the same check),
on hard inputs too (the fixture ``compiled_alike``: tests/conftest.py). Every backend's
fused functions against the oracle: tests/test_fused.py."""

import numpy as np
import pytest
from test_fused import CASES, DTYPES, assert_bitwise, fused, inputs, unfused

from bnbench.kernels import cpu, cpu_fused

BITWISE = ["reference", "cpu"]


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
