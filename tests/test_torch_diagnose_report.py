"""bnbench.torch._diagnose_report: diagnose's report folder (Markdown, HTML, figure, CSV
tables, findings, provenance) and the terminal table."""

import json

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bnbench.torch")

from test_torch_diagnosis import corrupted, setup  # noqa: E402, F401

from bnbench.torch import _diagnose_report  # noqa: E402
from bnbench.torch.diagnosis import diagnose, format_table  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_report_folder_and_the_terminal_table(setup, tmp_path):  # noqa: F811 (the fixture)
    model, train, test = setup
    result = diagnose(corrupted(model, "1"), train, test, resamples=200, out=tmp_path / "r")
    out = result.report
    for name in ("report.md", "report.html", "diagnose.png", "results.csv", "layers.csv",
                 "findings.json", "provenance.json"):  # fmt: skip
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert result.recommendation in md and "| running buffers |" in md
    assert "data:image/png;base64" in (out / "report.html").read_text()
    csv = pd.read_csv(out / "results.csv")
    assert list(csv["estimate"]) == list(result.scores["estimate"])
    assert csv["accuracy"].tolist() == pytest.approx(result.scores["accuracy"].tolist())
    found = json.loads((out / "findings.json").read_text())
    ids = [f["id"] for f in found["findings"]]
    assert ids == ["statistics-gap", "eval-train-gap", "estimates", "worst-layers",
                   "recommendation"]  # fmt: skip
    gap = found["findings"][0]["cells"][0]
    assert (gap["low"], gap["high"]) == pytest.approx((result.gap.low, result.gap.high))
    assert "paired bootstrap over n=400 test examples" in found["findings"][0]["text"]
    import matplotlib.pyplot as plt

    assert plt.imread(out / "diagnose.png").ndim == 3
    fig = _diagnose_report.figure(result)
    assert len(fig.axes) == 2 and all(ax.has_data() for ax in fig.axes)
    plt.close(fig)
    text = format_table(result)
    for label in result.scores["label"]:
        assert label in text
    assert result.verdict in text and result.recommendation in text
