"""The erase frontier from `bench/edit_quality.py`'s output: per erase, how much of the erased
relation's knowledge is gone (x) against how much of the others' is kept (y), edits and controls.

    python3 bench/edit_frontier.py reports/smollm2/edit_quality.jsonl reports/smollm2/erase_frontier.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(row: dict) -> str:
    if row["form"] == "lsq":
        return f"lsq {row['k']} layers, s={row['strength']}"
    return f"{row['select']} {row['form']} k={row['k']}" + (" +nullspace" if row["preserve"] == "nullspace" else "")


def main() -> None:
    src, dest = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(src)]
    rows = [r for r in rows if r.get("part") == "erase" and "headline" in r]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (y_key, y_name) in zip(
        axes,
        [
            ("others_accuracy_kept", "other relations: right answers kept"),
            ("fluency_ppl_change", "text perplexity change"),
        ],
    ):
        for name in sorted({label(r) for r in rows}):
            for which, marker in (("edit", "o"), ("control", "x")):
                pts = [r for r in rows if label(r) == name and r["which"] == which]
                if pts:
                    xs = [1 - r["headline"]["edited_accuracy_kept"] for r in pts]
                    ys = [r["headline"][y_key] for r in pts]
                    ax.scatter(xs, ys, marker=marker, label=f"{name} ({which})" if ax is axes[0] else None)
        ax.set_xlabel("erased relation: right answers lost (top-1)")
        ax.set_ylabel(y_name)
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=4, fontsize=7)
    fig.suptitle("Erasing a relation in SmolLM2-135M (held-out facts; o = edit, x = random control)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    main()
