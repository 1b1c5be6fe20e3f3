"""`atlas serve` as a user starts it: the real command in its own process (two uvicorn workers),
on both backends; and its refusals before anything listens."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.cli import atlas
from tests.web.conftest import Served, free_port


def test_the_command_serves_the_atlas_from_two_workers(served: Served) -> None:
    port = free_port()
    cmd = [sys.executable, "-c", "from atlas.cli import main; main()", "serve", "--db", served.store.url]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--workers", "2", "--vocab", "off"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                runs = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "atlas serve did not answer within 60 s"
                time.sleep(0.2)
        assert runs.status_code == 200 and runs.json()["tables"]["runs"][0]["name"] == served.world.run
        html = httpx.get(f"http://127.0.0.1:{port}/run/{served.world.run}/relation/P30", timeout=10)
        assert html.status_code == 200 and "server-timing" in html.headers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_refusals_are_one_line(tmp_path: Path) -> None:
    missing = atlas("serve", "--db", f"duckdb:///{tmp_path}/none.duckdb")
    assert missing.exit_code == 1 and "does not exist" in missing.output and len(missing.output.splitlines()) == 1
    bad = atlas("serve", "--workers", "0")
    assert bad.exit_code == 2 and "--workers" in bad.output
