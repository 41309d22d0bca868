"""Paired differences over seeds: the one statistics path behind every finding.

A study compares a method with a baseline *on the same trained networks*: each run
(one seed of one configuration) gives one paired difference, method minus baseline, in
a quantity where larger is better (accuracy in points; pass ``-error`` for an error).
:func:`paired_difference` turns those per-seed differences into a :class:`Difference`:
the mean, a Student-t confidence interval, ``n`` and a verdict:

* ``"helps"``: the interval lies above zero; ``"hurts"``: below zero;
* ``"no clear difference"``: the interval contains zero;
* ``"too few seeds"``: fewer than :data:`MIN_SEEDS` finite differences; no verdict.

Why a t interval and not a bootstrap: at n = 3-5 a percentile bootstrap interval is
too narrow (it never reaches beyond the n values; simulated on normal data, a nominal
95% percentile interval covers the true mean 76% of the time at n = 3 and 84% at
n = 5), so it calls effects that are not there; the t interval is exact for normal differences and robust enough for the
near-symmetric differences of accuracies. ``tests/test_stats.py`` measures both rules.

Many calls in one finding (say, 6 corruptions x 6 test batch sizes) are a *family*:
:func:`correct` controls their errors. The default, ``"bonferroni"``, widens every
interval of a family of ``m`` calls to the ``1 - (1 - confidence) / m`` level
(simultaneous intervals) and decides each verdict on its widened interval: it controls
the family-wise error rate at ``1 - confidence`` under any dependence between the calls,
and a reader can check every verdict against the printed interval. ``"holm"`` (Holm's
step-down: the same error control, a little more power when many effects are real) and
``"fdr_bh"`` (Benjamini-Hochberg: controls the false discovery rate, for independent or
positively dependent calls) decide verdicts on adjusted p-values and leave the intervals
per comparison, so there a verdict cannot always be read off its interval; the studies
use Bonferroni. :attr:`Difference.correction` says which correction over how many calls
decided a verdict.

What a verdict can detect: with 5 seeds a two-sided 5% t test finds a true paired
effect of one standard deviation of the paired differences 40% of the time and one of
2 sds 91% (noncentral t); 80% power needs 1.7 sds at 5 seeds and 3.3 sds at 3. Pairing is what makes
effects visible: two estimators on the same networks differ by much less than the
networks differ from each other. A "no clear difference" is not evidence of no
difference; :meth:`Difference.within` asks the question the other way round (is the
method at most ``margin`` worse?), and :func:`holds_from` turns a sweep of those into a
threshold that holds for every larger setting.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

#: what a report's Method section says about its verdicts
METHOD = (
    "Every comparison is paired: a method minus its baseline on the same trained network "
    "and test data, one difference per seed. A finding gives the mean difference, its "
    "Student-t interval and n (seeds); the intervals of a finding with m comparisons are "
    "simultaneous 95% intervals (Bonferroni: each at the 1 - 0.05/m level), so that the "
    "family-wise error rate of its verdicts is at most 5%: 'helps' or 'hurts' when the "
    "interval excludes zero, 'no clear difference' when it does not (which is not evidence "
    "of no difference), and no verdict below 3 seeds (bnbench.stats)."
)
#: the fewest finite paired differences a verdict is given from
MIN_SEEDS = 3
VERDICTS = ("helps", "hurts", "no clear difference", "too few seeds")
CORRECTIONS = ("bonferroni", "holm", "fdr_bh")


@dataclass(frozen=True)
class Difference:
    """A paired difference over seeds (method minus baseline; positive is better).

    ``mean``, ``low``, ``high`` in the unit of the values (``low``/``high``: the
    ``confidence`` t interval, NaN below :data:`MIN_SEEDS`), ``n`` finite differences,
    ``sd`` their standard deviation, ``p`` the two-sided t test p-value of zero mean
    (``p_adjusted`` after :func:`correct`, else equal to ``p``), ``verdict`` one of
    :data:`VERDICTS`, ``correction`` e.g. ``"holm over 12"`` (``None``: uncorrected)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    p: float
    p_adjusted: float
    verdict: str
    confidence: float = 0.95
    correction: str | None = None

    def interval(self, digits=1):
        """``"[+0.4, +2.0]"`` (``"[n/a]"`` without an interval)."""
        if self.low != self.low:
            return "[n/a]"
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def text(self, unit="points", digits=1):
        """``"+1.2 [+0.4, +2.0] points, n=5"``: mean, interval, n."""
        mean = "n/a" if self.mean != self.mean else f"{self.mean:+.{digits}f}"
        return f"{mean} {self.interval(digits)} {unit}, n={self.n}"

    def sentence(self, unit="points", digits=1):
        """``"helps (+1.2 [+0.4, +2.0] points, n=5)"``: the verdict with its evidence."""
        return f"{self.verdict} ({self.text(unit, digits)})"

    def within(self, margin):
        """Whether the method is confidently at most ``margin`` worse than the baseline:
        the interval's lower end above ``-margin`` (a non-inferiority test at level
        ``(1 - confidence) / 2``). ``False`` below :data:`MIN_SEEDS`."""
        return bool(self.n >= MIN_SEEDS and self.low > -margin)

    def as_dict(self):
        """JSON-ready fields (NaN as ``None``)."""
        return {k: (None if isinstance(v, float) and v != v else v)
                for k, v in asdict(self).items()}  # fmt: skip


