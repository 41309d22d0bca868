"""BN variants in the networks and training: ghost batches, FrozenBN, Batch Renorm,
non-iid training batches (the kernels themselves are tested in test_ghost/test_renorm)."""

import numpy as np
import pytest
from helpers import numeric_grad

import bnbench as bn
from bnbench import data, nn, train

F64 = np.float64
FAST = dict(dataset="gaussian_mixture", epochs=2, bn_momenta=(0.1,), test_batch_sizes=(32,),
            test_orders=("iid",), estimators=("ema", "population", "test_batch"))  # fmt: skip


def layer_grads(layer, x, G):
    layer.forward(x, "train")
    dx = layer.backward(G)
    return dx, {k: g.copy() for k, g in layer.grads.items()}


def fd_check(layer, x, rng):
    G = rng.normal(size=x.shape)

    def loss():
        return float(np.sum(layer.forward(x, "train") * G))

    dx, grads = layer_grads(layer, x, G)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    for name, p in layer.params.items():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, p), rtol=1e-6, atol=1e-8)


def test_ghost_layer_normalises_each_group_and_reports_the_whole_batch(rng):
    layer = nn.BatchNorm(3, dtype=F64, ghost_batch_size=4)
    seen = []
    layer.observers.append(type("O", (), {"update": lambda self, *a: seen.append(a)})())
    x = rng.normal(size=(12, 3, 5)) * np.arange(1, 13)[:, None, None]
    y = layer.forward(x, "train")
    for g in range(3):  # each group of 4 samples by itself
        part = x[4 * g : 4 * g + 4]
        np.testing.assert_allclose(y[4 * g : 4 * g + 4], bn.batch_norm_train(part).y, rtol=1e-10)
    ((mean, var, count),) = seen  # the exact statistics of the whole batch
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-10)
    assert count == 60
    fd_check(layer, x[:8], rng)
    # "stats" mode (population, PreciseBN passes) is plain BN over the whole batch
    np.testing.assert_allclose(layer.forward(x, "stats"), bn.batch_norm_train(x).y, rtol=1e-10)


def test_frozen_layer_is_an_affine_map_with_fixed_statistics(rng):
    layer = nn.BatchNorm(3, dtype=F64)
    layer.params["weight"][:] = [0.5, 1.0, 2.0]
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    layer.freeze((mean, var))
    x = rng.normal(size=(6, 3, 4))
    expected = bn.batch_norm_eval(
        x, layer.params["weight"], layer.params["bias"], mean=mean, var=var
    )
    np.testing.assert_allclose(layer.forward(x, "train"), expected, rtol=1e-12)
    fd_check(layer, x, rng)  # no batch terms: the gradient of the affine map


def test_renorm_layer_gradient_holds_r_and_d_fixed(rng):
    layer = nn.BatchRenorm(3, dtype=F64, momentum=0.0)  # running statistics stay put
    layer.running_mean = np.array([3.0, -3.0, 0.0])
    layer.running_sigma = np.array([3.0, 0.3, 1.0])
    layer.rmax, layer.dmax = 1.05, 0.1  # r and d clipped: locally constant, as stop-gradient
    x = rng.normal(size=(8, 3, 4))
    fd_check(layer, x, rng)
    assert np.all(np.isin(np.round(layer.r, 12), np.round([1 / 1.05, 1.05], 12)))
    # rmax = 1, dmax = 0 is plain BN
    layer.rmax, layer.dmax = 1.0, 0.0
    np.testing.assert_allclose(layer.forward(x, "train"), bn.batch_norm_train(x).y, rtol=1e-12)


def test_renorm_is_ioffe_algorithm_1_by_hand(rng):
    """Ioffe (2017), Algorithm 1, computed by hand: moving averages of mu_B and of
    sigma_B = sqrt(var_B + eps) (biased variance, eps inside), r and d from them, and
    inference with (x - mu) / sigma."""
    eps, alpha = 1e-3, 0.25
    layer = nn.BatchRenorm(2, dtype=F64, momentum=alpha, eps=eps)
    layer.rmax, layer.dmax = 3.0, 5.0
    x = rng.normal(2.0, 3.0, size=(2, 2))  # a batch of 2: where the conventions differ most
    layer.forward(x, "train")  # the first batch starts mu and sigma: r = 1, d = 0
    np.testing.assert_allclose(layer.r, 1.0, rtol=1e-12)
    np.testing.assert_allclose(layer.d, 0.0, atol=1e-12)
    mu, sigma = x.mean(axis=0), np.sqrt(x.var(axis=0) + eps)
    np.testing.assert_allclose(layer.running_mean, mu, rtol=1e-12)
    np.testing.assert_allclose(layer.running_sigma, sigma, rtol=1e-12)
    x2 = rng.normal(0.0, 1.0, size=(2, 2))
    y = layer.forward(x2, "train")
    mu_b, sigma_b = x2.mean(axis=0), np.sqrt(x2.var(axis=0) + eps)
    r, d = np.clip(sigma_b / sigma, 1 / 3, 3), np.clip((mu_b - mu) / sigma, -5, 5)
    np.testing.assert_allclose(layer.r, r, rtol=1e-10)
    np.testing.assert_allclose(layer.d, d, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, (x2 - mu_b) / sigma_b * r + d, rtol=1e-10, atol=1e-12)
    mu, sigma = mu + alpha * (mu_b - mu), sigma + alpha * (sigma_b - sigma)
    np.testing.assert_allclose(layer.running_mean, mu, rtol=1e-12)
    np.testing.assert_allclose(layer.running_sigma, sigma, rtol=1e-12)
    # inference with its own statistics: y = (x - mu) / sigma exactly
    layer.eval_stats = layer.statistics
    np.testing.assert_allclose(layer.forward(x2, "eval"), (x2 - mu) / sigma, rtol=1e-10)
    before = layer.running_mean.copy()
    layer.forward(x, "stats")  # evaluation passes leave them alone
    np.testing.assert_array_equal(layer.running_mean, before)


