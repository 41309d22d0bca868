"""The ``bnbench`` command: its subcommands and the studies it lists."""

import pytest

from bnbench import cli


def test_study_help_lists_the_studies(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["study", "--help"])
    assert exit_.value.code == 0
    listed = "".join(capsys.readouterr().out.split())  # help text wraps, even at hyphens
    for name in ("kernel-throughput", "training-throughput", "momentum-batch-size"):
        assert name in listed


def test_an_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
