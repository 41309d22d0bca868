"""bnbench.torch._compat, batch norm the way torch does it where the op does not use
bnbench's kernels: the differentiable training backward against autograd through
``F.batch_norm``, the inference map and the running update against the formulas by hand,
the empty input, and torch's argument checks with torch's exception types."""

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from bnbench.torch import _compat  # noqa: E402


def inputs(shape=(4, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 1
    weight = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64)
    return x, weight, bias


@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 3), (2, 3, 2, 3)])
def test_train_backward_equals_autograd_and_is_differentiable(shape):
    x, weight, bias = inputs(shape)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = F.batch_norm(x, None, None, weight, bias, True, 0.1, 1e-5)
    ref = torch.autograd.grad(y, (x, weight, bias), dy)
    dx, dweight, dbias = _compat.train_backward(dy, x, weight, 1e-5)
    for got, want in zip((dx, dweight, dbias), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the graph reaches x: a second derivative exists (torch's own, through autograd)
    (g,) = torch.autograd.grad(dx.square().sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    dx_plain, _, _ = _compat.train_backward(dy, x, None, 1e-5)  # no weight: weight 1
    ones = torch.ones_like(weight)
    torch.testing.assert_close(dx_plain, _compat.train_backward(dy, x, ones, 1e-5)[0])


def test_eval_forward_is_the_formula_by_hand_including_eps_zero():
    x, weight, bias = inputs()
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    c = (1, 3, 1)
    y = _compat.eval_forward(x, weight, bias, mean, var, 0.0)
    hand = (x - mean.reshape(c)) / var.sqrt().reshape(c) * weight.reshape(c) + bias.reshape(c)
    torch.testing.assert_close(y, hand, rtol=1e-12, atol=1e-12)
    plain = _compat.eval_forward(x, None, None, mean, var, 0.0)
    torch.testing.assert_close(plain, (x - mean.reshape(c)) / var.sqrt().reshape(c))
    negative = _compat.eval_forward(x, None, None, mean, -var, 0.0)
    assert torch.isnan(negative).all()  # as torch gives for a negative variance


@pytest.mark.parametrize("momentum", [0.0, 0.1, 1.5])
def test_update_running_by_hand_for_any_momentum(momentum):
    rm = torch.tensor([1.0, 2.0], dtype=torch.float32)
    rv = torch.tensor([3.0, 4.0], dtype=torch.float32)
    mean, var = torch.tensor([5.0, -1.0]), torch.tensor([2.0, 0.5])  # biased, of 5 values
    _compat.update_running(rm, rv, mean, var, 5, momentum)
    want_mean = [momentum * 5.0 + (1 - momentum) * 1.0, momentum * -1.0 + (1 - momentum) * 2.0]
    want_var = [momentum * 2.5 + (1 - momentum) * 3.0, momentum * 0.625 + (1 - momentum) * 4.0]
    torch.testing.assert_close(rm, torch.tensor(want_mean))
    torch.testing.assert_close(rv, torch.tensor(want_var))
    assert rm.dtype == torch.float32  # updated in place


def test_empty_input_is_a_copy_that_keeps_weight_and_bias_in_the_graph():
    x = torch.zeros(0, 3, 4, requires_grad=True)
    weight = torch.ones(3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    out = _compat.empty(x, weight, bias)
    assert out.shape == (0, 3, 4) and out is not x and out.grad_fn is not None
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros(3)) and torch.equal(bias.grad, torch.zeros(3))
    assert _compat.empty(x, None, None).shape == (0, 3, 4)
    spatial = torch.zeros(2, 3, 0)  # an empty spatial axis
    assert _compat.empty(spatial, weight, bias).shape == (2, 3, 0)


def test_check_args_raise_as_torch_does():
    with pytest.raises(ValueError, match="Expected more than one value per channel"):
        _compat.check_args(torch.ones(1, 3), True, 1e-5)
    with pytest.raises(ValueError, match="eps must be positive during training"):
        _compat.check_args(torch.ones(2, 3), True, 0.0)
    with pytest.raises(ValueError, match="eps must be non-negative"):
        _compat.check_args(torch.ones(2, 3), False, -1.0)
    _compat.check_args(torch.ones(1, 3), False, 0.0)  # inference accepts both
    _compat.check_args(torch.ones(0, 3), True, 1e-5)  # an empty input passes


def test_check_raises_torchs_exception_types():
    x = torch.ones(2, 3)
    r = torch.zeros(3)
    _compat.check(x, r, r, r, r, False)
    _compat.check(x, None, None, None, None, True)
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        _compat.check(x, None, None, None, None, False)
    with pytest.raises(ValueError, match="either both be None or neither"):
        _compat.check(x, r, None, None, None, True)
    with pytest.raises(RuntimeError, match="weight should contain 3 elements not 2"):
        _compat.check(x, r, r, torch.ones(2), None, False)
    with pytest.raises(IndexError, match="needs an input of shape"):
        _compat.check(torch.ones(3), None, None, None, None, True)
    with pytest.raises(NotImplementedError, match="not implemented for torch.int64"):
        _compat.check(torch.ones(2, 3, dtype=torch.long), r, r, None, None, False)
    with pytest.raises(TypeError, match="float32 or float64, got torch.float16"):
        _compat.check(x.half(), r, r, None, None, False)
    with pytest.raises(RuntimeError, match="mixed dtype: bias"):
        _compat.check(x, r, r, None, r.double(), False)
