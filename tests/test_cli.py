import pytest

from pas.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "export" in capsys.readouterr().out


def test_unknown_command_fails():
    assert main(["nope"]) == 2


def test_dispatches_to_the_command(capsys):
    with pytest.raises(SystemExit) as err:
        main(["export", "--help"])
    assert err.value.code == 0 and "--formats" in capsys.readouterr().out
