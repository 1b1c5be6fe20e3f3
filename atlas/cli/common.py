"""Options and helpers shared by every command group."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from atlas.db.migrate import require_current
from atlas.db.store import Store
from atlas.errors import InputError, SchemaOutOfDate
from atlas.options import ModelChoice

db_option = click.option(
    "--db",
    "db_url",
    envvar="ATLAS_DB",
    default=None,
    metavar="URL",
    help="Database URL: duckdb:///FILE (default ./atlas.duckdb) or postgresql+psycopg://USER@HOST/DB. Env: ATLAS_DB.",
)


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from indexer.job.options import parse_device

    try:
        return parse_device(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


def model_option(fn: Callable) -> Callable:
    """`--model` and `--device`, handed to the command as one `model` (`atlas.options.ModelChoice`)."""

    @functools.wraps(fn)
    def command(*args: Any, model: str | None, device: str, **kw: Any) -> Any:
        return fn(*args, model=ModelChoice(model, device), **kw)

    command = click.option(
        "--device",
        default="cpu",
        show_default=True,
        metavar="cpu|cuda[:N]",
        callback=_device,
        help="Where the model runs.",
    )(command)
    return click.option(
        "--model",
        "model",
        metavar="NAME|DIR",
        default=None,
        help="Weights to use (default: the run's model); must hash to the run's model.",
    )(command)


def open_store(db_url: str | None, *, check_schema: bool = True) -> Store:
    """The store at ``db_url``; refuses a missing or outdated schema unless told not to check."""
    store = Store(db_url)
    if check_schema:
        _refuse_missing_duckdb_file(store)
        require_current(store)
    return store


def _refuse_missing_duckdb_file(store: Store) -> None:
    """Connecting would create an empty DuckDB file: a read or load must not leave one behind."""
    path = store.url.split(":///", 1)[1] if ":///" in store.url else ""
    if store.backend == "duckdb" and path and path != ":memory:" and not Path(path).expanduser().exists():
        raise SchemaOutOfDate(f"{store!r}: the file does not exist, so it has no atlas schema: run `atlas db upgrade`")


def options_of(cls: type) -> Callable[[Callable], Callable]:
    """Click options generated from a dataclass whose fields carry their command-line description
    (`indexer.job.options.opt`): flag, help, metavar, bounds, choices, default, parser. The
    dataclass is then the one place where an option, its default and its help are defined."""
    decorators = [_option(f) for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]

    def decorate(fn: Callable) -> Callable:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return decorate


def _option(f: dataclasses.Field) -> Callable:
    meta = f.metadata
    kind: Any = None
    if meta["choices"]:
        kind = click.Choice(meta["choices"])
    elif meta["minimum"] is not None:
        kind = click.IntRange(min=meta["minimum"])
    elif meta["parse"] is not None:
        kind = click.STRING  # the parser reads the text
    default = None if meta["required"] or f.default is None else f.default
    return click.option(
        meta["flag"] or "--" + f.name.replace("_", "-"),
        f.name,
        type=kind,
        default=default,
        required=meta["required"],
        multiple=meta["multiple"],
        metavar=meta["metavar"],
        show_default=default is not None,
        help=meta["help"],
        callback=_parser(meta["parse"]),
    )


def _parser(parse: Callable[[Any], Any] | None) -> Callable | None:
    if parse is None:
        return None

    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        try:
            return parse(value)
        except InputError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback
