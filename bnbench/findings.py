"""Findings as data: what a report says, kept as numbers and rendered by one function.

A study's analysis returns its findings as :class:`Finding` objects: a claim about a
method against a baseline, in some scope (model, test set), made of :class:`Cell` s,
one per condition (a batch size, a corruption), each holding the
:class:`bnbench.stats.Difference` that decides it (or, for a descriptive cell, a plain
value). :func:`render` writes every finding's sentence the same way, so every number in
a sentence is the mean, interval and n of the helper's difference, and
:func:`to_json` writes the same findings as ``findings.json`` beside ``report.md``:
the answer page and the documentation read that file, never the prose.
"""

import json
from dataclasses import dataclass, field

from .stats import Difference


@dataclass
class Cell:
    """One condition of a finding: ``label`` (e.g. ``"B=64"``), its ``condition`` as
    data (e.g. ``{"test_batch_size": 64}``), and a ``difference`` or a descriptive
    ``value`` (in the finding's unit) with an optional ``note``."""

    label: str
    difference: Difference | None = None
    value: float | None = None
    condition: dict = field(default_factory=dict)
    note: str = ""

    def render(self, unit, digits=1):
        if self.difference is not None:
            d = self.difference
            mean = "n/a" if d.mean != d.mean else f"{d.mean:+.{digits}f}"
            text = f"{self.label}: {mean} {d.interval(digits)} {d.verdict}"
        elif self.value is not None:
            text = f"{self.label}: {self.value:.{digits}f}"
        else:
            text = self.label
        return text + (f" ({self.note})" if self.note else "")


@dataclass
class Finding:
    """A claim with its evidence. ``id``: stable across datasets and runs (the answer
    page looks findings up by it); ``scope``: where it holds (``"cnn, severity 5"``);
    ``claim``: what is compared, ending before the cells (``"AdaBN minus the source
    statistics, by corruption"``); ``cells``; ``summary``: a closing sentence derived
    from the cells by the study (e.g. ``"helps from B=16"``); ``method`` / ``baseline``
    / ``unit`` / ``dataset`` / ``model``: the comparison as data."""

    id: str
    scope: str
    claim: str
    cells: list = field(default_factory=list)
    summary: str = ""
    method: str | None = None
    baseline: str | None = None
    unit: str = "points"
    dataset: str | None = None
    model: str | None = None
    digits: int = 1

    def differences(self):
        return [c.difference for c in self.cells if c.difference is not None]

    def evidence(self):
        """``"points; n=5 seeds each; simultaneous 95% t intervals (Bonferroni over 9)"``:
        what the cells share."""
        diffs = self.differences()
        parts = [self.unit] if self.cells else []
        if diffs:
            ns = sorted({d.n for d in diffs})
            seeds = f"n={ns[0]} seeds" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]} seeds"
            parts.append(seeds + (" each" if len(diffs) > 1 else ""))
            conf = diffs[0].confidence
            corrections = sorted({d.correction for d in diffs if d.correction})
            if corrections and all(c.startswith("Bonferroni") for c in corrections):
                parts.append(f"simultaneous {conf:.0%} t intervals ({', '.join(corrections)})")
            else:
                parts.append(f"{conf:.0%} t intervals")
                if corrections:
                    parts.append("verdicts " + ", ".join(corrections))
        return "; ".join(parts)

    def text(self):
        """The finding as one markdown bullet (numbers with ``digits`` decimals)."""
        cells = "; ".join(c.render(self.unit, self.digits) for c in self.cells)
        body = f"{self.claim}: {cells}" if cells else self.claim
        evidence = self.evidence()
        if evidence:
            body += f" ({evidence})"
        body += "."
        if self.summary:
            summary = self.summary.rstrip(".")
            body += f" {summary[0].upper()}{summary[1:]}."
        return f"- **{self.scope}**: {body}" if self.scope else f"- {body}"

    def as_dict(self):
        cells = []
        for c in self.cells:
            d = c.difference.as_dict() if c.difference is not None else {}
            cells.append({"label": c.label, "condition": c.condition, "value": c.value,
                          "note": c.note, **d})  # fmt: skip
        return {
            "id": self.id, "scope": self.scope, "claim": self.claim, "summary": self.summary,
            "method": self.method, "baseline": self.baseline, "unit": self.unit,
            "dataset": self.dataset, "model": self.model, "text": self.text(), "cells": cells,
        }  # fmt: skip


def render(findings):
    """The markdown bullets of ``findings`` (one per finding), in order."""
    return "\n".join(f.text() for f in findings)


def to_json(findings, **meta):
    """``findings.json`` text: ``meta`` (study, dataset, preset, ...) and the findings."""
    return json.dumps({**meta, "findings": [f.as_dict() for f in findings]}, indent=2,
                      default=str) + "\n"  # fmt: skip


def cells(differences, label, names=()):
    """Cells of ``differences`` (``{key tuple: Difference}``, as
    :func:`bnbench.stats.compare` returns) labelled ``label(key)``, with ``names`` the
    condition's column names (the key's parts, in order)."""
    return [Cell(label(key), d, condition=dict(zip(names, (_plain(k) for k in key), strict=True)))
            for key, d in differences.items()]  # fmt: skip


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def verdict_lists(cells):
    """``{"helps": [labels], "hurts": [...], "no clear difference": [...], "too few
    seeds": [...]}`` of the cells' verdicts (cells without a difference are left out)."""
    out = {"helps": [], "hurts": [], "no clear difference": [], "too few seeds": []}
    for c in cells:
        if c.difference is not None:
            out[c.difference.verdict].append(c.label)
    return out
