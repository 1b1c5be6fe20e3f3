"""Counterfactuals from a user fact file, for `atlas inject` by hand: the first N facts of each
relation, each given the next one's object (Texas -> Sacramento, ..., the last -> the first's).

    python bench/swapped_user_facts.py bench/data/user_facts.jsonl 4 > /tmp/cf.jsonl
    atlas inject add /tmp/cf.jsonl --run RUN
"""

from __future__ import annotations

import json
import sys


def swapped(rows: list[dict], n: int) -> list[dict]:
    """The relation declarations, then per relation its first `n` facts with rotated objects."""
    out = [r for r in rows if "subject" not in r]
    for rel in dict.fromkeys(r["relation"] for r in rows if "subject" in r):
        group = [r for r in rows if r.get("relation") == rel and "subject" in r][:n]
        for i, r in enumerate(group):
            out.append(r | {"id": f"cf-{r['id']}", "object": group[(i + 1) % len(group)]["object"]})
    return out


if __name__ == "__main__":
    path, n = sys.argv[1], int(sys.argv[2])
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("\n".join(json.dumps(r) for r in swapped(rows, n)))
