"""The ``e3`` command reaches each subcommand's own parser (``--help`` prints its usage)."""

import re

import pytest

from e3lib import cli


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_each_subcommand_reaches_its_own_parser(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: e3 {name}" in capsys.readouterr().out


def test_help_lists_every_subcommand_and_unknown_names_are_refused(capsys):
    assert cli.main(["--help"]) == 0
    listed = re.findall(r"^\s+e3 (\w+)", capsys.readouterr().out, flags=re.M)
    assert sorted(listed) == sorted(cli.SUBCOMMANDS)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert "'train'" in err and "aggregate" in err
