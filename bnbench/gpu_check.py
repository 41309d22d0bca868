"""The GPU check: CUDA tests on the hardware, then the CUDA kernels against PyTorch's.

    python -m bnbench.gpu_check --out reports/gpu-check   # what `python3 tasks.py gpu` runs

On a machine with an NVIDIA GPU and a CUDA build of PyTorch: runs :data:`GPU_TESTS`
(numba-cuda on the device, ``NUMBA_ENABLE_CUDASIM`` unset), then times bnbench's CUDA
backend on device arrays against PyTorch's CUDA batch norm (cuDNN where PyTorch picks it:
``torch.nn.functional.batch_norm``, backward through autograd) for forward-train,
inference, backward and the fused BN + ReLU (PyTorch: ``F.batch_norm`` then ``F.relu``),
float32, with a device-to-device copy of the input's size as the bandwidth peak. Every
contender is validated against the float64 reference first; each timed call ends with a
device synchronisation (the device is idle when the next starts), contenders interleave
in a shuffled order, and the table reports medians. Writes ``summary.md`` and
``summary.json`` (the machine, the tests, the table). Without a GPU it says so and exits 0.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GPU_TESTS = ["tests/cuda", "tests/test_cuda_ptx.py", "tests/test_torch_op.py",
             "tests/test_torch_estimators.py"]  # fmt: skip
SHAPES = [(256, 1024), (4096, 1024), (32, 64, 56, 56), (64, 256, 14, 14), (16, 64, 224, 224)]
#: op -> bytes moved in multiples of the input's: as bnbench.perf.contenders', and the fused
#: backward reads dy, y and x twice and writes dx
BYTE_MODEL = {"forward_train": 3, "forward_eval": 2, "backward": 5,
              "relu_forward_train": 3, "relu_forward_eval": 2, "relu_backward": 7}  # fmt: skip
REPEATS = 50
METHOD = (
    "float32, bnbench's CUDA backend on numba device arrays with `out=` (the public API: "
    "checks plus kernels) against PyTorch on the same memory as PyTorch runs it "
    "(`torch.nn.functional.batch_norm`, cuDNN where PyTorch picks it; backward: autograd "
    "on one recorded graph; fused BN + ReLU: `F.batch_norm` then `F.relu`). Every "
    "contender is validated against the float64 reference first; each timed call ends "
    "with `torch.cuda.synchronize()`; contenders interleave in a shuffled order, 3 warm-up "
    "rounds, medians. GB/s counts 3x / 2x / 5x the input's bytes for forward-train / "
    "inference / backward (fused backward 7x: dy, y and x read twice, dx written); the "
    "peak is a device-to-device copy of the input's size (read plus write) timed in the "
    "same interleaving."
)


def machine():
    import numba
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "numba": numba.__version__}  # fmt: skip
    try:
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001  (a missing distribution: recorded, not fatal)
        info["numba_cuda"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                 "compute_capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count}  # fmt: skip
    try:
        q = "--query-gpu=driver_version"
        out = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver"] = None
    return info


def run_tests(targets=GPU_TESTS, timeout=300):
    """Each target in a pytest process of its own on the hardware: rc, seconds, summary."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    root = Path(__file__).resolve().parents[1]
    results = []
    for target in targets:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target]
        try:
            p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                               timeout=timeout)  # fmt: skip
            lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
            rc, summary = p.returncode, (lines[-1] if lines else p.stderr.strip()[-300:])
        except subprocess.TimeoutExpired:
            rc, summary = 124, f"timed out after {timeout} s"
        results.append({"target": target, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
                        "summary": summary})  # fmt: skip
        print(f"  {target}: {summary}", flush=True)
    return results


