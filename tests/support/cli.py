"""The `atlas` CLI in tests: invoke it, and walk every command through the lazy group."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner, Result

from atlas.cli import cli


def walk(
    group: click.Group, path: tuple[str, ...] = (), groups: bool = False
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """(path, command) of every command under `group`; groups too when `groups` is set."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            if groups:
                yield path + (name,), cmd
            yield from walk(cmd, path + (name,), groups)
        else:
            yield path + (name,), cmd


def atlas(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)
