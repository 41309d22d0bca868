"""numba-cuda kernels under the same contract as the CPU backend.

Arrays arrive as ``(N, C, L)``; host NumPy arrays are copied to the device and results
copied back into the host ``out``; numba device arrays stay on the device (no implicit
transfers), and the statistics come back as device arrays too.

Decomposition: a channel's ``M = N * L`` values are split over ``blocks_per_channel``
blocks (a grid of ``(blocks_per_channel, C)``), so both many channels with few values
and few channels with many values fill the GPU. Each thread folds its strided values
into a float64 Welford summary, the block merges them with a shared-memory tree of Chan
merges, and a second kernel merges the blocks' partials per channel, in a fixed order
(deterministic). The per-channel scalar math is :mod:`bnbench.kernels.scalar`, the same
code the CPU backend runs, compiled as device functions.

Nothing here touches the CUDA driver at import; kernels are built on first use for the
threads per block in :data:`bnbench.config.CUDA_THREADS_PER_BLOCK` (tests patch it small
so that tiny inputs span several blocks).
"""

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from .. import config
from . import is_device_array, scalar


def available():
    """``(True, device name)`` or ``(False, what is missing)``."""
    from importlib.metadata import PackageNotFoundError, version

    if not config.CUDA_SIMULATOR:
        try:
            version("numba-cuda")
        except PackageNotFoundError:
            return False, "the cuda extra is not installed (pip install 'bnbench[cuda]')"
    try:
        if not cuda.is_available():
            return False, "no CUDA driver or no CUDA device found"
        device = cuda.get_current_device()
        return True, str(getattr(device, "name", "numba-cuda simulator"))
    except Exception as err:  # driver errors come in many types
        return False, f"CUDA error: {err}"


def device_function(fn):
    """A device-function copy of one of :mod:`bnbench.kernels.scalar`'s helpers."""
    return cuda.jit(device=True, inline=True)(fn.py_func)


_chan_merge = device_function(scalar.chan_merge)
_ema_step = device_function(scalar.ema_step)
_affine_coefficients = device_function(scalar.affine_coefficients)
_grad_coefficients = device_function(scalar.grad_coefficients)
_renorm_affine_coefficients = device_function(scalar.renorm_affine_coefficients)
_renorm_grad_coefficients = device_function(scalar.renorm_grad_coefficients)


