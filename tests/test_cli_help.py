"""`cdp --help` and each command's `--help` say what every command and option is for: `cdp keys
list`, `cdp keys revoke` and options such as `cdp import --rejects` (where the rejected rows go,
and its default) were listed with no word."""

from __future__ import annotations

from collections.abc import Iterator

import click

from cdp.cli import main


def commands(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from commands(sub, f"{path} {name}")


def test_every_command_and_option_has_help():
    silent = []
    for path, cmd in commands(main, "cdp"):
        if not (cmd.help or "").strip():
            silent.append(path)
        for param in cmd.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                silent.append(f"{path} {param.opts[0]}")
    assert silent == []
