"""bnbench.torch.example, the README's diagnose example: MNIST-1D as (N, 1, 40) signals
and the default CNN trained briefly, seeded, handed back in eval mode with running
buffers that lag the population statistics (the situation diagnose explains)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")

from bnbench.torch import example, jobs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_data_is_mnist1d_as_one_channel_signals():
    x_train, y_train, x_test, y_test = example.data()
    assert x_train.shape == (4000, 1, 40) and x_test.shape == (1000, 1, 40)
    assert len(y_train) == 4000 and len(y_test) == 1000
    assert set(np.unique(y_train)) == set(range(10))


def test_trained_model_is_seeded_in_eval_mode_with_lagging_buffers():
    model = example.trained_model()
    assert not any(m.training for m in model.modules())
    again = example.trained_model(seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    other = example.trained_model(seed=1)
    assert not torch.equal(model[0].weight, other[0].weight)
    # 3 epochs of 7 steps at batch 512: the buffers differ from the exact statistics of
    # the training set, by far more than the population pass's own rounding
    x, _, _, _ = jobs.as_tensors(example.data())
    batches = [x[i : i + 512] for i in range(0, len(x), 512)]
    population = bt.population_statistics(model.train(), batches)
    model.eval()
    var_error = max(
        float((model.get_submodule(n).running_var.double().log() - var.log()).abs().max())
        for n, (_, var) in population.items()
    )
    assert var_error > 0.1