def _data(shape, dtype):
    """Host inputs and the reference's results, and the inputs on the device (numba
    device arrays, and PyTorch tensors on the same memory)."""
    import torch
    from numba import cuda

    from . import functional as F
    from .perf.contenders import inputs

    x, dy, w, b, ref = inputs(shape, dtype, seed=0)
    host = {"x": x, "dy": dy, "w": w, "b": b, "mean": ref.mean, "var": ref.var,
            "invstd": ref.invstd, "ref": ref,
            "fused": F.batch_norm_relu_train(x, w, b, backend="reference")}  # fmt: skip
    d = {k: cuda.to_device(np.ascontiguousarray(host[k])) for k in
         ("x", "dy", "w", "b", "mean", "var", "invstd")}  # fmt: skip
    d["y"] = cuda.to_device(host["fused"].y)  # the fused backward's mask: the reference's
    return host, d, {k: torch.as_tensor(a, device="cuda") for k, a in d.items()}


def _contenders(op, host, d, t):
    """``{name: (fn, expected)}`` for one op: bnbench on device arrays with ``out=``,
    PyTorch on the same memory; each fn returns its result."""
    import torch
    from numba import cuda

    from . import functional as F

    relu, base = op.startswith("relu_"), op.removeprefix("relu_")
    x, dy, w, b = (host[k] for k in ("x", "dy", "w", "b"))
    kw = {"backend": "cuda", "out": cuda.device_array(x.shape, x.dtype)}
    ref = {"backend": "reference"}
    stats = {k: host[k] for k in ("mean", "var")}
    grad = {k: host[k] for k in ("mean", "invstd")}
    train = F.batch_norm_relu_train if relu else F.batch_norm_train
    infer = F.batch_norm_relu_eval if relu else F.batch_norm_eval

    def ours():
        if base == "forward_train":
            return train(d["x"], d["w"], d["b"], **kw).y
        if base == "forward_eval":
            return infer(d["x"], d["w"], d["b"], mean=d["mean"], var=d["var"], **kw)
        s = {"mean": d["mean"], "invstd": d["invstd"]}
        if relu:  # the mask: the reference's fused output
            return F.batch_norm_relu_backward(d["dy"], d["x"], d["w"], y=d["y"], **s, **kw).dx
        return F.batch_norm_backward(d["dy"], d["x"], d["w"], **s, **kw).dx

    if base == "forward_train":
        expected = (host["fused"] if relu else host["ref"]).y
    elif base == "forward_eval":
        expected = infer(x, w, b, **stats, **ref)
    elif relu:
        expected = F.batch_norm_relu_backward(dy, x, w, y=host["fused"].y, **grad, **ref).dx
    else:
        expected = F.batch_norm_backward(dy, x, w, **grad, **ref).dx
    theirs, torch_expected = _torch_call(torch, base, relu, t, host)
    return {
        "bnbench": (ours, expected),
        "torch": (theirs, expected if torch_expected is None else torch_expected),
    }


def _torch_call(torch, base, relu, t, host):
    import torch.nn.functional as TF

    from . import functional as F

    act = TF.relu if relu else (lambda v: v)
    if base == "forward_train":
        return lambda: act(TF.batch_norm(t["x"], None, None, t["w"], t["b"], True)), None
    if base == "forward_eval":
        return lambda: act(TF.batch_norm(t["x"], t["mean"], t["var"], t["w"], t["b"], False)), None
    xg, wg, bg = (t[k].detach().clone().requires_grad_() for k in ("x", "w", "b"))
    y = act(TF.batch_norm(xg, None, None, wg, bg, True))  # one graph, its backward timed
    expected = None
    if relu:  # PyTorch's own mask (its y), against the reference's gradient through it
        expected = F.batch_norm_relu_backward(
            host["dy"],
            host["x"],
            host["w"],
            y=y.detach().cpu().numpy(),
            mean=host["mean"],
            invstd=host["invstd"],
            backend="reference",
        ).dx
    return lambda: torch.autograd.grad(y, (xg, wg, bg), t["dy"], retain_graph=True)[0], expected


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a.detach().cpu().numpy()