def test_renorm_r_is_near_one_at_batch_2_unlike_the_variance_average():
    """The issue's measurement: with a moving average of the unbiased variance (torchrl)
    the mean r at batch 2 is about 0.63; Algorithm 1's moving average of sigma_B keeps
    it near 1 on stationary data."""
    rng = np.random.default_rng(0)
    layer = nn.BatchRenorm(64, dtype=F64, momentum=0.01)
    layer.rmax, layer.dmax = 1e6, 1e6  # unclipped: r measures the estimate itself
    rs = []
    for _ in range(3000):
        layer.forward(rng.normal(size=(2, 64)), "train")
        rs.append(layer.r.mean())
    assert abs(np.mean(rs[1000:]) - 1.0) < 0.1


def test_renorm_clip_schedule():
    assert nn.renorm_clip(0.0) == (1.0, 0.0) and nn.renorm_clip(1.0) == (3.0, 5.0)
    r_mid, d_mid = nn.renorm_clip(0.15)
    assert 1 < r_mid < 3 and 0 < d_mid < 5 and nn.renorm_clip(25 / 130)[1] == pytest.approx(5.0)


def run(**kw):
    return train.run(train.TrainConfig(model="mlp", batch_size=32, **{**FAST, **kw}))


def scores(result):
    return {e["estimator"]: e["test_accuracy"] for e in result["evaluations"]}


def test_every_variant_trains_and_every_estimator_scores_it():
    def strip(result):
        return [{k: v for k, v in e.items() if k != "estimator_seconds"}
                for e in result["evaluations"]]  # fmt: skip

    plain, whole = run(), run(ghost_batch_size=32)  # one ghost batch = the whole batch
    assert strip(whole) == strip(plain)
    assert whole["training"]["final_train_loss"] == plain["training"]["final_train_loss"]
    for kw in ({"ghost_batch_size": 8}, {"bn": "renorm"}, {"frozen_fraction": 0.3},
               {"batch_order": "non_iid", "classes_per_batch": 2}):  # fmt: skip
        result = run(**kw)
        got = scores(result)
        assert set(got) >= {"ema", "population", "test_batch"}, kw
        assert got["population"] > 0.8, kw
        # the variant took effect: training is not the plain run's
        assert result["training"]["final_train_loss"] != plain["training"]["final_train_loss"], kw
    frozen = run(frozen_fraction=0.3)
    assert "frozen" in scores(frozen) and scores(frozen)["frozen"] > 0.8


def test_non_iid_batches_hold_the_given_number_of_classes():
    labels = np.repeat(np.arange(5), 40)
    batches = train._non_iid_batches(labels, 16, 2, np.random.default_rng(0))
    assert len(batches) == 200 // 16
    assert all(len(b) == 16 and len(set(labels[b])) <= 2 for b in batches)
    with pytest.raises(
        ValueError, match=r"classes_per_batch must be at most the number of classes 5"
    ):
        train._non_iid_batches(labels, 16, 6, np.random.default_rng(0))


def test_frozen_fraction_must_freeze_and_leave_steps():
    for fraction in (0.001, 0.999):  # 56 steps: rounds to 0 or to every step
        with pytest.raises(ValueError, match=rf"frozen_fraction {fraction} of 56 training steps"):
            run(frozen_fraction=fraction)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"ghost_batch_size": 1}, r"ghost_batch_size must be an integer >= 2"),
        ({"ghost_batch_size": 24}, r"ghost_batch_size must divide batch_size 64, got 24"),
        ({"ghost_batch_size": 8, "bn": "renorm"}, r"ghost_batch_size applies to bn='bn' only"),
        ({"bn": "groupnorm"}, r"bn must be one of \('bn', 'renorm'\)"),
        ({"frozen_fraction": 1.0}, r"frozen_fraction must be in \[0, 1\)"),
        ({"frozen_fraction": -0.1}, r"frozen_fraction must be in \[0, 1\)"),
        ({"batch_order": "sorted"}, r"batch_order must be one of"),
        ({"batch_order": "non_iid", "classes_per_batch": 0}, r"classes_per_batch must be an integer >= 1"),
        ({"batch_order": "non_iid", "batch_size": 4, "classes_per_batch": 5},
         r"batch_size \(4\) must be at least classes_per_batch \(5\)"),
    ],
)  # fmt: skip
def test_bad_variant_configuration(kw, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**kw)


def test_non_iid_with_more_classes_than_the_dataset_is_refused():
    d = data.gaussian_mixture()
    cfg = train.TrainConfig(model="mlp", batch_order="non_iid", classes_per_batch=d.num_classes + 1,
                            **FAST)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"classes_per_batch must be at most the number of classes 4"
    ):
        train.run(cfg)
