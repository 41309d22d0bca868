"""bnbench.torch.overhead: the overhead command times one epoch of the default CNN
untracked, with one momentum and with every momentum of MOMENTA, and prints one line per
batch size."""

import pytest

pytest.importorskip("torch")


def test_overhead_command_reports_every_variant(capsys):
    from bnbench.torch import overhead

    assert overhead.main(["--batch-sizes", "256", "--repeats", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("batch size 256: untracked ") and "6 momenta" in line and "%)" in line
