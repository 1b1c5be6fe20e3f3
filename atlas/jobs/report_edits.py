"""The report's edit sections: updates, relation erasures (with their controls) and audits.

Everything comes from the edits' stored metrics and the audit rows, so the sections show exactly
what `atlas edit` and `atlas audit` measured.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean, median
from typing import Any

from atlas.db.audits import PREDICTOR_NAMES, stored_rows
from atlas.db.store import Store
from atlas.jobs.audit import aucs, disturbed, dp_of, predictor, rho_of


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def num(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def kept(c: dict[str, Any] | None, prefix: str = "") -> str:
    """'k/n' right answers kept (greedy or among candidates)."""
    if not c:
        return "n/a"
    return f"{c[f'{prefix}right_after']}/{c[f'{prefix}right_before']}"


def update_section(edits, fig, paper: dict[str, Any]) -> list[str]:
    ups = [e for e in edits if e.kind == "update"]
    md = ["## Updating facts", ""]
    if not ups:
        return md + [
            "No update edits yet: `atlas edit update FACT --new-object X --run RUN` or "
            "`atlas audit --sample N --run RUN`.",
            "",
        ]
    by_form: dict[str, list] = defaultdict(list)
    for e in ups:
        by_form[_update_how(e.params)].append(e)
    md += [
        "Per form: the paper's success rate (the fact's prompts now answered t') and change rate (answered t "
        "before, no longer after), and the damage elsewhere: perplexity change of the fact's own relation "
        "(its other facts) and of every other relation pooled (medians: one destructive update can multiply "
        "a perplexity by 1e6).",
        "",
        "| form | updates | success rate | change rate | P(t') before -> after | same relation ppl (median) | "
        "other relations ppl (median) | fluency ppl (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for form, es in sorted(by_form.items()):

        def avg(key: str, how=mean, es=es):
            vals = [v for e in es if (v := _get(e.metrics, key)) is not None]
            return how(vals) if vals else None

        md.append(
            f"| {form} | {len(es)} | {num(avg('success_rate'), '.1%')} | {num(avg('change_rate'), '.1%')} | "
            f"{num(avg('p_new_before'), '.4f')} -> {num(avg('p_new_after'), '.4f')} | "
            f"{pct(avg('edited.ppl_change', median))} | {pct(avg('others_pooled.ppl_change', median))} | "
            f"{pct(avg('fluency.ppl_change', median))} |"
        )
        if fig.n_updates < len(es):  # the headline figures follow the form with the most updates
            fig.n_updates, fig.update_form = len(es), form
            fig.update_success, fig.update_change = avg("success_rate"), avg("change_rate")
            fig.update_intra_ppl_change = avg("edited.ppl_change", median)
            fig.update_inter_ppl_change = avg("others_pooled.ppl_change", median)
    return md + ["", f"Paper (BERT): success {paper['update_success']:.1%}, change {paper['update_change']:.1%}.", ""]


def _update_how(params: dict[str, Any]) -> str:
    """'form[, preservation]' (updates record the preservation that applied; older ones have none)."""
    keep = params.get("preserve")
    return params.get("form", "paper") + (f", {keep}" if keep not in (None, "none") else "")


def _get(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def erase_section(edits, paper: dict[str, Any]) -> list[str]:
    ers = sorted((e for e in edits if e.kind == "erase"), key=lambda x: x.id)
    md = ["## Erasing relations", ""]
    if not ers:
        return md + ["No erase edits yet: `atlas edit erase-relation P --run RUN`.", ""]
    md += [
        "Right answers kept (greedy / top-1 among the relation's objects, of those right before), perplexity "
        "change; other relations pooled; fluency = perplexity of a general English text. The control is the "
        "same form on as many layer-matched random neurons.",
        "",
        "| edit | relation | selection, form | neurons / slots | erased kept | erased ppl | others kept | "
        "others ppl | fluency | control: erased kept / others ppl | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in ers:
        md.append(_erase_row(e))
    return md + [
        "",
        f"Paper (perplexity change, erased / other relations): {paper['erase_erased_ppl']} / "
        f"{paper['erase_other_ppl']}.",
        "",
    ]


def _erase_row(e) -> str:
    g, o, c = e.metrics.get("edited"), e.metrics.get("others_pooled"), (e.metrics.get("control") or {})
    how, unit = _erase_how(e.params)
    fluency = (e.metrics.get("fluency") or {}).get("ppl_change")
    control = f"{kept(c.get('edited'), 'cand_')} / {pct((c.get('others_pooled') or {}).get('ppl_change'))}"
    return (
        f"| {e.id} | {e.target} | {how} | {unit} / {e.n_slots} | "
        f"{kept(g)} / {kept(g, 'cand_')} | {pct(g and g['ppl_change'])} | {kept(o)} / {kept(o, 'cand_')} | "
        f"{pct(o and o['ppl_change'])} | {pct(fluency)} | {control} | {e.status} |"
    )


def _erase_how(params: dict[str, Any]) -> tuple[str, str]:
    """'selection, form[, preservation]' and the count of what was chosen (neurons, or layers for
    lsq, whose `auto` preservation was the null space before `preserve_weight` existed)."""
    keep = params.get("preserve")
    if params.get("form") == "lsq":
        if keep == "auto":
            keep = "covariance" if "preserve_weight" in params else "nullspace"
        return f"lsq, {keep}", f"{params.get('n_layers')} layers"
    how = f"{params.get('select', 'frequent')}, {params.get('form', params.get('value'))}"
    return how + (", nullspace" if keep == "nullspace" else ""), str(params.get("n_neurons"))


def audit_section(plt, out_dir: Path, store: Store, edits, fig) -> list[str]:
    md = ["## Interference audit", ""]
    audited = [e for e in edits if "audit" in e.metrics]
    if not audited:
        return md + ["No audits yet: `atlas audit --sample N --run RUN`.", ""]
    rows = [r for e in audited for r in stored_rows(store, e.id)]
    fig.n_audited = len(audited)
    fig.audit_predictor = predictor(rows)
    fig.audit_spearman = rho_of(rows, fig.audit_predictor)
    a = aucs(rows)
    fig.audit_auc, fig.audit_auc_interference = a[f"{fig.audit_predictor}@0.1"], a["interference@0.1"]
    by_role = defaultdict(list)
    for r in rows:
        by_role[r.role].append(r)
    md += [
        f"{len(audited)} audited edits, {len(rows)} audited facts. The gradient sketches (runs indexed with "
        "`--sketch-rank`) predict each fact's change of P(gold) from the first-order effect of the edit's slot "
        "changes on every position of its prompts; `edit-impact` from its stored IG scores on the changed slots; "
        "`edit-interference` (the earliest predictor) scores the share of a fact's knowledge-neuron attribution "
        "on changed slots.",
        "",
        f"Spearman's rho, predicted ({PREDICTOR_NAMES[fig.audit_predictor]}) vs measured change of P(gold), all "
        f"facts: {num(fig.audit_spearman, '.3f')}.",
        "",
        "| predictor | ROC AUC, disturbed >= 10 % | ROC AUC, disturbed >= 50 % |",
        "|---|---|---|",
        *(
            f"| {PREDICTOR_NAMES[name]} | {num(a[f'{name}@0.1'], '.3f')} | {num(a[f'{name}@0.5'], '.3f')} |"
            for name in ("sketch", "impact", "interference")
            if f"{name}@0.1" in a
        ),
        "",
        "| facts | n | disturbed >= 10 % | median relative change of P(gold) |",
        "|---|---|---|---|",
    ]
    for role in ("target", "predicted", "random"):
        rs = by_role.get(role, [])
        share = mean(disturbed(r.p_before, r.p_after, 0.1) for r in rs) if rs else None
        change = median((r.p_after - r.p_before) / r.p_before if r.p_before else 0.0 for r in rs) if rs else None
        md.append(f"| {role} | {len(rs)} | {num(share, '.0%')} | {pct(change)} |")
    _audit_plot(plt, out_dir, by_role, fig.audit_predictor)
    return md + ["", "![audit](audit.png)", ""]


def _audit_plot(plt, out_dir: Path, by_role: dict[str, list], name: str) -> None:
    f3, ax = plt.subplots(figsize=(5.5, 3.8))
    pairs = {role: [(dp_of(r, name), r.p_after - r.p_before) for r in rs] for role, rs in by_role.items()}
    for role, colour in (("target", "#4c72b0"), ("predicted", "#c44e52"), ("random", "#999999")):
        xy = pairs.get(role, [])
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=12, alpha=0.7, label=role, color=colour)
    lim = max([abs(v) for xy in pairs.values() for pair in xy for v in pair] + [1e-6])
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.6, ls="--")
    ax.set(
        xlabel=f"predicted change of P(gold) ({PREDICTOR_NAMES[name]})",
        ylabel="measured change of P(gold)",
        title="Predicted vs measured interference",
        xscale="symlog",
        yscale="symlog",
    )
    ax.legend(fontsize=8)
    f3.tight_layout()
    f3.savefig(out_dir / "audit.png", dpi=90)
    plt.close(f3)
