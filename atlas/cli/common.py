"""Options and helpers shared by every command group."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from atlas.db.migrate import require_current
from atlas.db.store import SchemaOutOfDate, Store, StoreError

db_option = click.option(
    "--db",
    "db_url",
    envvar="ATLAS_DB",
    default=None,
    metavar="URL",
    help="Database URL: duckdb:///FILE (default ./atlas.duckdb) or postgresql+psycopg://USER@HOST/DB. Env: ATLAS_DB.",
)


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


def user_errors(*kinds: type[BaseException]) -> Callable:
    """Turn the library's expected errors (and ``kinds``) into one-line click errors."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (StoreError, *kinds) as exc:
                raise click.ClickException(str(exc)) from exc

        return wrapper

    return decorate
