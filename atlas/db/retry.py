"""Retrying database work through short outages.

A batch indexer runs for hours; a PostgreSQL restart or a dropped connection must not throw away
the work in flight. Every unit of database work is one transaction, so running it again after a
connection error is safe: the failed attempt left nothing behind. After the last try the caller
gets one `DatabaseUnavailable` that says what happened and that committed work is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from atlas.errors import DatabaseBusy, DatabaseUnavailable, StoreError

T = TypeVar("T")

#: errors that mean "the connection or server went away", not "the statement is wrong".
TRANSIENT = (StoreError, sa.exc.OperationalError, sa.exc.InterfaceError)


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    tries: int = 6,
    first_delay: float = 0.25,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Run ``fn`` (one transaction); on a transient error wait (doubling delays) and run it again."""
    delay = first_delay
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except TRANSIENT as exc:
            if isinstance(exc, DatabaseBusy):  # another process writes the file: waiting will not help
                raise
            if isinstance(exc, DatabaseUnavailable) or attempt == tries:
                raise DatabaseUnavailable(
                    f"database unavailable while {what} (gave up after {tries} tries): {_reason(exc)}; "
                    "committed batches are kept, run the same command again to resume"
                ) from exc
            if on_retry:
                on_retry(attempt, exc)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__
