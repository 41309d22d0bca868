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
from bnbench.kernels import cuda_fused as kf  # noqa: E402

F64_1, F64_2 = t.float64[::1], t.float64[:, ::1]


def signatures(dtype):
    """Argument types of every kernel as the host code launches it."""
    X, V, S = dtype[:, :, ::1], dtype[::1], dtype[:, ::1]  # x, (C,) and (groups, C) arrays
    F64_3 = t.float64[:, :, ::1]  # per-block partials (groups, C, nb)
    N, F = t.int64, t.float64  # integer and float scalars
    return {
        "moments_partial": (X, N, N, F64_3, F64_3, F64_3),
        "moments_finish": (F64_3, F64_3, F64_3, V, V, F, S, S, S, F64_2, F64_2),
        # counts, means, M2s; weight, bias, running mean and var; rmax, dmax, eps;
        # mean, var, invstd, r, d; scale, shift
        "renorm_finish": (F64_3,) * 3 + (V,) * 4 + (F,) * 3 + (V,) * 5 + (F64_2,) * 2,
        "eval_coefficients": (V, V, V, V, F, F64_2, F64_2),
        "affine": (X, N, F64_2, F64_2, X),
        "grad_partial": (X, X, N, N, F64_3, F64_3),
        "grad_finish": (F64_3, F64_3, V, S, S, F, F64_2, F64_2, F64_2, V, V),
        "renorm_grad_finish": (F64_3, F64_3, V, V, V, V, V, F, F64_2, F64_2, F64_2, V, V),
        "grad_input": (X, X, N, F64_2, F64_2, F64_2, X),
        "ema_update": (S, S, F64_1, F64_1, F64_1),
    }


def fused_signatures(dtype):
    """The fused BN + ReLU data passes (:mod:`bnbench.kernels.cuda_fused`)."""
    X, N, F64_2, F64_3 = dtype[:, :, ::1], t.int64, t.float64[:, ::1], t.float64[:, :, ::1]
    return {
        "affine_relu": (X, N, F64_2, F64_2, X),
        "grad_partial_relu": (X, X, X, N, N, F64_3, F64_3),  # dy, y, x
        "grad_input_relu": (X, X, X, N, F64_2, F64_2, F64_2, X),
    }


def test_every_kernel_is_covered():
    names = {k for k in vars(kc.kernels(256)) if not k.startswith("_")}
    assert names == set(signatures(t.float32))
    assert set(vars(kf.kernels(256))) == set(fused_signatures(t.float32))


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [t.float32, t.float64], ids=str)
@pytest.mark.parametrize("name", sorted(signatures(t.float32)))
def test_kernel_compiles_to_ptx(name, dtype, cc):
    kernel = getattr(kc.kernels(config.CUDA_THREADS_PER_BLOCK), name)
    ptx, _ = cuda.compile_ptx(kernel.py_func, signatures(dtype)[name], cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [t.float32, t.float64], ids=str)
@pytest.mark.parametrize("name", sorted(fused_signatures(t.float32)))
def test_fused_kernel_compiles_to_ptx(name, dtype, cc):
    kernel = getattr(kf.kernels(config.CUDA_THREADS_PER_BLOCK), name)
    ptx, _ = cuda.compile_ptx(kernel.py_func, fused_signatures(dtype)[name], cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx
