"""Is it the statistics? ``model.eval()`` scoring much worse than ``model.train()``
(pytorch#5406, #4741, keras#6977, chemprop#607), answered on a user's model and data.

:func:`diagnose` scores, on the same test examples: the model's own running buffers
(eval mode), the exact population statistics of the training data
(:func:`bnbench.torch.population_statistics`, one pass per BN layer), PreciseBN at a few
sample counts (:func:`bnbench.torch.precise_statistics`, fvcore's current aggregation by
default) and train mode (prediction-time BN: each test batch normalised with its own
statistics, dropout off). It then says how much of the eval/train gap the statistics
explain, which BN layers' buffers are off, and the cheapest estimate that recovers it.

Every interval is a paired bootstrap over test examples (:func:`paired_bootstrap`):
resample the example indices, recompute every estimate's accuracy on the same resample,
take the percentile interval of the differences. The sentences are decided from those
intervals, never from point estimates (:mod:`bnbench.torch._diagnose_report`).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import evaluate as np_evaluate
from .. import metrics
from ..stats import Difference
from . import _core, evaluation, statistics
from ._diagnose_checks import Counted, check_args, named, probe
from ._diagnose_report import COLUMNS, decide, format_table, layer_errors, write

__all__ = ["Diagnosis", "diagnose", "format_table", "main_from_factories", "paired_bootstrap"]


@dataclass
class Diagnosis:
    """What :func:`diagnose` found. ``scores``: one row per estimate (``estimate``,
    ``label``, ``samples`` of training data it read, ``accuracy`` / ``nll`` / ``ece``,
    ``acc_low`` / ``acc_high`` its bootstrap interval in points, ``vs_population`` /
    ``vs_low`` / ``vs_high`` its accuracy minus the population statistics' in points,
    ``mean_error`` / ``var_error`` against the population statistics, and the cost:
    ``forward_batches`` and ``forward_samples`` over the training data, ``seconds``).
    ``layers``: the running buffers' error against the population statistics per BN
    layer, worst first. ``gap``: population minus buffers accuracy (points);
    ``train_gap``: train mode minus buffers; ``residual``: train mode minus population.
    ``statistics``: ``{label: Statistics}`` of the computed estimates, e.g.
    ``bnbench.torch.load_statistics(model, d.statistics[d.recommended])``."""

    scores: pd.DataFrame
    layers: pd.DataFrame
    gap: Difference
    train_gap: Difference
    residual: Difference
    verdict: str
    recommended: str
    recommendation: str
    findings: list = field(default_factory=list)
    statistics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    report: Path | None = None

    def __str__(self):
        return format_table(self)


def resampled_accuracies(correct, resamples=2000, seed=0):
    """``(E, resamples)`` accuracies in points of ``E`` per-example correctness rows, every
    row on the same resamples: resample ``r`` draws the indices ``rng.integers(0, N, N)``
    (``rng = np.random.default_rng(seed)``, resamples in order)."""
    c = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    n = c.shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty((c.shape[0], resamples))
    for r in range(resamples):  # counts of each index: an (E, N) @ (N,) per resample
        out[:, r] = c @ np.bincount(rng.integers(0, n, n), minlength=n)
    return 100.0 * out / n


def bootstrap_difference(a, b, boot, confidence=0.95):
    """The :class:`bnbench.stats.Difference` (points) of correctness ``a`` minus ``b``
    with ``boot`` the bootstrap accuracy differences: the observed difference, the
    percentile interval, ``n`` examples, ``sd`` of the per-example differences, a
    two-sided bootstrap p-value and the verdict from the interval."""
    d = 100.0 * (np.asarray(a, np.float64) - np.asarray(b, np.float64))
    lo, hi = (
        float(v) for v in np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)])
    )
    p = float(min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))))
    verdict = "helps" if lo > 0 else "hurts" if hi < 0 else "no clear difference"
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    return Difference(float(d.mean()), lo, hi, int(d.size), sd, p, p, verdict, confidence)


def paired_bootstrap(correct, baseline, resamples=2000, seed=0, confidence=0.95):
    """Accuracy of per-example correctness ``correct`` minus ``baseline`` (same examples),
    in points, with a paired percentile bootstrap interval over the examples."""
    boot = resampled_accuracies([correct, baseline], resamples, seed)
    return bootstrap_difference(correct, baseline, boot[0] - boot[1], confidence)


def _prediction_time(model, test_batches, size, seed, device):
    """Logits of prediction-time BN, in the order of ``test_batches``: on them as given, or
    re-batched in shuffled batches of exactly ``size`` (:func:`bnbench.evaluate.exact_batches`)."""
    if size is None:
        return evaluation.predict(model, test_batches, evaluation.prediction_time(), device)[0]
    xs, ys = zip(*((x, rest[0]) for x, rest in _core.iterate(test_batches, "cpu", "test_batches")),
                 strict=True)  # fmt: skip
    x, y = torch.cat(xs), torch.cat(ys)
    split = np_evaluate.exact_batches(
        len(x), size, "iid", None, np.random.default_rng([seed, 3, size])
    )
    batches = [(x[torch.from_numpy(i)], y[torch.from_numpy(i)]) for i, _ in split]
    logits = evaluation.predict(model, batches, evaluation.prediction_time(), device)[0]
    out = np.empty((len(x), logits.shape[1]), logits.dtype)
    for k, (idx, keep) in enumerate(split):
        out[idx[keep]] = logits[k * size : (k + 1) * size][keep]
    return out


def diagnose(model, train_batches, test_batches, *, precise_samples=(256, 1024, None),
             aggregation="total_variance", test_batch_size=None, resamples=2000,
             confidence=0.95, margin=0.5, seed=0, out=None, device=None):  # fmt: skip
    """Diagnose the eval/train accuracy gap of trained ``model`` (a ``torch.nn.Module``
    with BN layers keeping running buffers); returns a :class:`Diagnosis`.

    ``train_batches``: the training data, ``(input, ...)`` batches (labels unused), a list
    or ``DataLoader`` (re-iterable: the population statistics take one pass per BN layer;
    shuffled is fine). ``test_batches``: labelled ``(input, labels)`` batches, the same
    examples in the same order on every pass (``shuffle=False``). ``precise_samples``:
    PreciseBN sample counts (whole batches of ``train_batches``, one-sample batches
    skipped; ``None`` or a count at least the training set: all of it), with
    ``aggregation`` (default fvcore's current ``"total_variance"``). ``test_batch_size``:
    train mode on the test batches as given (``None``) or re-batched into shuffled
    batches of that size. ``resamples`` / ``confidence`` / ``seed``: the paired
    bootstrap over test examples. ``margin`` (points): the recommendation is the cheapest
    fixed estimate whose accuracy minus the population's has its lower end above
    ``-margin``. ``out``: a folder to write the report into. ``device``: where inputs go
    (default: the model's). The model is left exactly as it was, after an error too."""
    layers, counts = check_args(
        model,
        train_batches,
        test_batches,
        precise_samples,
        aggregation,
        test_batch_size,
        resamples,
        confidence,
        margin,
    )
    device = _core.check_device(_core.model_device(model) if device is None else device)
    rows, correct, stats_ = [], [], {}
    with _core.preserved(model), torch.no_grad():
        probe(model, train_batches, "train_batches", device, False)
        first_test = probe(model, test_batches, "test_batches", device, True)
        buffers = {
            n: (m.running_mean.detach().double().clone(), m.running_var.detach().double().clone())
            for n, m in layers.items()
        }
        labels = None

        def score(estimate, label, logits, **cost):
            if len(logits) != len(labels):
                raise ValueError(
                    "test_batches gave a different number of examples on another pass"
                )
            ok = (logits.argmax(1) == labels) & np.isfinite(logits).all(1)
            correct.append(ok)
            rows.append({"estimate": estimate, "label": label, **cost,
                         **metrics.scores(logits, labels)})  # fmt: skip

        def fixed(estimate, label, stats, **cost):
            with named("test_batches"):
                logits, got = evaluation.predict(model, test_batches, stats, device)
            if not np.array_equal(got, labels):
                raise ValueError("test_batches must yield the same examples in the same order on "
                                 "every pass (a DataLoader with shuffle=False)")  # fmt: skip
            err = evaluation.statistics_error(stats, population, model=model)
            score(estimate, label, logits, mean_error=err[0], var_error=err[1], **cost)

        with named("test_batches"):
            logits, labels = evaluation.predict(model, test_batches, None, device)
        model.eval()
        for m in layers.values():  # PreciseBN's passes: BN layers in training mode, dropout off
            m.train()
        counted = Counted(train_batches)
        with named("train_batches"):
            population = statistics.population_statistics(model, counted, device)
        n_train, per_pass = population.samples, counted.taken // population.passes
        err = evaluation.statistics_error(buffers, population, model=model)
        score("buffers", "running buffers", logits, samples=0, mean_error=err[0],
              var_error=err[1], forward_batches=0, forward_samples=0, seconds=0.0)  # fmt: skip
        wanted = sorted({None if k is None or k >= n_train else int(k) for k in counts},
                        key=lambda k: n_train if k is None else k)  # fmt: skip
        for k in wanted:
            counted = Counted(train_batches, min_size=2)
            with named("train_batches"):
                s = statistics.precise_statistics(model, counted, k, aggregation, device)
            label = f"PreciseBN {'all' if k is None else k}"
            stats_[label] = s
            fixed("precise", label, s, samples=s.samples, forward_batches=counted.taken,
                  forward_samples=s.samples, seconds=s.seconds)  # fmt: skip
        stats_["population"] = population
        fixed("population", "population", population, samples=n_train,
              forward_batches=population.passes * per_pass,
              forward_samples=population.passes * n_train, seconds=population.seconds)  # fmt: skip
        with named("test_batches"):
            logits = _prediction_time(model, test_batches, test_batch_size, seed, device)
        size = test_batch_size or first_test
        score("test_batch", f"train mode (test batches of {size})", logits, test_batch_size=size,
              samples=0, forward_batches=0, forward_samples=0)  # fmt: skip
    boot = resampled_accuracies(correct, resamples, seed)
    df = pd.DataFrame(rows)
    df[["accuracy", "nll", "ece"]] = df[["accuracy", "nll", "ece"]].astype(float)
    df["accuracy"] *= 100.0
    row = {e: int(np.flatnonzero(df["estimate"] == e)[-1]) for e in df["estimate"]}
    buf, pop, tb = row["buffers"], row["population"], row["test_batch"]

    def diff(i, j):
        return bootstrap_difference(correct[i], correct[j], boot[i] - boot[j], confidence)

    vs_pop = [diff(i, pop) for i in range(len(df))]
    lo, hi = np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)], axis=1)
    df = df.assign(
        acc_low=lo,
        acc_high=hi,
        vs_population=[d.mean for d in vs_pop],
        vs_low=[d.low for d in vs_pop],
        vs_high=[d.high for d in vs_pop],
    ).reindex(columns=COLUMNS)
    settings = {"precise_samples": counts, "aggregation": aggregation, "resamples": resamples,
                "confidence": confidence, "margin": margin, "seed": seed, "train_samples": n_train,
                "test_samples": len(labels), "bn_layers": len(layers),
                "model": type(model).__name__}  # fmt: skip
    gaps = {"gap": diff(pop, buf), "train_gap": diff(tb, buf), "residual": diff(tb, pop)}
    per_layer = layer_errors(buffers, population, layers)
    said = decide(df, per_layer, vs_pop, [diff(i, buf) for i in range(len(df))], gaps, settings)
    result = Diagnosis(df, per_layer, **gaps, **said, statistics=stats_, settings=settings)
    if out is not None:
        result.report = write(result, out)
    return result


def main_from_factories(model_path, data_path, out=None, batch_size=128, test_batch_size=None,
                        seed=0, **options):  # fmt: skip
    """:func:`diagnose` on factories given by import path (``"package.module:factory"``,
    :func:`bnbench.torch.jobs.load_factory`): the model factory takes no argument and
    returns a **trained** ``torch.nn.Module`` (nothing is trained here; it is called after
    ``torch.manual_seed(seed)``), the data factory returns ``(x_train, y_train, x_test,
    y_test)`` (arrays or tensors, integer labels). Training batches of ``batch_size`` are
    shuffled (seeded: PreciseBN reads their first samples), test batches are in order;
    ``options`` go to :func:`diagnose`. Returns the :class:`Diagnosis`."""
    from . import jobs

    make_model, make_data = jobs.load_factory(model_path), jobs.load_factory(data_path)
    x_tr, y_tr, x_te, y_te = jobs.as_tensors(make_data())
    torch.manual_seed(seed)
    model = make_model()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model factory {model_path!r} must return a torch.nn.Module, "
                        f"got {type(model).__name__}")  # fmt: skip
    train = jobs.loader(x_tr, y_tr, batch_size, torch.Generator().manual_seed(seed))
    test = jobs.loader(x_te, y_te, batch_size)
    started = time.perf_counter()
    result = diagnose(model, train, test, test_batch_size=test_batch_size, seed=seed, out=None,
                      **options)  # fmt: skip
    result.settings |= {
        "model_factory": model_path,
        "data_factory": data_path,
        "batch_size": batch_size,
        "seconds": time.perf_counter() - started,
    }
    if out is not None:
        result.report = write(result, out)
    return result
