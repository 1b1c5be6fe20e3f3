"""Options defined once: a dataclass field that also describes its command-line flag.

A job's options are a frozen dataclass (`IndexOptions`, `EraseSpec`, ...); each field made with
`opt(...)` carries its default, help text, bounds and choices, and `atlas.cli.common.options_of`
turns the fields into click options. The job and its command can then never disagree on a default.
Imports nothing of the atlas: every layer can define options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def opt(
    default: Any = None,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,  # noqa: A002
    minimum: int | None = None,
    choices: tuple[str, ...] | None = None,
    required: bool = False,
    multiple: bool = False,
    parse: Callable[[Any], Any] | None = None,
    result: bool = False,
    cli: bool = True,
) -> Any:
    """A dataclass field carrying its command-line description."""
    meta = dict(
        help=help,
        flag=flag,
        metavar=metavar,
        minimum=minimum,
        choices=choices,
        required=required,
        multiple=multiple,
        parse=parse,
        result=result,
        cli=cli,
    )
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelChoice:
    """The weights a command names (`--model`; None: the run's own) and where they run (`--device`).

    The jobs load it in the dtype the run's weights were indexed in (`atlas.jobs.weights.resolve_model`).
    """

    spec: str | None = None
    device: str = "cpu"
