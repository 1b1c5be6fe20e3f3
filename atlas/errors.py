"""The errors a user can fix, under one base.

Every layer raises these (never a bare ValueError for bad input), so the CLI turns exactly one base,
`AtlasError`, into a one-line message and a non-zero exit, whatever the command. A subclass says
what kind of thing went wrong; its message says which file, line, value or name. Programming errors
(a wrong argument from our own code) stay ordinary exceptions and keep their traceback.
Imports nothing: every layer, the torch-free ones included, can use it.
"""

from __future__ import annotations


class AtlasError(Exception):
    """A problem the user can fix, explained in one line."""


class InputError(AtlasError, ValueError):
    """Bad input: a fact file (FILE:LINE in the message), an option value, conflicting options, a
    selection that selects nothing, a query parameter."""


class NotFound(AtlasError, LookupError):
    """A run, fact, relation, edit, query or dataset the atlas does not hold (the message names it)."""


class ConflictError(AtlasError):
    """The request contradicts what the atlas holds (a run name taken by other parameters, an edit
    that is not the newest)."""


class StoreError(AtlasError):
    """A database problem (bad URL, unreachable server, a statement the database refused)."""


class SchemaOutOfDate(StoreError):
    """The database has no atlas schema, or an older one than this code needs."""


class DatabaseBusy(StoreError):
    """A DuckDB file another process holds open for writing (one writer at a time); not retried."""


class DatabaseUnavailable(StoreError):
    """The database stayed unreachable through every retry; committed work is kept."""


class ModelError(AtlasError):
    """A model that cannot be loaded, is not supported, or is not the one a run was indexed with."""


class WeightsMismatch(ModelError):
    """The loaded weights are not those the run was indexed with."""


class EditError(AtlasError):
    """An edit, rollback or export that cannot be done as asked."""