def measure(shapes=SHAPES, repeats=REPEATS, dtype=np.float32, progress=print):
    import torch

    from .perf.timing import interleaved_timings

    def synced(fn):
        def call():
            r = fn()
            torch.cuda.synchronize()
            return r

        return call

    rows = []
    for shape in shapes:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        data = _data(shape, dtype)
        for op, factor in BYTE_MODEL.items():
            timed = {}
            for name, (fn, expected) in _contenders(op, *data).items():
                got = _host(fn()).astype(np.float64)
                scale = float(np.abs(expected).max())
                err = float(np.abs(got - expected).max())
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
                    raise AssertionError(f"{name} {op} {shape} disagrees with the reference "
                                         f"(max abs error {err:.3g})")  # fmt: skip
                timed[name] = synced(fn)
            timed["device copy"] = synced(lambda d=dst, s=src: d.copy_(s))
            times = interleaved_timings(timed, repeats, warmup=3, seed=0)
            med = {k: float(np.median(v)) for k, v in times.items()}
            copy_gbps = 2 * nbytes / med["device copy"] / 1e9
            row = {"op": op, "shape": "x".join(map(str, shape)), "dtype": np.dtype(dtype).name,
                   "repeats": repeats, "device_copy_gbps": copy_gbps}  # fmt: skip
            for name in ("bnbench", "torch"):
                gbps = factor * nbytes / med[name] / 1e9
                row |= {f"{name}_ms": med[name] * 1e3, f"{name}_gbps": gbps,
                        f"{name}_pct_of_copy": 100 * gbps / copy_gbps}  # fmt: skip
            row["bnbench_vs_torch"] = med["torch"] / med["bnbench"]
            rows.append(row)
            progress(f"  {op:>18} {row['shape']:>16}: bnbench {row['bnbench_ms']:.3f} ms, "
                     f"torch {row['torch_ms']:.3f} ms")  # fmt: skip
    return rows


def markdown(info, tests, rows, error=None):
    lines = ["# GPU check", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Tests on the GPU (NUMBA_ENABLE_CUDASIM unset)", "",
              "| target | rc | seconds | summary |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {t['target']} | {t['rc']} | {t['seconds']} | {t['summary']} |" for t in tests]
    lines += ["", "## Kernels: bnbench CUDA vs PyTorch (cuDNN where PyTorch picks it)", "",
              METHOD, ""]  # fmt: skip
    if error:
        lines += [f"**Stopped:** {error}", ""]
    if rows:
        head = ["op", "shape", "bnbench ms", "torch ms", "bnbench vs torch", "bnbench GB/s",
                "torch GB/s", "bnbench % of copy", "torch % of copy", "copy GB/s"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["op"], r["shape"], f"{r['bnbench_ms']:.3f}", f"{r['torch_ms']:.3f}",
                     f"{r['bnbench_vs_torch']:.2f}x", f"{r['bnbench_gbps']:.0f}",
                     f"{r['torch_gbps']:.0f}", f"{r['bnbench_pct_of_copy']:.0f}",
                     f"{r['torch_pct_of_copy']:.0f}", f"{r['device_copy_gbps']:.0f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bnbench.gpu_check", description=__doc__)
    parser.add_argument("--out", default="reports/gpu-check")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--quick", action="store_true", help="two shapes, 20 repeats")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device visible to PyTorch {torch.__version__}: nothing to check")
        return 0
    info = machine()
    print(f"GPU check on {info.get('gpu')} (driver {info.get('driver')})", flush=True)
    tests = [] if args.skip_tests else run_tests()
    shapes, repeats = (SHAPES[:1] + SHAPES[2:3], 20) if args.quick else (SHAPES, REPEATS)
    rows, error = [], None
    try:
        rows = measure(shapes, repeats)
    except Exception as err:  # noqa: BLE001  (recorded in the summary, then the exit code)
        error = f"{type(err).__name__}: {err}"
        print(error, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(
        {"machine": info, "tests": tests, "rows": rows, "error": error}, indent=2))  # fmt: skip
    (out / "summary.md").write_text(markdown(info, tests, rows, error))
    print(f"wrote {out / 'summary.md'} and summary.json", flush=True)
    return int(error is not None or any(t["rc"] != 0 for t in tests))


if __name__ == "__main__":
    sys.exit(main())
