"""`atlas sql` cannot reach past the atlas, on both backends: every escape found by the adversarial
probe of issue 17 is refused with one line and leaves no trace; each layer of the sandbox is also
tested alone (the reader role as seen from a superuser session, the locked DuckDB connection), and
so are the timeout, the server-side cancel and the row cap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from atlas.db.reader import READER_ROLE, reader_url
from atlas.db.readonly import SqlLimits, refused_function, run_sql
from atlas.db.schema import metadata
from atlas.db.store import Store
from atlas.errors import InputError
from tests.support.db import snapshot
from tests.support.tiny_atlas import load_tiny

ESCAPES = [
    # PostgreSQL: server files, large objects, replication, signals, settings, locks, notifications
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('/')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export(1, '/tmp/atlas-escape')",
    "SELECT lo_from_bytea(0, 'x'::bytea)",
    "SELECT lo_unlink(1)",
    "SELECT pg_create_physical_replication_slot('atlas_escape')",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_reload_conf()",
    "SELECT pg_switch_wal()",
    "SELECT pg_stat_reset()",
    "SELECT pg_advisory_lock(17)",
    "SELECT pg_notify('atlas', 'x')",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT pg_catalog.\"lo_from_bytea\"(0, 'x'::bytea)",
    "SELECT query_to_xml('SELECT lo_from_bytea(0, ''x'')', true, true, '')",
    "SELECT nextval('prompts_id_seq')",
    "RESET ROLE",
    "SET ROLE postgres",
    "SELECT 1; SELECT pg_read_file('/etc/passwd')",
    # DuckDB: files, globs, extensions, settings
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/shadow')",
    "SELECT * FROM glob('/root/*')",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM sqlite_scan('/tmp/x.db', 't')",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SET enable_external_access = true",
    "COPY facts TO '/tmp/atlas-escape.csv'",
    "ATTACH '/tmp/atlas-escape.duckdb' AS x",
    "INSTALL sqlite",
    "LOAD sqlite",
]


def _server_state(store: Store) -> tuple:
    """What an escape could leave on a PostgreSQL server: large objects, slots, advisory locks."""
    if store.backend != "postgresql":
        return ()
    with store.begin() as conn:
        return tuple(
            conn.execute(sa.text(q)).scalar()
            for q in (
                "SELECT COUNT(*) FROM pg_largeobject_metadata",
                "SELECT COUNT(*) FROM pg_replication_slots",
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'",
            )
        )


@pytest.mark.parametrize("statement", ESCAPES)
def test_every_escape_is_refused_in_one_line(store: Store, statement: str) -> None:
    load_tiny(store)
    before, server = snapshot(store), _server_state(store)
    with pytest.raises(InputError) as err:
        run_sql(store, statement)
    assert len(str(err.value).splitlines()) == 1
    assert snapshot(store) == before and _server_state(store) == server
    assert not Path("/tmp/atlas-escape").exists() and not Path("/tmp/atlas-escape.csv").exists()


def test_the_function_check_reads_calls_not_strings() -> None:
    assert refused_function("SELECT 'pg_read_file(' AS x, lo_text FROM t") is None
    assert refused_function("SELECT pg_typeof(1), pg_sleep(0)") is None
    assert refused_function('SELECT "LO_UNLINK" (1)') == "lo_unlink"
    assert refused_function("SELECT pg_catalog.pg_notify('a', 'b')") == "pg_notify"


def test_reader_role_blocks_the_server_even_from_a_superuser_session(store: Store) -> None:
    """Without the statement check: the role alone stops file access, and RESET ROLE or
    set_config give no way back to the superuser the tests run as."""
    if store.backend != "postgresql":
        pytest.skip("the role is PostgreSQL's")
    with store.begin() as conn:
        assert conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
    with psycopg.connect(reader_url(store.url), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (READER_ROLE, READER_ROLE)
        for statement in (
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT pg_ls_dir('/')",
            "SELECT set_config('role', (SELECT rolname FROM pg_roles WHERE rolsuper LIMIT 1), false)",
            "SELECT pg_create_physical_replication_slot('atlas_escape')",
            "INSERT INTO relations VALUES ('Z', 'z', '1-1')",
            "CREATE TABLE escape (x int)",
        ):
            conn.execute("RESET ROLE")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # it reads every atlas table: a migration that adds a table must grant SELECT on it too
        for table in metadata.sorted_tables:
            conn.execute(f'SELECT * FROM "{table.name}" LIMIT 1')


def test_duckdb_connection_is_locked(store: Store) -> None:
    if store.backend != "duckdb":
        pytest.skip("DuckDB's sandbox")
    result = run_sql(
        store,
        "SELECT name, value FROM duckdb_settings() WHERE name IN "
        "('enable_external_access', 'autoload_known_extensions', 'autoinstall_known_extensions', "
        "'lock_configuration') ORDER BY name",
    )
    assert dict(result.rows) == {
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
        "enable_external_access": "false",
        "lock_configuration": "true",
    }


SLOW = {
    "postgresql": "SELECT pg_sleep(20)",
    "duckdb": "SELECT COUNT(*) FROM range(100000000) a, range(100000) b",
}


def test_timeout_cancels_the_statement(store: Store) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match=r"query cancelled: it ran past --timeout 1 s"):
        run_sql(store, SLOW[store.backend], SqlLimits(timeout_s=1))
    assert time.monotonic() - started < 10
    if store.backend == "postgresql":
        assert _running(store) == 0


def _running(store: Store) -> int:
    """Statements of the reader role running in this database (a cursor's rows come by FETCH)."""
    with store.begin() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM pg_stat_activity "
                "WHERE state = 'active' AND usename = :r AND datname = current_database()"
            ),
            {"r": READER_ROLE},
        ).scalar()


