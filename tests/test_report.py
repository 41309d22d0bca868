"""Report folders: markdown tables, report.md, figures, results and provenance."""

import json

import pandas as pd

from bnbench import report


def test_markdown_table():
    df = pd.DataFrame({"shape": ["2x3"], "ms": [0.123456], "missing": [float("nan")]})
    assert (
        report.markdown_table(df) == "| shape | ms | missing |\n|---|---|---|\n| 2x3 | 0.123 |  |"
    )


def test_write_report_folder(tmp_path):
    import matplotlib.pyplot as plt

    df = pd.DataFrame({"shape": ["2x3", "4x5"], "ms": [1.0, 2.0]})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 2])
    out = report.write_report(tmp_path / "r", "A title", "## Findings\n\n- one.", df,
                              figures=[("f.png", fig)], command="test")  # fmt: skip
    text = (out / "report.md").read_text()
    assert text.startswith("# A title") and "## Findings" in text
    assert (out / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["report"]["command"] == "test" and prov["report"]["numba_threads"] >= 1
    assert len(pd.read_csv(out / "results.csv")) == 2