@functools.cache
def kernels(tpb):
    """The kernels for ``tpb`` threads per block (a power of two): a namespace.

    Ghost batch norm: statistics are per (group of ``G`` consecutive samples, channel),
    arrays of ``(groups, C)``; plain batch norm is the single group ``G = N``. The
    partial-statistics grid is ``(blocks_per_channel * groups, C)``: block x index
    ``g * nb + b`` holds values ``[b * per_block, (b + 1) * per_block)`` of group ``g``
    (the grid's x dimension takes 2^31 - 1 blocks, y only 65535).
    """
    if tpb < 1 or tpb & (tpb - 1):
        raise ValueError(f"threads per block must be a power of two, got {tpb}")

    @cuda.jit
    def moments_partial(x, group_size, per_block, count, mean, m2):
        """Partials ``(groups, C, nb)`` of each block's values of one group and channel."""
        nb = count.shape[2]
        g, b = cuda.blockIdx.x // nb, cuda.blockIdx.x % nb
        c, t = cuda.blockIdx.y, cuda.threadIdx.x
        L = x.shape[2]
        M = group_size * L
        n0 = g * group_size
        lo = b * per_block
        hi = min(lo + per_block, M)
        n, mu, q = 0.0, 0.0, 0.0
        for i in range(lo + t, hi, tpb):  # Welford, one value at a time
            v = np.float64(x[n0 + i // L, c, i % L])
            n += 1.0
            d = v - mu
            mu += d / n
            q += d * (v - mu)
        sn = cuda.shared.array(tpb, np.float64)
        sm = cuda.shared.array(tpb, np.float64)
        sq = cuda.shared.array(tpb, np.float64)
        sn[t], sm[t], sq[t] = n, mu, q
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if t < s:
                sn[t], sm[t], sq[t] = _chan_merge(
                    sn[t], sm[t], sq[t], sn[t + s], sm[t + s], sq[t + s]
                )
            cuda.syncthreads()
            s //= 2
        if t == 0:
            count[g, c, b], mean[g, c, b], m2[g, c, b] = sn[0], sm[0], sq[0]

    @cuda.jit(device=True, inline=True)
    def merge_blocks(count, mean, m2, g, c):
        n, mu, q = 0.0, 0.0, 0.0
        for b in range(count.shape[2]):
            n, mu, q = _chan_merge(n, mu, q, count[g, c, b], mean[g, c, b], m2[g, c, b])
        return mu, q / n

    @cuda.jit
    def moments_finish(
        count, mean, m2, weight, bias, eps, out_mean, out_var, out_invstd, scale, shift
    ):
        """One thread per (group, channel): merge the blocks, then the coefficients."""
        i = cuda.grid(1)
        C = count.shape[1]
        if i >= count.shape[0] * C:
            return
        g, c = i // C, i % C
        mu, var = merge_blocks(count, mean, m2, g, c)
        scale[g, c], shift[g, c], invstd = _affine_coefficients(
            np.float64(weight[c]), np.float64(bias[c]), mu, var, eps
        )
        out_mean[g, c], out_var[g, c], out_invstd[g, c] = mu, var, invstd

    @cuda.jit
    def renorm_finish(
        count, mean, m2, weight, bias, running_mean, running_var, rmax, dmax, eps,
        out_mean, out_var, out_invstd, out_r, out_d, scale, shift,
    ):  # fmt: skip
        """Batch Renorm's coefficients (one group): one thread per channel."""
        c = cuda.grid(1)
        if c >= count.shape[1]:
            return
        mu, var = merge_blocks(count, mean, m2, 0, c)
        scale[0, c], shift[0, c], invstd, r, d = _renorm_affine_coefficients(
            np.float64(weight[c]), np.float64(bias[c]), mu, var,
            np.float64(running_mean[c]), np.float64(running_var[c]), rmax, dmax, eps,
        )  # fmt: skip
        out_mean[c], out_var[c], out_invstd[c], out_r[c], out_d[c] = mu, var, invstd, r, d

    @cuda.jit
    def eval_coefficients(weight, bias, mean, var, eps, scale, shift):
        c = cuda.grid(1)
        if c < mean.shape[0]:
            scale[0, c], shift[0, c], _ = _affine_coefficients(
                np.float64(weight[c]), np.float64(bias[c]), np.float64(mean[c]),
                np.float64(var[c]), eps,
            )  # fmt: skip

    @cuda.jit
    def affine(x, group_size, scale, shift, out):
        C, L = x.shape[1], x.shape[2]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, x.size, step):
            n, r = i // (C * L), i % (C * L)
            c, j = r // L, r % L
            g = n // group_size
            out[n, c, j] = x[n, c, j] * scale[g, c] + shift[g, c]

    @cuda.jit
    def grad_partial(dy, x, group_size, per_block, sum_dy, sum_dy_x):
        nb = sum_dy.shape[2]
        g, b = cuda.blockIdx.x // nb, cuda.blockIdx.x % nb
        c, t = cuda.blockIdx.y, cuda.threadIdx.x
        L = x.shape[2]
        M = group_size * L
        n0 = g * group_size
        lo = b * per_block
        hi = min(lo + per_block, M)
        s, q = 0.0, 0.0
        for i in range(lo + t, hi, tpb):
            v = np.float64(dy[n0 + i // L, c, i % L])
            s += v
            q += v * x[n0 + i // L, c, i % L]
        ss = cuda.shared.array(tpb, np.float64)
        sq = cuda.shared.array(tpb, np.float64)
        ss[t], sq[t] = s, q
        cuda.syncthreads()
        k = tpb // 2
        while k > 0:
            if t < k:
                ss[t] += ss[t + k]
                sq[t] += sq[t + k]
            cuda.syncthreads()
            k //= 2
        if t == 0:
            sum_dy[g, c, b], sum_dy_x[g, c, b] = ss[0], sq[0]

    @cuda.jit(device=True, inline=True)
    def sum_blocks(sum_dy, sum_dy_x, g, c):
        s, q = 0.0, 0.0
        for k in range(sum_dy.shape[2]):
            s += sum_dy[g, c, k]
            q += sum_dy_x[g, c, k]
        return s, q

    @cuda.jit
    def grad_finish(sum_dy, sum_dy_x, weight, mean, invstd, count, a, b, d, dweight, dbias):
        """One thread per channel, looping over the groups in order (deterministic)."""
        c = cuda.grid(1)
        if c >= sum_dy.shape[1]:
            return
        dw, db = 0.0, 0.0
        for g in range(sum_dy.shape[0]):
            s, q = sum_blocks(sum_dy, sum_dy_x, g, c)
            a[g, c], b[g, c], d[g, c], dwg, dbg = _grad_coefficients(
                np.float64(weight[c]), np.float64(mean[g, c]), np.float64(invstd[g, c]),
                s, q, count,
            )  # fmt: skip
            dw += dwg
            db += dbg
        dweight[c], dbias[c] = dw, db

    @cuda.jit
    def renorm_grad_finish(
        sum_dy, sum_dy_x, weight, mean, invstd, r, rd, count, a, b, d, dweight, dbias
    ):
        c = cuda.grid(1)
        if c >= sum_dy.shape[1]:
            return
        s, q = sum_blocks(sum_dy, sum_dy_x, 0, c)
        a[0, c], b[0, c], d[0, c], dweight[c], dbias[c] = _renorm_grad_coefficients(
            np.float64(weight[c]), np.float64(mean[c]), np.float64(invstd[c]),
            np.float64(r[c]), np.float64(rd[c]), s, q, count,
        )  # fmt: skip

    @cuda.jit
    def grad_input(dy, x, group_size, a, b, d, out):
        C, L = x.shape[1], x.shape[2]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, x.size, step):
            n, r = i // (C * L), i % (C * L)
            c, j = r // L, r % L
            g = n // group_size
            out[n, c, j] = dy[n, c, j] * a[g, c] + x[n, c, j] * b[g, c] + d[g, c]

    @cuda.jit
    def ema_update(running_mean, running_var, mean, var, momenta):
        i = cuda.grid(1)
        C = mean.shape[0]
        if i < running_mean.size:
            k, c = i // C, i % C
            running_mean[k, c] = _ema_step(running_mean[k, c], mean[c], momenta[k])
            running_var[k, c] = _ema_step(running_var[k, c], var[c], momenta[k])

    names = ["moments_partial", "moments_finish", "renorm_finish", "eval_coefficients",
             "affine", "grad_partial", "grad_finish", "renorm_grad_finish", "grad_input",
             "ema_update"]  # fmt: skip
    return SimpleNamespace(**{k: v for k, v in locals().items() if k in names})


def configured_kernels():
    """The :func:`kernels` for :data:`bnbench.config.CUDA_THREADS_PER_BLOCK`."""
    return kernels(config.CUDA_THREADS_PER_BLOCK)


is_device = is_device_array


def on_device(a):
    """``a`` as a device array: itself if on the device, else a contiguous copy."""
    return a if is_device(a) else cuda.to_device(np.ascontiguousarray(a))


def empty_like(a):
    return cuda.device_array(a.shape, a.dtype)


def blocks_per_channel(M, C):
    """Enough blocks to fill the GPU when C is small, one when C alone is enough.
    ``M`` values per channel (of one group); ``C``: channels times groups."""
    tpb = config.CUDA_THREADS_PER_BLOCK
    wanted = max(1, config.CUDA_TARGET_BLOCKS // C)
    useful = max(1, math.ceil(M / (tpb * config.CUDA_VALUES_PER_THREAD)))
    nb = min(wanted, useful)
    return nb, math.ceil(M / nb)


def elementwise_grid(size):
    """``(blocks, threads per block)`` of an elementwise pass over ``size`` values."""
    tpb = config.CUDA_THREADS_PER_BLOCK
    return min(math.ceil(size / tpb), config.CUDA_TARGET_BLOCKS * 4), tpb


def channel_grid(C):
    """``(blocks, threads per block)`` of a pass with one thread per channel."""
    tpb = config.CUDA_THREADS_PER_BLOCK
    return math.ceil(C / tpb), tpb


def deliver(host, out_dev, out, *arrays):
    """The results on the caller's side: for host input, ``out_dev`` is copied into the
    caller's ``out`` and the per-channel ``arrays`` come back as NumPy arrays."""
    if not host:
        return arrays
    out_dev.copy_to_host(out)
    return tuple(a.copy_to_host() for a in arrays)


def moment_partials(dx, group_size):
    """Launch the partial statistics of every (group, channel): ``(groups, C, nb)`` x 3."""
    N, C, L = dx.shape
    groups = N // group_size
    nb, per_block = blocks_per_channel(group_size * L, C * groups)
    parts = [cuda.device_array((groups, C, nb)) for _ in range(3)]
    grid = (nb * groups, C), config.CUDA_THREADS_PER_BLOCK
    configured_kernels().moments_partial[grid](dx, group_size, per_block, *parts)
    return parts


def forward_train_ghost(x, weight, bias, eps, group_size, out):
    k, host = configured_kernels(), not is_device(x)
    dx, dout = on_device(x), (empty_like(x) if host else out)
    N, C, _ = x.shape
    groups = N // group_size
    parts = moment_partials(dx, group_size)
    mean, var, invstd = (cuda.device_array((groups, C), x.dtype) for _ in range(3))
    scale, shift = cuda.device_array((groups, C)), cuda.device_array((groups, C))
    k.moments_finish[channel_grid(groups * C)](
        *parts, on_device(weight), on_device(bias), eps, mean, var, invstd, scale, shift
    )
    k.affine[elementwise_grid(x.size)](dx, group_size, scale, shift, dout)
    return deliver(host, dout, out, mean, var, invstd)


def forward_train(x, weight, bias, eps, out):
    return tuple(s[0] for s in forward_train_ghost(x, weight, bias, eps, x.shape[0], out))


def forward_train_renorm(x, weight, bias, running_mean, running_var, rmax, dmax, eps, out):
    k, host = configured_kernels(), not is_device(x)
    dx, dout = on_device(x), (empty_like(x) if host else out)
    N, C, _ = x.shape
    parts = moment_partials(dx, N)
    stats = [cuda.device_array(C, x.dtype) for _ in range(5)]  # mean, var, invstd, r, d
    scale, shift = cuda.device_array((1, C)), cuda.device_array((1, C))
    k.renorm_finish[channel_grid(C)](
        *parts, on_device(weight), on_device(bias),
        on_device(running_mean), on_device(running_var),
        rmax, dmax, eps, *stats, scale, shift,
    )  # fmt: skip
    k.affine[elementwise_grid(x.size)](dx, N, scale, shift, dout)
    return deliver(host, dout, out, *stats)


def forward_eval(x, weight, bias, mean, var, eps, out):
    k, host = configured_kernels(), not is_device(x)
    dx, dout = on_device(x), (empty_like(x) if host else out)
    C = x.shape[1]
    scale, shift = cuda.device_array((1, C)), cuda.device_array((1, C))
    k.eval_coefficients[channel_grid(C)](
        on_device(weight), on_device(bias), on_device(mean), on_device(var), eps, scale, shift
    )
    k.affine[elementwise_grid(x.size)](dx, x.shape[0], scale, shift, dout)
    deliver(host, dout, out)


def _grad_sums(ddy, dx, group_size):
    N, C, L = dx.shape
    groups = N // group_size
    nb, per_block = blocks_per_channel(group_size * L, C * groups)
    sums = [cuda.device_array((groups, C, nb)) for _ in range(2)]
    grid = (nb * groups, C), config.CUDA_THREADS_PER_BLOCK
    configured_kernels().grad_partial[grid](ddy, dx, group_size, per_block, *sums)
    return sums


def backward_ghost(dy, x, weight, mean, invstd, group_size, out):
    k, host = configured_kernels(), not is_device(x)
    ddy, dx, dout = on_device(dy), on_device(x), (empty_like(x) if host else out)
    N, C, L = x.shape
    groups = N // group_size
    sums = _grad_sums(ddy, dx, group_size)
    a, b, d = (cuda.device_array((groups, C)) for _ in range(3))
    dweight, dbias = cuda.device_array(C, x.dtype), cuda.device_array(C, x.dtype)
    k.grad_finish[channel_grid(C)](
        *sums, on_device(weight), on_device(mean), on_device(invstd), float(group_size * L),
        a, b, d, dweight, dbias,
    )  # fmt: skip
    k.grad_input[elementwise_grid(x.size)](ddy, dx, group_size, a, b, d, dout)
    return deliver(host, dout, out, dweight, dbias)


def as_row(a):
    """A ``(C,)`` statistic as ``(1, C)``, host or device, without a copy."""
    return a.reshape(1, a.shape[0])


def backward(dy, x, weight, mean, invstd, out):
    return backward_ghost(dy, x, weight, as_row(mean), as_row(invstd), x.shape[0], out)


def backward_renorm(dy, x, weight, mean, invstd, r, d, out):
    k, host = configured_kernels(), not is_device(x)
    ddy, dx, dout = on_device(dy), on_device(x), (empty_like(x) if host else out)
    N, C, L = x.shape
    sums = _grad_sums(ddy, dx, N)
    a, b, dc = (cuda.device_array((1, C)) for _ in range(3))
    dweight, dbias = cuda.device_array(C, x.dtype), cuda.device_array(C, x.dtype)
    k.renorm_grad_finish[channel_grid(C)](
        *sums, on_device(weight), on_device(mean), on_device(invstd),
        on_device(r), on_device(d), float(N * L),
        a, b, dc, dweight, dbias,
    )  # fmt: skip
    k.grad_input[elementwise_grid(x.size)](ddy, dx, N, a, b, dc, dout)
    return deliver(host, dout, out, dweight, dbias)


def update_running(running_mean, running_var, mean, var, momenta):
    k, host = configured_kernels(), not is_device(running_mean)
    rm, rv = on_device(running_mean), on_device(running_var)
    tpb = config.CUDA_THREADS_PER_BLOCK
    k.ema_update[math.ceil(running_mean.size / tpb), tpb](
        rm, rv, on_device(mean), on_device(var), on_device(momenta)
    )
    if host:
        rm.copy_to_host(running_mean)
        rv.copy_to_host(running_var)
