"""bnbench.findings: a finding's sentence written from its cells' numbers (mean, interval,
verdict, the evidence they share), the same findings as findings.json, and cells and
verdict lists built from differences."""

import json
import math

import numpy as np

from bnbench.findings import Cell, Finding, cells, render, to_json, verdict_lists
from bnbench.stats import Difference


def diff(mean, low, high, n=5, verdict="helps", correction=None):
    return Difference(mean, low, high, n, 1.0, 0.01, 0.01, verdict, 0.95, correction)


HELPS = diff(1.25, 0.4, 2.04, correction="Bonferroni over 2")
UNCLEAR = diff(-0.3, -1.0, 0.4, verdict="no clear difference", correction="Bonferroni over 2")


def test_cells_render_mean_interval_and_verdict():
    assert Cell("B=64", HELPS).render("points") == "B=64: +1.2 [+0.4, +2.0] helps"
    assert Cell("B=64", HELPS, note="seed 3 diverged").render("points", digits=2) == (
        "B=64: +1.25 [+0.40, +2.04] helps (seed 3 diverged)"
    )
    few = diff(math.nan, math.nan, math.nan, n=1, verdict="too few seeds")
    assert Cell("B=2", few).render("points") == "B=2: n/a [n/a] too few seeds"
    assert Cell("clean", value=97.349).render("%") == "clean: 97.3"
    assert Cell("all corruptions").render("points") == "all corruptions"


def test_the_finding_sentence_and_its_evidence():
    f = Finding("adabn-vs-source", "cnn, severity 5", "AdaBN minus the source statistics",
                [Cell("B=64", HELPS), Cell("B=2", UNCLEAR)], summary="helps from B=64.")  # fmt: skip
    assert f.evidence() == (
        "points; n=5 seeds each; simultaneous 95% t intervals (Bonferroni over 2)"
    )
    assert f.text() == (
        "- **cnn, severity 5**: AdaBN minus the source statistics: "
        "B=64: +1.2 [+0.4, +2.0] helps; B=2: -0.3 [-1.0, +0.4] no clear difference "
        "(points; n=5 seeds each; simultaneous 95% t intervals (Bonferroni over 2)). "
        "Helps from B=64."
    )
    holm = Finding("x", "", "EMA minus population", [Cell("a", diff(1, 0.5, 1.5, n=3,
                   correction="holm over 4")), Cell("b", diff(1, 0.5, 1.5, n=7))])  # fmt: skip
    assert holm.evidence() == "points; n=3-7 seeds each; 95% t intervals; verdicts holm over 4"
    assert holm.text().startswith("- EMA minus population: a: +1.0")
    assert Finding("bare", "", "Nothing measured").text() == "- Nothing measured."
    assert render([f, holm]) == f.text() + "\n" + holm.text()


def test_to_json_holds_the_numbers_and_the_text():
    f = Finding("adabn-vs-source", "cnn", "AdaBN minus source",
                [Cell("B=64", HELPS, condition={"test_batch_size": 64}), Cell("clean", value=97.5)],
                method="adabn", baseline="source", dataset="mnist", model="cnn")  # fmt: skip
    data = json.loads(to_json([f], study="shift", preset="full"))
    assert (data["study"], data["preset"]) == ("shift", "full")
    (found,) = data["findings"]
    assert found["id"] == "adabn-vs-source" and found["text"] == f.text()
    assert (found["method"], found["baseline"], found["unit"]) == ("adabn", "source", "points")
    first, second = found["cells"]
    assert first["condition"] == {"test_batch_size": 64}
    assert (first["mean"], first["low"], first["high"], first["n"]) == (1.25, 0.4, 2.04, 5)
    assert first["verdict"] == "helps" and first["value"] is None
    assert second == {"label": "clean", "condition": {}, "value": 97.5, "note": ""}


def test_cells_from_differences_and_the_verdict_lists():
    hurts = diff(-2.0, -3.0, -1.0, verdict="hurts")
    made = cells({(np.int64(64), "iid"): HELPS, (np.int64(2), "sorted"): hurts},
                 lambda key: f"B={key[0]} {key[1]}", names=("batch_size", "order"))  # fmt: skip
    assert [c.label for c in made] == ["B=64 iid", "B=2 sorted"]
    assert made[0].condition == {"batch_size": 64, "order": "iid"}
    assert type(made[0].condition["batch_size"]) is int  # NumPy scalars made plain for JSON
    assert made[1].difference is hurts
    lists = verdict_lists([*made, Cell("B=8", UNCLEAR), Cell("clean", value=1.0)])
    assert lists == {"helps": ["B=64 iid"], "hurts": ["B=2 sorted"],
                     "no clear difference": ["B=8"], "too few seeds": []}  # fmt: skip
