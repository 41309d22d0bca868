"""bnbench.torch evaluation and adaptation modes against direct computations, and every
kind of bad input: a clear error naming what is wrong, and the model exactly as before
(buffers bit for bit, train/eval flags, no hooks or forward overrides left)."""

import copy

import numpy as np
import pytest

from bnbench import metrics

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")
nn = torch.nn

from test_torch_estimators import assert_untouched, cnn, data, snapshot, train  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    batches = data()
    model = cnn(dropout=0.3)
    train(model, batches)
    model.train()
    return model, batches


def test_evaluate_scores_with_bnbench_metrics_and_restores_the_model(trained):
    model, batches = trained
    model[1].eval()  # mixed flags must come back as they were
    snap = snapshot(model)
    scores = bt.evaluate(model, batches)
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits = torch.cat([ref(x) for x, _ in batches]).numpy()
    labels = torch.cat([y for _, y in batches]).numpy()
    assert scores == {**metrics.scores(logits, labels), "samples": 96}
    assert_untouched(model, snap)
    model.train()


def test_prediction_time_equals_training_mode_forward(trained):
    model, batches = trained
    snap = snapshot(model)
    logits, _ = bt.predict(model, batches, bt.prediction_time())
    ref = copy.deepcopy(model).train()
    for m in ref.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    with torch.no_grad():
        expected = torch.cat([ref(x) for x, _ in batches]).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert_untouched(model, snap)


def single_bn_model():
    torch.manual_seed(2)
    return nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))


