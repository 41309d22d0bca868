"""Every CUDA kernel compiles to PTX for sm_80 and sm_90, for each dtype it is launched
with. The simulator runs Python and misses typing errors; this does not. No GPU needed
(NVVM comes from the cuda extra)."""

import pytest

from bnbench import config

if config.CUDA_SIMULATOR:
    pytest.skip(
        "PTX compilation needs the real CUDA target, not the simulator", allow_module_level=True
    )
pytest.importorskip("numba_cuda", reason="the cuda extra (numba-cuda) is not installed")

from numba import cuda  # noqa: E402
from numba import types as t  # noqa: E402

from bnbench.kernels import cuda as kc  # noqa: E402

F64_1, F64_2 = t.float64[::1], t.float64[:, ::1]


def signatures(dtype):
    """Argument types of every kernel as the host code launches it."""
    X, V = dtype[:, :, ::1], dtype[::1]
    return {
        "moments_partial": (X, t.int64, F64_2, F64_2, F64_2),
        "moments_finish": (F64_2, F64_2, F64_2, V, V, t.float64, V, V, V, F64_1, F64_1),
        "eval_coefficients": (V, V, V, V, t.float64, F64_1, F64_1),
        "affine": (X, F64_1, F64_1, X),
        "grad_partial": (X, X, t.int64, F64_2, F64_2),
        "grad_finish": (F64_2, F64_2, V, V, V, t.float64, F64_1, F64_1, F64_1, V, V),
        "grad_input": (X, X, F64_1, F64_1, F64_1, X),
        "ema_update": (dtype[:, ::1], dtype[:, ::1], F64_1, F64_1, F64_1),
    }


def test_every_kernel_is_covered():
    names = {k for k in vars(kc.kernels(256)) if not k.startswith("_")}
    assert names == set(signatures(t.float32))


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [t.float32, t.float64], ids=str)
@pytest.mark.parametrize("name", sorted(signatures(t.float32)))
def test_kernel_compiles_to_ptx(name, dtype, cc):
    kernel = getattr(kc.kernels(config.CUDA_THREADS_PER_BLOCK), name)
    ptx, _ = cuda.compile_ptx(kernel.py_func, signatures(dtype)[name], cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx
