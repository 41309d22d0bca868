"""Each dataset's corrupted test sets by name: MNIST-1D-C (:mod:`bnbench.shift`) and MNIST-C
(:mod:`bnbench.mnist_c`), looked up from a registry of module names (a module above
:mod:`bnbench.data` and the corruption modules, which build on it)."""

import importlib

#: dataset -> the module of its corrupted test sets (``CORRUPTIONS``, ``SEVERITIES``,
#: ``corrupted_test_set``): one registry per dataset
CORRUPTED = {"mnist1d": "bnbench.shift", "mnist": "bnbench.mnist_c"}


def corruptions(dataset):
    """The corruption module of ``dataset`` (see :data:`CORRUPTED`), or a clear error."""
    if dataset not in CORRUPTED:
        raise ValueError(
            f"corruptions exist for datasets {sorted(CORRUPTED)} (MNIST-1D-C, MNIST-C), "
            f"got dataset {dataset!r}"
        )
    return importlib.import_module(CORRUPTED[dataset])


def corrupted_test_set(dataset, corruption, severity, num_samples=None):
    """The test set of ``dataset`` under ``corruption`` at ``severity`` (``(x, y)``, the
    clean set's shape, dtype and order); ``num_samples`` for MNIST-1D (default 5000)."""
    module = corruptions(dataset)
    if dataset == "mnist1d":
        return module.corrupted_test_set(corruption, severity, num_samples=num_samples or 5000)
    return module.corrupted_test_set(corruption, severity)
