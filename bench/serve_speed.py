"""How fast `atlas serve` answers on a PARAREL-sized atlas: each page type, the most popular
neuron, and 20 concurrent clients.

The server runs as its own process (`atlas serve`, the real uvicorn); requests go over HTTP from
this one. "Server time" is what the server reports in its ``Server-Timing`` header (from the
request's arrival to its response's start); "client time" adds HTTP and this process. Pages are
sampled from the atlas itself (relations, facts, neurons, subjects read through the API), each URL
requested once, after one warm-up request per page type. The load test replays the same URLs in
random order from 20 connections with wrk (Debian's package; a C load generator, so it leaves the
server the CPU), or from 20 Python threads where wrk is missing. The first request of the runs page
computes the run summaries (whole-run tables, once per process): it is reported apart as "cold".

    atlas db upgrade --db duckdb:////tmp/serve.duckdb
    PYTHONPATH=. python bench/synthetic_atlas.py --db duckdb:////tmp/serve.duckdb
    createdb serve_bench && atlas db upgrade --db postgresql+psycopg:///serve_bench
    PYTHONPATH=. python bench/synthetic_atlas.py --db postgresql+psycopg:///serve_bench && psql serve_bench -c ANALYZE
    PYTHONPATH=. python bench/serve_speed.py --db duckdb:////tmp/serve.duckdb --db postgresql+psycopg:///serve_bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np

from bench.results import append_result

TARGET_PAGE_P95_MS = 150
TARGET_POPULAR_MS = 300
TARGET_LOAD_P95_MS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from atlas.cli import main; main()", "serve", "--db", db, "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--vocab", "off", "--workers", str(workers)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/atlas.css", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server for {db} did not start")


def timed(client: httpx.Client, url: str) -> tuple[float, float, int]:
    """(server ms, client ms, status) of one GET."""
    t0 = time.perf_counter()
    r = client.get(url)
    client_ms = (time.perf_counter() - t0) * 1000
    server = r.headers.get("server-timing", "app;dur=nan").split("dur=")[1]
    return float(server), client_ms, r.status_code


def sample_urls(client: httpx.Client, n: int, seed: int) -> tuple[dict[str, list[str]], str]:
    """URLs of every page type, drawn from the atlas through its API; and the most popular neuron."""
    rng = random.Random(seed)
    run = client.get("/api/runs").json()["tables"]["runs"][0]["name"]
    r = quote(run, safe="")
    relations = [x["relation_id"] for x in client.get(f"/api/run/{r}").json()["tables"]["relations"]]
    rels = [rng.choice(relations) for _ in range(n)]
    facts: list[str] = []
    for rel in rels[: max(4, n // 5)]:
        rows = client.get(f"/api/run/{r}/relation/{rel}?table=facts&format=json").json()
        facts += [x["fact_id"] for x in rng.sample(rows, min(5, len(rows)))]
    facts = facts[:n]
    neurons: list[tuple[int, int]] = []
    subjects: list[str] = []
    for fact in facts:
        page = client.get(f"/api/run/{r}/fact/{quote(fact, safe='')}").json()
        neurons += [(x["layer"], x["neuron"]) for x in page["tables"]["neurons"][:2]]
        subjects.append(page["info"]["fact"]["subject"])
    sql = "SELECT layer, neuron, COUNT(*) AS n FROM knowledge_neurons GROUP BY layer, neuron ORDER BY n DESC LIMIT 1"
    top = client.get("/api/sql", params={"sql": sql}).json()["tables"]["rows"][0]
    run_id = client.get("/api/runs").json()["tables"]["runs"][0]["id"]
    urls = {
        "runs": ["/"] * n,
        "run": [f"/run/{r}"] * n,
        "relation": [f"/run/{r}/relation/{rel}" for rel in rels],
        "fact": [f"/run/{r}/fact/{quote(f, safe='')}" for f in facts],
        "neuron": [f"/run/{r}/neuron/{layer}/{neuron}" for layer, neuron in rng.sample(neurons, min(n, len(neurons)))],
        "edits": ["/edits"] * n,
        "search": [f"/search?q={quote(s.split()[-1] + ' ')}" for s in subjects],
        "named query": [f"/sql/fact-neurons?run_id={run_id}&fact_id={quote(f, safe='')}" for f in facts],
        "ad-hoc SQL": [f"/sql?sql={quote(f'SELECT * FROM facts WHERE id = {chr(39)}{f}{chr(39)}')}" for f in facts],
    }
    return urls, f"/run/{r}/neuron/{top['layer']}/{top['neuron']}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def sequential(client: httpx.Client, urls: dict[str, list[str]], popular: str) -> dict[str, dict]:
    out = {}
    for kind, batch in urls.items():
        timed(client, batch[0])  # warm-up: templates, the pool's connections
        rows = [timed(client, u) for u in batch]
        bad = [s for _, _, s in rows if s != 200]
        server = [s for s, _, _ in rows]
        out[kind] = {
            "n": len(rows),
            "errors": len(bad),
            "server_p50_ms": pct(server, 50),
            "server_p95_ms": pct(server, 95),
            "server_max_ms": max(server),
            "client_p95_ms": pct([c for _, c, _ in rows], 95),
            "target_ms": TARGET_PAGE_P95_MS,
        }
    rows = [timed(client, popular) for _ in range(10)]
    out["popular neuron"] = {
        "n": 10,
        "errors": sum(s != 200 for *_, s in rows),
        "url": popular,
        "server_p50_ms": pct([s for s, _, _ in rows], 50),
        "server_p95_ms": pct([s for s, _, _ in rows], 95),
        "server_max_ms": max(s for s, _, _ in rows),
        "target_ms": TARGET_POPULAR_MS,
    }
    return out


def load(base: str, urls: dict[str, list[str]], clients: int, seconds: float, seed: int) -> dict:
    mix = [u for batch in urls.values() for u in batch]
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.monotonic() < stop:
                try:
                    row = timed(c, rng.choice(mix))
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    continue
                with lock:
                    results.append(row)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [s for *_, s in results]
    return {
        "tool": "python threads",
        "clients": clients,
        "seconds": seconds,
        "requests": len(results),
        "errors": len(errors) + sum(s != 200 for s in statuses),
        "requests_per_s": len(results) / seconds,
        "client_p50_ms": pct([c for _, c, _ in results], 50),
        "client_p95_ms": pct([c for _, c, _ in results], 95),
        "server_p95_ms": pct([s for s, _, _ in results], 95),
        "target_ms": TARGET_LOAD_P95_MS,
    }


WRK_SCRIPT = """
local urls = {}
for line in io.lines(os.getenv("ATLAS_URLS")) do urls[#urls + 1] = line end
local i = 0
math.randomseed(tonumber(os.getenv("ATLAS_SEED")))
request = function()
  i = math.random(#urls)
  return wrk.format("GET", urls[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "errors": %d, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def load_wrk(base: str, urls: dict[str, list[str]], clients: int, seconds: float, seed: int) -> dict:
    """The same mix from wrk (C, one thread per core): the load generator then takes little of the
    CPU the server needs, which a Python client on a 2-core machine does not."""
    with tempfile.TemporaryDirectory() as tmp:
        listing, script = Path(tmp) / "urls.txt", Path(tmp) / "mix.lua"
        listing.write_text("\n".join(u for batch in urls.values() for u in batch) + "\n")
        script.write_text(WRK_SCRIPT)
        env = {**os.environ, "ATLAS_URLS": str(listing), "ATLAS_SEED": str(seed)}
        cmd = [
            "wrk",
            "-t",
            "2",
            "-c",
            str(clients),
            "-d",
            f"{int(seconds)}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            base,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    return {
        "tool": "wrk",
        "clients": clients,
        "seconds": seconds,
        "requests": stats["requests"],
        "errors": stats["errors"],
        "requests_per_s": stats["requests"] / seconds,
        "client_p50_ms": stats["p50_ms"],
        "client_p95_ms": stats["p95_ms"],
        "client_p99_ms": stats["p99_ms"],
        "client_max_ms": stats["max_ms"],
        "target_ms": TARGET_LOAD_P95_MS,
    }


def bench(db: str, n: int, clients: int, seconds: float, seed: int, workers: int) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(db, port, workers)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            cold = timed(client, "/")
            urls, popular = sample_urls(client, n, seed)
            pages = sequential(client, urls, popular)
        return {
            "db": db,
            "workers": workers,
            "cold_runs_page_ms": cold[0],
            "pages": pages,
            "load": (load_wrk if shutil.which("wrk") else load)(base, urls, clients, seconds, seed),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def record(result: dict, args: argparse.Namespace) -> None:
    """One line in bench/results.jsonl per (atlas, workers)."""
    lo = result["load"]
    params = {"db": result["db"], "workers": result["workers"], "n": args.n, "clients": args.clients}
    extra = {k: result[k] for k in ("cold_runs_page_ms", "pages", "load")}
    append_result("serve_speed", params, lo["seconds"], lo["requests"], machine="2-core python-svc", **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", required=True, help="atlas URL (repeatable: one server each)")
    parser.add_argument("--n", type=int, default=40, help="URLs per page type")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="atlas serve --workers")
    args = parser.parse_args()
    for db in args.db:
        result = bench(db, args.n, args.clients, args.seconds, args.seed, args.workers)
        print(json.dumps(result))
        record(result, args)
        print(
            f"\n{db}, {args.workers} worker(s): cold runs page {result['cold_runs_page_ms']:.0f} ms "
            "(computes the run summaries)",
            file=sys.stderr,
        )
        for kind, r in result["pages"].items():
            ok = "met" if r["server_p95_ms"] <= r["target_ms"] and not r["errors"] else "MISSED"
            print(
                f"  {kind:15s} server p50 {r['server_p50_ms']:7.1f}  p95 {r['server_p95_ms']:7.1f}  "
                f"max {r['server_max_ms']:7.1f} ms  (target p95 <= {r['target_ms']}: {ok}, errors {r['errors']})",
                file=sys.stderr,
            )
        lo = result["load"]
        ok = "met" if lo["client_p95_ms"] <= lo["target_ms"] and not lo["errors"] else "MISSED"
        print(
            f"  load ({lo['tool']}): {lo['clients']} clients x {lo['seconds']:.0f} s: {lo['requests']} requests "
            f"({lo['requests_per_s']:.1f}/s), errors {lo['errors']}, client p50 {lo['client_p50_ms']:.0f} "
            f"p95 {lo['client_p95_ms']:.0f} ms (target <= {lo['target_ms']}: {ok})",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
