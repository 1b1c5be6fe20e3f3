"""One place that appends benchmark results to ``bench/results.jsonl`` (one JSON line per measurement)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from atlas.model.cpu import cpu_name, cpuinfo_text

RESULTS = Path(__file__).with_name("results.jsonl")


def git_sha() -> str:
    """The commit the code ran at, "+dirty" where tracked files (other than the results file) differ
    from it: a copy of the tree with an older `.git` (the device tool's) then says so instead of
    naming a commit whose code did not run."""
    here = Path(__file__).parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", ".", ":!bench/results.jsonl"], cwd=here.parent
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if changed.returncode == 1 else "")


def append_result(bench: str, params: dict[str, Any], wall_s: float, items: int, **extra: Any) -> dict[str, Any]:
    """Record one measurement (with device, git sha and items/s) and return it."""
    row = {
        "bench": bench,
        "date": time.strftime("%Y-%m-%d"),
        "params": params,
        "device": f"{cpu_name(cpuinfo_text())} ({platform.machine()}, {os.cpu_count()} cpus)",
        "git": git_sha(),
        "wall_s": round(wall_s, 3),
        "items_per_s": round(items / wall_s, 1) if wall_s else None,
        **extra,
    }
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
    return row
