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


pytestmark = pytest.mark.usefixtures("one_thread")  # results do not depend on it


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


# ---------------------------------------------------------------------------
# Drop-in behaviour: each test below reproduced a difference from torch's own batch norm


def pair(kind):
    """(bnbench's module class, torch's) for "1d" or "2d"."""
    return {"1d": (op.BatchNorm1d, torch.nn.BatchNorm1d),
            "2d": (op.BatchNorm2d, torch.nn.BatchNorm2d)}[kind]  # fmt: skip


def twins(kind, *args, **kwargs):
    """bnbench's module and torch's, with the same (non-trivial) parameters."""
    ours, ref = (cls(*args, **kwargs) for cls in pair(kind))
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.uniform_(-1.0, 1.0)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 8, 3, 3)])
def test_channels_last_input_keeps_its_layout_zero_copy(shape, training, monkeypatch):
    """A channels-last input gives a channels-last output and input gradient, as torch's;
    the kernels see the input's own memory (its (N, H, W, C) view, axis=-1), no copy."""
    torch.manual_seed(0)
    ours, ref = twins("2d", shape[1])
    ours.train(training), ref.train(training)
    if not training:
        ref.running_mean.uniform_(-1, 1), ref.running_var.uniform_(0.5, 2)
        ours.load_state_dict(ref.state_dict())
    x = (torch.randn(shape) * 2 + 1).contiguous(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    seen = []
    for name in ("batch_norm_train", "batch_norm_eval", "batch_norm_backward"):
        real = getattr(op.bnf, name)

        def spy(*args, _real=real, **kwargs):
            seen.append((args, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(op.bnf, name, spy)
    y, y_ref = ours(xs[0]), ref(xs[1])
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    (args, kwargs) = seen[0]
    assert kwargs["axis"] == -1 and np.shares_memory(args[0], xs[0].detach().numpy())
    assert np.shares_memory(kwargs["out"], y.detach().numpy())
    dy = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    y.backward(dy), y_ref.backward(dy)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-5)
    assert xs[0].grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "kind,shape", [("1d", (0, 5)), ("1d", (0, 5, 9)), ("2d", (0, 3, 2, 2)), ("2d", (2, 3, 0, 4))]
)
def test_empty_batch_is_an_empty_output_like_torch(kind, shape, training):
    """N = 0 (or an empty spatial axis): torch returns an empty output, leaves the running
    statistics alone (num_batches_tracked still counts the call in training mode) and
    gives weight and bias zero gradients; bnbench raised."""
    ours, ref = twins(kind, shape[1])
    states = []
    for m in (ours, ref):
        m.train(training)
        x = torch.randn(shape, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape
        y.backward(torch.rand_like(y))
        assert x.grad.shape == x.shape
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        states[-1].update(wgrad=m.weight.grad, bgrad=m.bias.grad)
    for k in states[1]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0, msg=k)
    assert torch.equal(ours.weight.grad, torch.zeros(shape[1]))
    assert torch.equal(ours.running_var, torch.ones(shape[1]))
    # the functional form, down to torch's 1-D empty input (C = 0, no weight)
    for x in (torch.empty(0), torch.empty(0, 3).contiguous()):
        c = x.shape[1] if x.dim() > 1 else 0
        args = (torch.zeros(c), torch.ones(c))
        torch.testing.assert_close(op.batch_norm(x, *args, training=training),
                                   F.batch_norm(x, *args, training=training))  # fmt: skip


@pytest.mark.parametrize("momentum", [0.0, -1.0, 1.5, 1.0])
def test_any_momentum_updates_like_torch_and_zero_freezes(momentum):
    """torch accepts any float momentum; 0.0 freezes the running statistics (users do
    this), and bnbench refused it (and anything outside (0, 1])."""
    torch.manual_seed(0)
    ours, ref = twins("1d", 3, momentum=momentum)
    for m in (ours, ref):
        m.running_mean.fill_(0.25), m.running_var.fill_(2.0)
    for step in range(3):
        x = torch.randn(8, 3, 4) * (step + 1) + step
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5, atol=1e-5)
    if momentum == 0.0:
        assert torch.equal(ours.running_mean, torch.full((3,), 0.25))
        assert torch.equal(ours.running_var, torch.full((3,), 2.0))


