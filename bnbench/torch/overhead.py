"""What :func:`bnbench.torch.track` costs a training loop: one epoch of the default
MNIST-1D CNN (:mod:`bnbench.torch.jobs`) with and without the tracking hooks, best of
``repeats``, the runs interleaved so that drift hits every variant alike::

    python -m bnbench.torch.overhead --batch-sizes 8 32 128 --threads 1

The timed region is the training loop itself (forward, backward, SGD step; the batches
are built beforehand), with the ``track`` context around it for the tracked variants.
"""

import argparse
import time

import torch

from . import jobs
from .tracking import track

MOMENTA = [0.003, 0.01, 0.03, 0.1, 0.3, 0.9]


def epoch_seconds(x, y, batch_size, momenta=None):
    """Seconds of one epoch of SGD on the default CNN (tracked when ``momenta``)."""
    torch.manual_seed(0)
    model = jobs.default_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = jobs.loader(x, y, batch_size)

    def loop():
        for xb, yb in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()

    t0 = time.perf_counter()
    if momenta is None:
        loop()
    else:
        with track(model, momenta=momenta):
            loop()
    return time.perf_counter() - t0


def measure(batch_sizes=(8, 32, 128), repeats=3):
    """``{batch size: {variant: best seconds}}`` for the variants untracked, one momentum
    and :data:`MOMENTA` (each with EMA, debiased EMA and cumulative)."""
    x, y, _, _ = jobs.as_tensors(jobs.default_data())
    variants = {"untracked": None, "1 momentum": [0.1], f"{len(MOMENTA)} momenta": MOMENTA}
    out = {}
    for bs in batch_sizes:
        times = {k: [] for k in variants}
        epoch_seconds(x, y, bs, [0.1])  # warm-up: Numba kernels loaded, allocator warm
        for _ in range(repeats):
            for k, momenta in variants.items():
                times[k].append(epoch_seconds(x, y, bs, momenta))
        out[bs] = {k: min(v) for k, v in times.items()}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and Numba threads")
    args = parser.parse_args(argv)
    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    for bs, times in measure(args.batch_sizes, args.repeats).items():
        base = times["untracked"]
        cells = [f"{k} {s:.3f} s" + ("" if k == "untracked" else f" ({100 * (s / base - 1):+.0f}%)")
                 for k, s in times.items()]  # fmt: skip
        print(f"batch size {bs}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
