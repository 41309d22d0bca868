"""bnbench.corrupted: each dataset's corrupted test sets by name."""

import numpy as np
import pytest

from bnbench import corrupted, data, mnist_c, shift


def test_every_registered_dataset_has_its_corruption_module():
    assert corrupted.corruptions("mnist1d") is shift
    assert corrupted.corruptions("mnist") is mnist_c
    assert set(corrupted.CORRUPTED) <= set(data.DATASETS)


def test_an_unknown_dataset_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"corruptions exist for datasets \['mnist', 'mnist1d'\]"):
        corrupted.corruptions("gaussian_mixture")


def test_severity_zero_is_the_clean_test_set(tmp_path, monkeypatch):
    monkeypatch.setenv("BNBENCH_CACHE_DIR", str(tmp_path))
    x, y = corrupted.corrupted_test_set("mnist1d", "gaussian_noise", 0, num_samples=200)
    clean = data.mnist1d(num_samples=200)
    np.testing.assert_array_equal(x, clean.x_test)
    np.testing.assert_array_equal(y, clean.y_test)