@pytest.mark.parametrize(
    "kwargs", [{"bias": False}, {"affine": False}, {"track_running_stats": False}, {}]
)
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_convert_keeps_every_constructor_option(kind, kwargs):
    """convert() rebuilt the layer from (num_features, eps, momentum, affine,
    track_running_stats) only: BatchNorm2d(C, bias=False) failed with "Missing key(s):
    bias"; a layer whose track_running_stats was switched off after construction (its
    buffers kept, as torch's own tests do) failed with "Unexpected key(s)"."""
    ref = pair(kind)[1](4, momentum=0.3, eps=1e-3, **kwargs)
    flipped = pair(kind)[1](4)
    flipped.track_running_stats = False  # buffers kept and used, never updated
    for module in (ref, flipped):
        module = module.double()
        keys = {k: v.clone() for k, v in module.state_dict().items()}
        new = op.convert(copy.deepcopy(module))
        assert type(new) is pair(kind)[0]
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            assert getattr(new, attr) == getattr(module, attr), attr
        assert (new.bias is None) == (module.bias is None)
        assert new.state_dict().keys() == keys.keys()
        for k, v in new.state_dict().items():
            assert v.dtype == keys[k].dtype and torch.equal(v, keys[k]), k
        x = torch.randn(6, 4, 3, dtype=torch.float64)
        x = x if kind == "1d" else x.unsqueeze(-1)
        torch.testing.assert_close(new(x), module(x))
        for k, v in new.state_dict().items():
            torch.testing.assert_close(v, module.state_dict()[k], msg=k)


def _penalty_gradient(bn, x, w, b):
    """d/dx of the gradient penalty ||d(sum y^2 * c)/dx||^2: needs the second derivative
    of batch norm (create_graph=True)."""
    y = bn(x, None, None, w, b, training=True)
    (gx,) = torch.autograd.grad((y**2 * torch.arange(1.0, 1 + y.numel()).view_as(y)).sum(),
                                x, create_graph=True)  # fmt: skip
    return torch.autograd.grad((gx**2).sum(), (x, w, b))


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_double_backward_in_training_mode(shape, affine):
    """With create_graph=True the first derivative was detached (the kernel's backward is
    not differentiable), so a gradient penalty silently lost the batch-norm path: x (6, 3)
    float64 gave [1.19, 0.54, -3.38] where torch gives [0.34, 0.60, -4.70]. The backward
    is now differentiable (torch ops when a graph is requested)."""
    x, w, b = inputs(shape, torch.float64, affine=True)
    w, b = (w, b) if affine else (torch.ones_like(w), torch.zeros_like(b))
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = _penalty_gradient(op.batch_norm, *leaves)
    ref = _penalty_gradient(F.batch_norm, *(t.clone().requires_grad_() for t in (x, w, b)))
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
    x, w, b = (t.requires_grad_() for t in inputs(shape, torch.float64, affine=True))
    fn = lambda x, w, b: op.batch_norm(x, None, None, w if affine else None,  # noqa: E731
                                       b if affine else None, training=True)  # fmt: skip
    assert torch.autograd.gradgradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5)


BAD_CALLS = {
    "running_mean too short": lambda f: f(torch.rand(2, 10), torch.rand(9), torch.rand(10)),
    "running_mean too long": lambda f: f(torch.rand(2, 10), torch.rand(11), torch.rand(10)),
    "running_var wrong": lambda f: f(torch.rand(2, 10), torch.rand(10), torch.rand(9)),
    "weight wrong": lambda f: f(
        torch.rand(2, 10), torch.rand(10), torch.rand(10), weight=torch.rand(9)
    ),  # fmt: skip
    "bias wrong": lambda f: f(
        torch.rand(2, 10), torch.rand(10), torch.rand(10), bias=torch.rand(11)
    ),  # fmt: skip
    "training, weight wrong": lambda f: f(
        torch.rand(4, 3), None, None, torch.rand(4), training=True
    ),  # fmt: skip
    "eval without running_mean": lambda f: f(torch.rand(4, 3), None, None),
    "eval without running_var": lambda f: f(torch.rand(4, 3), torch.zeros(3), None),
    "training with one buffer": lambda f: f(
        torch.rand(4, 3), torch.zeros(3), None, training=True
    ),  # fmt: skip
    "one value per channel": lambda f: f(torch.rand(1, 3), None, None, training=True),
    "training eps=0": lambda f: f(torch.rand(4, 3), None, None, training=True, eps=0.0),
    "eval eps<0": lambda f: f(torch.rand(4, 3), torch.zeros(3), torch.ones(3), eps=-1.0),
    "weight of another dtype": lambda f: f(
        torch.rand(4, 3), None, None, torch.ones(3, dtype=torch.float64), training=True
    ),
    "1-D input": lambda f: f(torch.rand(5), None, None, training=True),
    "1-D input with buffers": lambda f: f(torch.rand(5), torch.zeros(5), torch.ones(5)),
    "integer input": lambda f: f(
        torch.ones(4, 3, dtype=torch.long), None, None, training=True
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_calls_raise_torchs_exception_type(case):
    """Each bad call raises what F.batch_norm raises (RuntimeError for a channel
    mismatch or a missing buffer in eval mode, ValueError for eps and for one value per
    channel, ...): bnbench's ValueError/TypeError was not caught by code written for
    torch."""
    with pytest.raises(Exception) as expected:
        BAD_CALLS[case](F.batch_norm)
    with pytest.raises(Exception) as got:
        BAD_CALLS[case](op.batch_norm)
    assert type(got.value) is type(expected.value), (got.value, expected.value)


@pytest.mark.parametrize("kind,shape", [("1d", (2, 5, 3)), ("2d", (2, 5, 3, 3))])
def test_modules_refuse_wrong_shapes_like_torch(kind, shape):
    ours, ref = twins(kind, 5)
    for x in (torch.rand(2, 5, 3, 3, 3), torch.rand(5), torch.rand(*shape[:1], 4, *shape[2:])):
        with pytest.raises(Exception) as expected:
            ref(x)
        with pytest.raises(type(expected.value)):
            ours(x)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 2)])
