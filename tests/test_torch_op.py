"""bnbench's kernels as a torch op and drop-in modules, against PyTorch's own batch norm:
forward, backward (and torch.autograd.gradcheck in float64), the running-statistics
update including momentum=None, inference mode, and the CUDA path's errors."""

import copy
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")
op = pytest.importorskip("bnbench.torch.op")
F = torch.nn.functional

SHAPES = [(16, 5), (8, 3, 7), (4, 3, 5, 6)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def inputs(shape, dtype, device="cpu", affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    c = shape[1]
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    b = torch.randn(c, generator=g, dtype=torch.float64).to(dtype) if affine else None
    return [t if t is None else t.to(device) for t in (x, w, b)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_training_forward_and_backward_match_torch(shape, dtype, affine, device):
    tol = (
        {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    )
    ours = [
        t if t is None else t.clone().requires_grad_()
        for t in inputs(shape, dtype, device, affine)
    ]
    ref = [
        t if t is None else t.clone().requires_grad_()
        for t in inputs(shape, dtype, device, affine)
    ]
    y = op.batch_norm(ours[0], None, None, ours[1], ours[2], training=True)
    y_ref = F.batch_norm(ref[0], None, None, ref[1], ref[2], training=True)
    torch.testing.assert_close(y, y_ref, **tol)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    for a, b in zip(ours, ref, strict=True):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, **tol)


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(shape, affine, training):
    x, w, b = (
        t if t is None else t.requires_grad_() for t in inputs(shape, torch.float64, affine=affine)
    )
    rm = torch.randn(shape[1], dtype=torch.float64)
    rv = torch.rand(shape[1], dtype=torch.float64) + 0.5

    def f(x, w, b):
        if training:
            return op.batch_norm(x, None, None, w, b, training=True)
        return op.batch_norm(x, rm, rv, w, b, training=False)

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_modules_match_torch_modules_including_running_statistics(momentum, kind):
    torch.manual_seed(0)
    ours, ref = ((op.BatchNorm1d, torch.nn.BatchNorm1d) if kind == "1d"
                 else (op.BatchNorm2d, torch.nn.BatchNorm2d))  # fmt: skip
    a, b = ours(4, momentum=momentum), ref(4, momentum=momentum)
    with torch.no_grad():
        for m in (a, b):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 1.5]))
            m.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    shape = (8, 4, 5) if kind == "1d" else (6, 4, 3, 5)
    for step in range(4):
        x = torch.randn(shape) * (step + 1) + step
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    a.eval(), b.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_no_running_stats_uses_batch_statistics_in_eval():
    a = op.BatchNorm1d(3, track_running_stats=False).eval()
    b = torch.nn.BatchNorm1d(3, track_running_stats=False).eval()
    x = torch.randn(10, 3)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_cpu_tensors_are_zero_copy_views():
    rm = torch.zeros(3)
    view = op._view(rm.view(1, 3))
    view[0, 1] = 7.0
    assert rm[1] == 7.0 and np.shares_memory(view, rm.numpy())


def test_convert_swaps_modules_and_the_estimators_see_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 3, 3), torch.nn.BatchNorm1d(3),
                                torch.nn.Flatten(), torch.nn.Linear(3 * 6, 2))  # fmt: skip
    ref = [p.clone() for p in model.state_dict().values()]
    converted = op.convert(model)
    assert type(converted[1]) is op.BatchNorm1d
    for a, b in zip(converted.state_dict().values(), ref, strict=True):
        assert torch.equal(a, b)
    batches = [(torch.randn(8, 1, 8), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    pop = bt.population_statistics(converted, batches)
    assert bt.evaluate(converted, batches, pop)["samples"] == 24


def test_bad_dtype_and_cuda_without_gpu_are_clear_errors():
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        op.batch_norm(torch.randn(4, 3).half(), None, None, training=True)
    with pytest.raises(ValueError, match="more than one value per channel"):
        op.batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(RuntimeError, match="bnbench runs on CPU and CUDA tensors"):
        op._view(torch.empty(2, 3, device="meta"))
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path runs in the tests above")
    fake = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    with pytest.raises(RuntimeError, match=r"CUDA tensor .* torch.cuda.is_available\(\) is False"):
        op._backend(fake)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_convert_keeps_each_layers_dtype_and_device(dtype, device):
    """The replacement is built in the old layer's dtype and on its device: a converted
    float64 model runs in float64 (it used to come back float32 and refuse the input)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4))
    model = model.to(device, dtype)
    ref = [(k, v.clone()) for k, v in model.state_dict().items()]
    x = torch.randn(8, 1, 10, dtype=dtype, device=device)
    torch_model = copy.deepcopy(model)
    expected = torch_model(x)
    converted = op.convert(model)
    assert type(converted[1]) is op.BatchNorm1d
    for t in (*converted[1].parameters(), converted[1].running_mean, converted[1].running_var):
        assert t.dtype == dtype and t.device.type == device
    for (k, a), (_, b) in zip(converted.state_dict().items(), ref, strict=True):
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), k
    out = converted(x)  # training mode: batch statistics and the running update
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(converted[1].running_var, torch_model[1].running_var)
    bn2d = op.convert(torch.nn.BatchNorm2d(3, affine=False).to(device, dtype))
    assert type(bn2d) is op.BatchNorm2d and bn2d.running_var.dtype == dtype
    assert bn2d(torch.randn(4, 3, 2, 2, dtype=dtype, device=device)).dtype == dtype
