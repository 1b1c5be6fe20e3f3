"""Pictures of an atlas, drawn from the named queries (matplotlib, Agg: no display needed).

Each plot runs one named query and draws its rows, so that a picture always shows exactly what
``atlas query`` would print for the same run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from atlas.db import queries  # noqa: E402
from atlas.db.runs import get_run  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.errors import NotFound

PLOTS = ("layers", "overlap", "fact")


def _heatmap(
    ax: plt.Axes, matrix: np.ndarray, rows: list[str], cols: list[str], label: str, cmap: str = "viridis"
) -> None:
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(len(rows)), rows, fontsize=max(5, min(9, 300 // max(1, len(rows)))))
    ax.set_xticks(range(len(cols)), cols, fontsize=max(5, min(9, 300 // max(1, len(cols)))), rotation=90)
    ax.figure.colorbar(image, ax=ax, label=label, fraction=0.04, pad=0.02)


def _save(fig: plt.Figure, output: Path) -> Path:
    fig.tight_layout()
    fig.savefig(output, dpi=130)
    plt.close(fig)
    return Path(output)


def plot_layers(store: Store, run: str | int, output: Path) -> Path:
    """Knowledge neurons per layer and relation: a relation x layer heatmap of each relation's share."""
    run_id = get_run(store, run).id
    result = queries.run_query(store, "layer-distribution", {"run_id": run_id})
    if not result.rows:
        raise NotFound(f"run {run} has no knowledge neurons")
    col = {c: i for i, c in enumerate(result.columns)}
    relations = sorted({r[col["relation_id"]] for r in result.rows})
    n_layers = max(r[col["layer"]] for r in result.rows) + 1
    matrix = np.zeros((len(relations), n_layers))
    for r in result.rows:
        matrix[relations.index(r[col["relation_id"]]), r[col["layer"]]] = r[col["share"]]
    fig, (ax, ax_total) = plt.subplots(1, 2, figsize=(11, 2 + 0.22 * len(relations)), width_ratios=[3, 1])
    _heatmap(
        ax, matrix, relations, [str(layer) for layer in range(n_layers)], "share of the relation's knowledge neurons"
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("relation")
    ax.set_title(f"Where knowledge neurons live (run {run_id})")
    totals = np.zeros(n_layers)
    for r in result.rows:
        totals[r[col["layer"]]] += r[col["n_entries"]]
    ax_total.bar(range(n_layers), totals, color="tab:blue")
    ax_total.set_xlabel("layer")
    ax_total.set_ylabel("(fact, neuron) entries, all relations")
    ax_total.set_title("All relations")
    return _save(fig, output)


def plot_overlap(store: Store, run: str | int, output: Path, min_facts: int = 2, min_share: float = 0.1) -> Path:
    """The relation x relation heatmap of shared relation-level neurons (diagonal: own count).

    By default a relation's neurons are those in >= 10% of its facts (the paper's relation-level
    neurons): with every neuron of >= 2 facts, chance collisions fill the whole matrix.
    """
    run_id = get_run(store, run).id
    result = queries.run_query(
        store, "relation-overlap", {"run_id": run_id, "min_facts": min_facts, "min_share": min_share}
    )
    if not result.rows:
        raise NotFound(f"run {run} has no knowledge neurons")
    col = {c: i for i, c in enumerate(result.columns)}
    relations = sorted({r[col["relation_a"]] for r in result.rows})
    matrix = np.zeros((len(relations), len(relations)))
    for r in result.rows:
        matrix[relations.index(r[col["relation_a"]]), relations.index(r[col["relation_b"]])] = r[col["shared"]]
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, np.nan)
    size = 3 + 0.25 * len(relations)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    vmax = np.nanmax(off_diagonal) if len(relations) > 1 and np.nanmax(off_diagonal) > 0 else None
    image = ax.imshow(off_diagonal, cmap="magma_r", vmin=0, vmax=vmax, interpolation="nearest")
    fontsize = max(5, min(9, 300 // len(relations)))
    ax.set_xticks(range(len(relations)), relations, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(relations)), relations, fontsize=fontsize)
    for i in range(len(relations)):  # the diagonal (each relation's own neuron count) as text
        ax.text(i, i, f"{int(matrix[i, i])}", ha="center", va="center", fontsize=max(4, fontsize - 2), color="tab:blue")
    fig.colorbar(image, ax=ax, label="shared relation-level neurons", fraction=0.04, pad=0.02)
    ax.set_title(
        f"Relations sharing neurons (run {run_id}; a relation's neurons: in >= {min_facts} and >= {min_share:.0%}\n"
        "of its facts; diagonal: the relation's own count)"
    )
    return _save(fig, output)


def plot_fact(store: Store, run: str | int, fact_id: str, output: Path, top: int = 20) -> Path:
    """A fact's attribution across its prompts: prompts x top neurons (knowledge neurons marked *)."""
    run_id = get_run(store, run).id
    result = queries.run_query(store, "fact-prompt-scores", {"run_id": run_id, "fact_id": fact_id, "top": top})
    if not result.rows:
        raise NotFound(f"fact {fact_id!r} has no prompt scores in run {run_id}")
    col = {c: i for i, c in enumerate(result.columns)}
    prompts = list(dict.fromkeys((r[col["prompt_id"]], r[col["template"]]) for r in result.rows))
    neurons = list(
        dict.fromkeys(
            (r[col["neuron_rank"]], r[col["layer"]], r[col["neuron"]], r[col["is_knowledge_neuron"]])
            for r in result.rows
        )
    )
    neurons.sort()
    matrix = np.full((len(prompts), len(neurons)), np.nan)
    for r in result.rows:
        i = prompts.index((r[col["prompt_id"]], r[col["template"]]))
        matrix[i, r[col["neuron_rank"]] - 1] = r[col["score"]] if r[col["score"]] is not None else np.nan
    fig, ax = plt.subplots(figsize=(3 + 0.45 * len(neurons), 2 + 0.35 * len(prompts)))
    labels = [f"{'*' if kn else ''}L{layer}.{neuron}" for _, layer, neuron, kn in neurons]
    names = [_short(template) for _, template in prompts]
    _heatmap(ax, np.nan_to_num(matrix), names, labels, "attribution score (0: not stored)", cmap="Blues")
    ax.set_xlabel("neuron (* = knowledge neuron of the fact)")
    ax.set_title(f"Fact {fact_id} across its prompts (run {run_id})")
    return _save(fig, output)


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