def _check_confidence(confidence):
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise TypeError(f"confidence must be a number in (0, 1), got {confidence!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _verdict(mean, significant):
    if not significant or mean == 0:
        return "no clear difference"
    return "helps" if mean > 0 else "hurts"


def paired_difference(values, confidence=0.95):
    """The :class:`Difference` of per-seed paired differences ``values`` (a 1-D array
    or sequence; NaN entries, e.g. evaluations that could not run, are left out of
    ``n``): their mean, a two-sided Student-t ``confidence`` interval and the verdict.
    All-equal differences have a zero-width interval (a nonzero mean is then a verdict:
    every network moved by exactly that much)."""
    from scipy.special import stdtr, stdtrit  # Student t CDF and its inverse (fast ufuncs)

    confidence = _check_confidence(confidence)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    if n < MIN_SEEDS:
        return Difference(mean, math.nan, math.nan, n, sd, math.nan, math.nan,
                          "too few seeds", confidence)  # fmt: skip
    se = sd / math.sqrt(n)
    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * se
    if se > 0:
        p = float(2 * stdtr(n - 1, -abs(mean) / se))
    else:
        p = 1.0 if mean == 0 else 0.0
    verdict = _verdict(mean, mean - half > 0 or mean + half < 0)
    return Difference(mean, mean - half, mean + half, n, sd, p, p, verdict, confidence)


def _adjusted(p, method):
    """Adjusted p-values of ``p`` (1-D) by Holm (step-down) or Benjamini-Hochberg."""
    m = p.size
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    else:  # fdr_bh: step-up
        adj = np.minimum.accumulate((m * ranked / np.arange(1, m + 1))[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    out = np.empty(m)
    out[order] = adj
    return out


def _widened(d, m):
    """``d`` with its interval at the Bonferroni level for a family of ``m`` calls."""
    from scipy.special import stdtrit

    level = 1 - (1 - d.confidence) / m
    half = float(stdtrit(d.n - 1, 0.5 + level / 2)) * (d.sd / math.sqrt(d.n))
    low, high = d.mean - half, d.mean + half
    verdict = _verdict(d.mean, low > 0 or high < 0)
    return Difference(d.mean, low, high, d.n, d.sd, d.p, float(min(1.0, d.p * m)), verdict,
                      d.confidence, f"Bonferroni over {m}")  # fmt: skip


def correct(differences, method="bonferroni"):
    """The ``differences`` (a sequence or a dict of :class:`Difference`) corrected as a
    family: ``"bonferroni"`` widens every interval to the simultaneous level and decides
    the verdicts on them; ``"holm"`` (family-wise error rate) and ``"fdr_bh"`` (false
    discovery rate) decide the verdicts on adjusted p-values at level
    ``1 - confidence`` and keep the intervals. Differences with too few seeds make no call
    and are not counted in the family. Returns the same kind of container."""
    if method not in CORRECTIONS:
        raise ValueError(f"method must be one of {CORRECTIONS}, got {method!r}")
    keys = list(differences) if isinstance(differences, dict) else None
    items = [differences[k] for k in keys] if keys is not None else list(differences)
    calls = [i for i, d in enumerate(items) if d.verdict != "too few seeds"]
    if len({items[i].confidence for i in calls}) > 1:
        raise ValueError("every difference of a family must have the same confidence")
    out = list(items)
    if calls and method == "bonferroni":
        for i in calls:
            out[i] = _widened(items[i], len(calls))
    elif calls:
        adj = _adjusted(np.array([items[i].p for i in calls]), method)
        label = f"{'Holm' if method == 'holm' else 'Benjamini-Hochberg'} over {len(calls)}"
        for i, p in zip(calls, adj, strict=True):
            d = items[i]
            verdict = _verdict(d.mean, p < 1 - d.confidence)
            out[i] = Difference(d.mean, d.low, d.high, d.n, d.sd, d.p, float(p), verdict,
                                d.confidence, label)  # fmt: skip
    return dict(zip(keys, out, strict=True)) if keys is not None else out


def paired_gap(df, value, baseline, run_key="job_key", on=()):
    """Per row of ``df``: ``value`` minus the same run's ``baseline`` value.

    ``baseline``: a boolean mask selecting one row per (run, ``on``...), e.g. the
    source statistics of the same network on the same test set, whose ``value`` is
    subtracted. Pairing by run removes the seed-to-seed spread of the networks."""
    keys = [run_key, *on]
    base = df.loc[baseline, [*keys, value]].rename(columns={value: "_base"})
    if base.duplicated(keys).any():
        raise ValueError(f"baseline must select one row per {keys}")
    merged = df[keys].merge(base, on=keys, how="left")
    return df[value].to_numpy() - merged["_base"].to_numpy()


def per_run(df, value, run_key="job_key"):
    """``value`` averaged within each run (e.g. over corruptions): one number per seed,
    in run order."""
    return df.groupby(run_key, sort=True)[value].mean().to_numpy()


def compare(df, value, by=(), run_key="job_key", confidence=0.95, correction="bonferroni"):
    """One :class:`Difference` per group of ``by`` (column names): the per-run means of
    the paired differences ``value`` (see :func:`paired_gap`), the family of groups
    corrected with ``correction`` (``None``: uncorrected). Returns ``{group: Difference}``
    (``group`` a tuple of the ``by`` values, ``()`` for no ``by``) in sorted order."""
    by = list(by)
    groups = df.groupby(by, sort=True) if by else [((), df)]
    out = {}
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        out[key] = paired_difference(per_run(part, value, run_key), confidence)
    return correct(out, correction) if correction else out


def holds_from(qualifies):
    """The smallest setting from which *every* larger one qualifies.

    ``qualifies``: ``{setting: bool}`` over ordered settings (e.g. sample counts). A
    sweep whose gaps go 0.1, 5, 4, 0 at 32/64/128/256 holds from 256, not from 32 (the
    first crossing). ``None`` if the largest setting does not qualify. By the
    intersection-union principle the claim "every setting from k on qualifies" has the
    level of each single test, so no multiplicity correction is needed."""
    found = None
    for setting in sorted(qualifies, reverse=True):
        if not qualifies[setting]:
            break
        found = setting
    return found
