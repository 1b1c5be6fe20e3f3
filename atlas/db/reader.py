"""The PostgreSQL role that runs user SQL: ``atlas_reader``, SELECT on the atlas tables and nothing else.

User SQL (`atlas sql`, and anything served over HTTP later) must not reach past the atlas: no server
files, no large objects, no replication slots, no signals to other backends. A READ ONLY
transaction does not stop those when the session user is a superuser, and ``SET ROLE`` can be
undone by the user's own SQL (``RESET ROLE``, ``set_config('role', ...)``). So user SQL runs on a
connection that LOGS IN as this role: a role without superuser, replication or role rights, whose
only privileges are CONNECT on the atlas database and SELECT on the atlas tables.

Roles are cluster-wide, so creating it is idempotent (many atlases, and the tests' many databases,
share one server); the grants are per database. The migration that adds a table must also grant
SELECT on it: ``op.execute(grant_select(("new_table",)))`` (tests/db/test_sql_sandbox.py checks
that the reader can read every table of the schema).
"""

from __future__ import annotations

import os

import sqlalchemy as sa

READER_ROLE = "atlas_reader"
READER_ENV = "ATLAS_READER_DB"

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
        CREATE ROLE {READER_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database's migration created it a moment ago
END
$$"""

GRANT_CONNECT = f"""
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READER_ROLE}', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER_ROLE}', current_schema());
END
$$"""

# Drops this database's privileges; the role itself only when no other database still grants it
# anything (roles are cluster-wide).
DROP_ROLE = f"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
        EXECUTE format('REVOKE ALL ON DATABASE %I FROM {READER_ROLE}', current_database());
        DROP OWNED BY {READER_ROLE};
        BEGIN
            DROP ROLE {READER_ROLE};
        EXCEPTION WHEN dependent_objects_still_exist OR object_in_use THEN
            NULL;  -- other atlases on this server still use it
        END;
    END IF;
END
$$"""


def grant_select(tables: tuple[str, ...]) -> str:
    """The statement granting the reader SELECT on ``tables`` (names from the migration's own list)."""
    return f"GRANT SELECT ON {', '.join(f'{t}' for t in tables)} TO {READER_ROLE}"


def reader_url(store_url: str, explicit: str | None = None) -> str:
    """The libpq URL user SQL connects with: ``explicit``, else ``$ATLAS_READER_DB``, else the
    store's URL with the user swapped for ``atlas_reader`` (no password: trust or peer-mapped
    setups; with passwords, give the reader's URL explicitly)."""
    url = explicit or os.environ.get(READER_ENV)
    if url:
        parsed = sa.make_url(url if "://" in url else f"postgresql://{url}")
    else:
        parsed = sa.make_url(store_url).set(username=READER_ROLE, password=None)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