def test_prior_and_online_ema_against_hand_computations():
    model = single_bn_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g) * 3 + 1
    batches = [(x[i : i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, 40, 8)]
    src = {"0": (torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5)}
    bn, lin = model[0], model[1]

    def head(xb, mean, var):
        z = (xb.double() - mean) / torch.sqrt(var + bn.eps) * bn.weight.double() + bn.bias.double()
        return lin(z.float()).detach().numpy()

    strength = 16.0
    expected, running = [], [s.clone() for s in src["0"]]
    online = []
    for xb, _ in batches:
        # the batch's unbiased variance, as Schneider et al.'s reference code
        m, v = xb.double().mean(0), xb.double().var(0)
        w = strength / (strength + 8)
        expected.append(head(xb, w * src["0"][0] + (1 - w) * m, w * src["0"][1] + (1 - w) * v))
        running[0] += 0.2 * (m - running[0])
        running[1] += 0.2 * (xb.double().var(0) - running[1])  # unbiased, as in training
        online.append(head(xb, *running))
    logits, _ = bt.predict(model, batches, bt.prior(src, strength))
    np.testing.assert_allclose(logits, np.concatenate(expected), rtol=1e-5, atol=1e-6)
    adaptation = bt.online_ema(src, 0.2)
    for _ in range(2):  # each evaluation starts over from the source statistics
        logits, _ = bt.predict(model, batches, adaptation)
        np.testing.assert_allclose(logits, np.concatenate(online), rtol=1e-5, atol=1e-6)


def test_adabn_is_the_exact_statistics_of_the_test_data_by_hand():
    """AdaBN computed by hand on a BN -> Linear -> BN model: the first layer's statistics
    are the test inputs' own mean and biased variance; the second layer's are those of
    the Linear layer's output with the first BN normalising by the first statistics
    (what AdaBN means: each layer adapted, upstream layers already adapted). Before, the
    test compared adabn() with population_statistics(), which is how adabn() is written."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    snap = snapshot(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64) * 2 + 1.5
    ada = bt.adabn(model, [x[i : i + 20] for i in range(0, 60, 20)])  # unlabeled: bare tensors
    bn1, lin = model[0], model[1]
    m1, v1 = x.mean(0), x.var(0, correction=0)
    h = lin((x - m1) / torch.sqrt(v1 + bn1.eps) * bn1.weight + bn1.bias).detach()
    m2, v2 = h.mean(0), h.var(0, correction=0)
    for name, (m, v) in {"0": (m1, v1), "2": (m2, v2)}.items():
        torch.testing.assert_close(ada[name][0], m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ada[name][1], v, rtol=1e-12, atol=1e-12)
    assert ada.samples == 60
    assert_untouched(model, snap)


def test_adaptation_guards_bad_statistics_and_reused_layers():
    """Refused by name, before any batch: an empty source (was a bare StopIteration),
    source statistics of the wrong shape (was a broadcasting error deep inside), negative
    or NaN variances (were silent NaN scores); and a BN layer called twice in one forward
    pass (the online EMA silently updated twice per batch)."""
    model = single_bn_model()
    batches = [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(
        ValueError, match=r"prior needs source statistics \{layer: \(mean, var\)\}, got \{\}"
    ):
        bt.prior({}, 4)
    wrong = {"0": (torch.zeros(5), torch.ones(5))}
    with pytest.raises(ValueError, match=r"source\['0'\] must be \(mean, var\) of shape \(4,\)"):
        bt.predict(model, batches, bt.prior(wrong, 4.0))
    for var, what in (
        (-torch.ones(4), "var must be >= 0"),
        (torch.full((4,), float("nan")), "must be finite"),
    ):
        with pytest.raises(ValueError, match=what):
            bt.prior({"0": (torch.zeros(4), var)}, 4.0)
        with pytest.raises(ValueError, match=what):
            bt.evaluate(model, batches, {"0": (torch.zeros(4), var)})
    with pytest.raises(ValueError, match=r"must be a pair \(mean, var\)"):
        bt.online_ema({"0": torch.zeros(4)}, 0.1)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.lin = nn.BatchNorm1d(4), nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(self.bn(self.bn(x)))

    twice = Twice()
    snap = snapshot(twice)
    src = {"bn": (torch.zeros(4), torch.ones(4))}
    with pytest.raises(ValueError, match="BN layer 'bn' was called twice in one forward pass"):
        bt.evaluate(twice, batches, bt.online_ema(src, 0.1))
    assert_untouched(twice, snap)
    bt.evaluate(twice, batches, src)  # fixed statistics: a reused layer is harmless


def test_adaptation_parameters_checked_up_front():
    src = {"0": (torch.zeros(4), torch.ones(4))}
    with pytest.raises(ValueError, match="prior strength N must be finite and > 0"):
        bt.prior(src, -1.0)
    with pytest.raises(ValueError, match="momenta must be"):
        bt.online_ema(src, 2.0)
    with pytest.raises(TypeError, match="prior needs source statistics"):
        bt.prior(None, 4)
    with pytest.raises(ValueError, match="adaptation mode must be one of"):
        bt.Adaptation("tent")


def test_prediction_time_with_one_value_per_channel_is_a_clear_error():
    model = single_bn_model()
    snap = snapshot(model)
    batches = [(torch.randn(1, 4), torch.zeros(1, dtype=torch.long))]
    with pytest.raises(ValueError, match="more than one value per channel"):
        bt.evaluate(model, batches, bt.prediction_time())
    assert_untouched(model, snap)


# bad input: each a clear error, the model untouched


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.lin(self.bn(x)))


def _calls(batches):
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x, *_ in batches]
    return {
        "track": lambda m: _track(m, batches),
        "precise": lambda m: bt.precise_statistics(m, batches),
        "population": lambda m: bt.population_statistics(m, batches),
        "evaluate": lambda m: bt.evaluate(m, labelled),
    }


def _track(model, batches):
    with bt.track(model):
        for x, *_ in batches:
            model(x)


@pytest.mark.parametrize("call", ["track", "precise", "population"])
def test_reused_bn_layer(call):
    model = Reuse().train()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"BN layer 'bn' was called twice in one forward pass"):
        _calls([(torch.randn(8, 4),)])[call](model)
    if call == "track":
        # the error comes from inside the user's own forward pass: the BN update that pass
        # made before the second call stays (track never writes the model), hooks go
        snap[0].update({k: v for k, v in model.state_dict().items() if "running" in k})
        snap[0]["bn.num_batches_tracked"] = model.bn.num_batches_tracked
    assert_untouched(model, snap)


@pytest.mark.parametrize("call", ["track", "precise", "population", "evaluate"])
def test_model_without_bn(call):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="has no BatchNorm layers"):
        _calls([(torch.randn(8, 4),)])[call](model)


@pytest.mark.parametrize("call", ["precise", "population"])
def test_eval_mode_bn_during_estimation(call):
    model = cnn()
    model[4].eval()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"every BN layer in training mode.*'4'"):
        _calls(data())[call](model)
    assert_untouched(model, snap)


@pytest.mark.parametrize("call", ["precise", "population", "evaluate"])
@pytest.mark.parametrize(
    "batches, message",
    [
        ([], "batches yielded no batch"),
        ([({"x": 1}, 0)], "batch 0 .* first element is a dict"),
        (["text"], "batch 0 .* it is a str"),
    ],
)
def test_bad_batches(call, batches, message):
    model = cnn()
    snap = snapshot(model)
    calls = {"precise": lambda: bt.precise_statistics(model, batches),
             "population": lambda: bt.population_statistics(model, batches),
             "evaluate": lambda: bt.evaluate(model, batches)}  # fmt: skip
    with pytest.raises((TypeError, ValueError), match=message):
        calls[call]()
    assert_untouched(model, snap)


def test_error_in_a_later_batch_restores_buffers_after_train_mode_passes():
    """Train-mode passes have already moved the running buffers when batch 2 fails."""
    model = cnn()
    batches = data()[:2] + [("oops", None)]
    snap = snapshot(model)
    with pytest.raises(TypeError, match="batch 2"):
        bt.precise_statistics(model, batches)
    assert_untouched(model, snap)
    with pytest.raises(TypeError, match="batch 2 must be"):
        bt.evaluate(model, [*data()[:2], (torch.randn(4, 2, 16),)])
    assert_untouched(model, snap)


def test_population_needs_reiterable_batches_and_lazy_needs_materialising():
    model = cnn()
    with pytest.raises(TypeError, match="not an iterator or generator"):
        bt.population_statistics(model, iter(data()))
    lazy = nn.Sequential(nn.Linear(4, 4), nn.LazyBatchNorm1d())
    with pytest.raises(ValueError, match="'1' .*not materialised"):
        bt.precise_statistics(lazy, [torch.randn(8, 4)])


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is tested in test_torch_op.py")
    model = cnn()
    snap = snapshot(model)
    for call in (lambda: bt.precise_statistics(model, data(), device="cuda"),
                 lambda: bt.population_statistics(model, data(), device="cuda:0"),
                 lambda: bt.evaluate(model, data(), device="cuda")):  # fmt: skip
        with pytest.raises(
            RuntimeError, match=r"'cuda(:0)?' was asked for.*is_available\(\) is False"
        ):
            call()
    assert_untouched(model, snap)


def test_statistics_on_the_data_device_and_error_measure():
    model = cnn()
    pop = bt.population_statistics(model, data())
    for mean, var in pop.values():
        assert mean.device.type == "cpu" and var.dtype == torch.float64
    assert bt.statistics_error(pop, pop, model=model) == (0.0, 0.0)
    shifted = {n: (m + torch.sqrt(v + 1e-5), v * np.e) for n, (m, v) in pop.items()}
    mean_err, var_err = bt.statistics_error(shifted, pop, eps=0.0)
    assert mean_err == pytest.approx(1.0, rel=1e-3) and var_err == pytest.approx(1.0, rel=1e-3)


def test_statistics_error_uses_each_layers_own_eps():
    """eps is the layers' own (here 0.5 and 1e-3, not the 1e-5 default that was used for
    every model), or given explicitly; neither or both is an error."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, eps=0.5), nn.ReLU(),
                          nn.Linear(3, 2), nn.BatchNorm1d(2, eps=1e-3))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 4, generator=g),) for _ in range(3)]
    pop = bt.population_statistics(model, batches)
    other = {n: (m + 0.1, v * 0.5) for n, (m, v) in pop.items()}
    expected = []
    for name, e in (("1", 0.5), ("4", 1e-3)):
        (m, v), (m_ref, v_ref) = (tuple(s.numpy() for s in d[name]) for d in (other, pop))
        expected.append((np.sqrt(np.mean((m - m_ref) ** 2 / (v_ref + e))),
                         np.sqrt(np.mean(np.log((v + e) / (v_ref + e)) ** 2))))  # fmt: skip
    got = bt.statistics_error(other, pop, model=model)
    np.testing.assert_allclose(got, np.mean(expected, axis=0), rtol=1e-12)
    assert bt.statistics_error(other, pop, eps=0.5)[1] < got[1]  # eps 0.5 on both layers
    with pytest.raises(TypeError, match="exactly one of model="):
        bt.statistics_error(other, pop)
    with pytest.raises(TypeError, match="exactly one of model="):
        bt.statistics_error(other, pop, 1e-5, model=model)
    with pytest.raises(ValueError, match=r"reference names BN layer\(s\) \['1'\]"):
        unlike = nn.Sequential(nn.Linear(4, 3), nn.Identity(), nn.ReLU(), nn.Linear(3, 2),
                               nn.BatchNorm1d(2))  # fmt: skip
        bt.statistics_error(other, pop, model=unlike)


def test_fixed_statistics_forward_is_shared(monkeypatch):
    """population_statistics and evaluate normalise with fixed statistics through one
    function, _core.fixed_forward (they had two copies of it)."""
    from bnbench.torch import _core

    calls = []
    original = _core.fixed_forward

    def counting(layer, mean, var):
        calls.append(layer)
        return original(layer, mean, var)

    monkeypatch.setattr(_core, "fixed_forward", counting)
    model, batches = cnn(), data()
    pop = bt.population_statistics(model, batches)
    assert len(calls) == 0 + 1 + 2  # pass j normalises the j layers already done
    calls.clear()
    bt.evaluate(model, batches, pop)
    assert len(calls) == 3
    layer = model[1]
    x = torch.randn(4, 6, 5)
    mean, var = torch.rand(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5
    ref = copy.deepcopy(layer).eval()
    ref.running_mean.copy_(mean)
    ref.running_var.copy_(var)
    with torch.no_grad():
        torch.testing.assert_close(original(layer, mean, var)(x), ref(x))