def test_eps_zero_in_inference_mode(shape):
    """torch accepts eps=0 in inference mode (only training needs eps > 0), and a negative
    running variance (NaN); bnbench's eval checks refused both."""
    x, w, b = (t.requires_grad_() for t in inputs(shape, torch.float64))
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    y = op.batch_norm(x, rm, rv, w, b, eps=0.0)
    torch.testing.assert_close(y, F.batch_norm(x, rm, rv, w, b, eps=0.0))
    assert torch.autograd.gradcheck(lambda *a: op.batch_norm(a[0], rm, rv, *a[1:], eps=0.0),
                                    (x, w, b))  # fmt: skip
    rv = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)  # torch: NaN, inf; bnbench raised
    for eps in (0.0, 1e-5):
        y = op.batch_norm(x.detach(), rm, rv, w.detach(), b.detach(), eps=eps)
        want = F.batch_norm(x.detach(), rm, rv, w.detach(), b.detach(), eps=eps)
        torch.testing.assert_close(y, want, equal_nan=True)
    ours, ref = twins("1d" if len(shape) == 2 else "2d", 3, eps=0.0)
    ours.double().eval(), ref.double().eval()
    torch.testing.assert_close(ours(x.detach()), ref(x.detach()))


@pytest.mark.parametrize("training", [True, False])
def test_noncontiguous_statistics_and_parameters(training):
    """torch takes strided running statistics (and weight, bias) and updates the running
    statistics in place; bnbench refused them."""
    x = torch.randn(8, 3, 5)
    base = {k: torch.stack([torch.zeros(3), torch.ones(3)], 1).clone() for k in ("ours", "ref")}
    params = torch.tensor([[0.5, 1.5, 2.0], [0.1, -0.2, 0.3]]).t()  # columns: strided
    for k, f in (("ours", op.batch_norm), ("ref", F.batch_norm)):
        rm, rv = base[k][:, 0], base[k][:, 1]
        assert not rm.is_contiguous()
        y = f(x, rm, rv, params[:, 0], params[:, 1], training=training)
        base[k + "_y"] = y
    torch.testing.assert_close(base["ours_y"], base["ref_y"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base["ours"], base["ref"], rtol=1e-6, atol=1e-6)
    if training:
        assert not torch.equal(base["ours"][:, 0], torch.zeros(3))  # written in place


@pytest.mark.parametrize("device", DEVICES)
def test_drop_in_paths_on_every_device(device):
    """The paths above on each device (the CUDA ones run where a GPU is): channels-last
    in both modes, momentum 0 with strided buffers, eps = 0, the double backward."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6, device=device).contiguous(memory_format=torch.channels_last)
    for training in (True, False):
        ours, ref = (m.to(device).train(training) for m in twins("2d", 3))
        y, y_ref = ours(x), ref(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for f in (op.batch_norm, F.batch_norm):  # momentum 0: strided buffers left as they were
        buf = torch.stack([torch.zeros(3), torch.ones(3)], 1).to(device)
        f(x, buf[:, 0], buf[:, 1], training=True, momentum=0.0)
        assert torch.equal(buf[:, 0], torch.zeros(3, device=device))
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    torch.testing.assert_close(op.batch_norm(x, rm, rv, eps=0.0), F.batch_norm(x, rm, rv, eps=0.0))
    xs = [t.to(device).requires_grad_() for t in inputs((6, 3), torch.float64)]
    ours = _penalty_gradient(op.batch_norm, *xs)
    xs = [t.detach().clone().requires_grad_() for t in xs]
    for a, r in zip(ours, _penalty_gradient(F.batch_norm, *xs), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
