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


def family(row: dict) -> str:
    """The series a configuration is drawn in: the paper's erase, the default, then by kind."""
    if row["form"] == "lsq":
        setting = (row["k"], row["strength"], row["preserve"], row["weight"])
        if setting == (3, 0.5, "covariance", 100):
            return "lsq default (3 layers, s=0.5, covariance w=100)"
        return f"lsq, other settings ({row['preserve']})"
    if (row["select"], row["form"], row["k"], row["preserve"]) == ("frequent", "zero", 20, "none"):
        return "paper: frequent, zero, k=20"
    kept = " + nullspace" if row["preserve"] == "nullspace" else ""
    return f"{row['select']} neurons, zero/damp/project, k=10-100{kept}"


def erased_kept(row: dict) -> float | None:
    """Top-1 greedy answers kept, or among the relation's objects where the model had no greedy
    answer right before (P106, P937)."""
    h = row["headline"]
    return h["edited_accuracy_kept"] if h["edited_accuracy_kept"] is not None else h["edited_cand_accuracy_kept"]


def main() -> None:
    src, dest = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(src)]
    rows = [r for r in rows if r.get("part") == "erase" and "headline" in r]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
    for ax, (y_key, y_name) in zip(
        axes,
        [
            ("others_accuracy_kept", "other relations: right answers kept"),
            ("fluency_ppl_change", "text perplexity change"),
        ],
    ):
        for i, name in enumerate(sorted({family(r) for r in rows})):
            for which, marker in (("edit", "o"), ("control", "x")):
                pts = [r for r in rows if family(r) == name and r["which"] == which and erased_kept(r) is not None]
                if pts:
                    xs = [1 - erased_kept(r) for r in pts]
                    ys = [r["headline"][y_key] for r in pts]
                    big = 70 if name.startswith(("lsq default", "paper")) else 22
                    name_it = f"{name} ({which})" if ax is axes[0] else None
                    ax.scatter(xs, ys, marker=marker, s=big, alpha=0.75, color=f"C{i}", label=name_it)
        ax.set_xlabel("erased relation: right answers lost (top-1; among its objects for P106, P937)")
        ax.set_ylabel(y_name)
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Erasing a relation in SmolLM2-135M (held-out facts; o = edit, x = random control)")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    main()
