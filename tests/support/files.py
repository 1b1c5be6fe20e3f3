"""Fact files for tests: a valid fact and a JSONL writer (rows as dicts, or raw lines as strings)."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


FACT = {
    "id": "f1",
    "relation": "P36",
    "subject": "France",
    "object": "Paris",
    "templates": ["The capital of [X] is [Y]."],
}
