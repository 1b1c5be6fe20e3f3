"""Every command of the `atlas` CLI, walked through the lazy group (commands are imported on demand)."""

from __future__ import annotations

from collections.abc import Iterator

import click


def walk(group: click.Group, path: tuple[str, ...] = (), groups: bool = False) -> Iterator[tuple[tuple[str, ...], click.Command]]:
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