def test_a_stopped_client_stops_the_server_statement(store: Store, tmp_path: Path) -> None:
    if store.backend != "postgresql":
        pytest.skip("DuckDB runs in the client process")
    cmd = [sys.executable, "-c", "from atlas.cli import main; main()", "sql", "SELECT pg_sleep(30)", "--timeout", "60"]
    proc = subprocess.Popen(cmd, env={**os.environ, "ATLAS_DB": store.url}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while _running(store) == 0:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert "Traceback" not in proc.stderr.read()
    deadline = time.monotonic() + 5
    while _running(store):
        assert time.monotonic() < deadline, "the statement ran on after its client stopped"
        time.sleep(0.2)


ROWS = "SELECT * FROM generate_series(1, 25000) AS g(n) ORDER BY n"


def test_row_cap_and_streaming(store: Store) -> None:
    capped = run_sql(store, ROWS, SqlLimits(max_rows=100))
    assert capped.truncated and capped.n_rows == 100 and [r[0] for r in capped.rows] == list(range(1, 101))
    batches: list[int] = []
    streamed = run_sql(
        store, ROWS, SqlLimits(max_rows=None, batch_rows=10_000), sink=lambda b: batches.append(b.num_rows)
    )
    assert streamed.n_rows == 25000 and batches == [10_000, 10_000, 5_000] and streamed.table.num_rows == 0


def test_cli_caps_the_terminal_and_streams_files(store: Store, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from atlas.cli import cli

    shown = CliRunner().invoke(cli, ["sql", ROWS, "--format", "csv", "--max-rows", "5", "--db", store.url])
    assert shown.exit_code == 0 and shown.stdout.splitlines() == ["n", "1", "2", "3", "4", "5"]
    assert "first 5 rows of more" in shown.stderr
    out = tmp_path / "all.csv"
    full = CliRunner().invoke(cli, ["sql", ROWS, "--format", "csv", "-o", str(out), "--db", store.url])
    assert full.exit_code == 0 and out.read_text().splitlines()[-1] == "25000"
    assert len(out.read_text().splitlines()) == 25001
    js = tmp_path / "all.json"
    CliRunner().invoke(
        cli, ["sql", "SELECT 1 AS a UNION ALL SELECT 2", "--format", "json", "-o", str(js), "--db", store.url]
    )
    assert js.read_text() == '[\n {\n  "a": 1\n },\n {\n  "a": 2\n }\n]\n'
