"""How an edit reads on a terminal: what it changed, and how it was judged (`atlas edit show`)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from atlas.db.edits import EditRecord


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _kept(c: dict[str, Any] | None, prefix: str = "") -> str:
    return "-" if not c else f"{c[f'{prefix}right_after']}/{c[f'{prefix}right_before']}"


def headline(e: EditRecord) -> str:
    """The one figure `atlas edit list` shows for an edit."""
    h = e.metrics.get("headline") or {}
    if e.kind == "update":
        return f"success {e.metrics.get('success_rate', 0):.0%}, others ppl {_pct(h.get('others_ppl_change'))}"
    if e.kind == "erase" and h:
        return (
            f"erased kept {_kept(e.metrics.get('edited'), 'cand_')}, others kept "
            f"{_kept(e.metrics.get('others_pooled'), 'cand_')}, others ppl {_pct(h.get('others_ppl_change'))}"
        )
    return "-"


def summary_line(e: EditRecord) -> str:
    return (
        f"edit {e.id}: {e.kind} {e.target} on run {e.run} [{e.status}], {e.n_slots} value slots, "
        f"sha256 {e.sha256_before[:12]} -> {e.sha256_after[:12]}; {headline(e)}"
    )


def describe(e: EditRecord) -> str:
    """The edit, its parameters and its judgement per relation, as plain text."""
    p = e.params
    lines = [summary_line(e)]
    listed = ("neurons", "control_neurons", "edited_layers", "control_layers")
    shown = {k: v for k, v in p.items() if k not in listed}
    lines.append("params: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    if p.get("neurons"):
        names = [f"L{n['layer']}.{n['neuron']}" if isinstance(n, dict) else f"L{n[0]}.{n[1]}" for n in p["neurons"]]
        lines.append(f"neurons ({len(names)}): {' '.join(names)}")
    if p.get("edited_layers"):
        names = [f"L{row['layer']} ({row['share']:.0%} of the attribution)" for row in p["edited_layers"]]
        lines.append(f"layers ({len(names)}): {', '.join(names)}")
    if e.metrics.get("applied_edits") is not None:
        lines.append(f"measured on top of applied edits: {e.metrics['applied_edits'] or 'none'}")
    for key in ("success_rate", "change_rate", "p_new_before", "p_new_after"):
        if key in e.metrics:
            lines.append(f"{key}: {e.metrics[key]}")
    if "others" in e.metrics:
        lines.append(_table(e))
    if e.metrics.get("audit"):
        a = e.metrics["audit"]
        how = a.get("predictor", "impact")
        lines.append(f"audit (predictor: {how}): Spearman rho {a.get('spearman')}, ROC AUC {a.get('auc')}")
    return "\n".join(lines)


def _table(e: EditRecord) -> str:
    m = e.metrics
    t = Table(title="before -> after, per relation (kept = right answers kept: greedy / top-1 among its objects)")
    for col in ("relation", "prompts", "kept", "dNLL", "ppl change"):
        t.add_column(col)
    rows = [(f"{e.target if e.kind == 'erase' else 'same relation'} (edited)", m.get("edited"))]
    rows += sorted(m.get("others", {}).items()) + [("others, pooled", m.get("others_pooled"))]
    control = m.get("control") or {}
    rows += [("control: edited", control.get("edited")), ("control: others", control.get("others_pooled"))]
    for name, c in rows:
        if c:
            t.add_row(
                name,
                str(c["n_prompts"]),
                f"{_kept(c)} / {_kept(c, 'cand_')}",
                f"{c['dnll']:+.3f}",
                _pct(c["ppl_change"]),
            )
    if m.get("fluency"):
        t.add_row("fluency text", "-", "-", "-", _pct(m["fluency"]["ppl_change"]))
    console = Console(file=io.StringIO(), width=110, force_terminal=False)
    console.print(t)
    return console.file.getvalue()
