"""The report's injection section: every injection of the run with its stored audit.

Everything comes from `injections.audit`, so the table shows exactly what `atlas inject` measured
with all of an injection's facts (and the earlier applied injections) in the model at once.
"""

from __future__ import annotations

from typing import Any

from atlas.db.injections import list_injections
from atlas.db.store import Store


def _p(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.2%}" if signed else f"{x:.1%}"


def _known(a: dict[str, Any]) -> str:
    n = a.get("heldout_known") if a else None
    return "" if n is None else f" ({_p(a.get('generalisation_where_known'))} of {n})"


def injection_section(store: Store, run: str) -> list[str]:
    """`## Injecting facts`: one row per injection (newest first)."""
    md = ["## Injecting facts", ""]
    rows = list_injections(store, run)
    if not rows:
        return md + ["No injections yet: `atlas inject FACTS.jsonl --run RUN` (or `--fact S|R|O`).", ""]
    md += [
        "Facts added as new FFN slot pairs (key: discriminant direction of the FFN input, read at the subject "
        "or the answer position; gate: clamped ramp; value: log-probability gradient, line-searched and "
        "refined). Efficacy: the new object is the greedy answer on the prompts the slots were built on; "
        "held-out: on prompts they never saw (in brackets: over those of them whose top-1 was the replaced object "
        "before, and how many); others: every other fact of the run (mean |dP/P| of P(gold); "
        "Dai et al.'s mean |dP| / mean P, which no one prompt near P = 0 decides; right answers kept, "
        "share of their prompts on which a slot fires); same subject: the atlas's other "
        "facts about an injected subject; fluency: perplexity of the bundled general text.",
        "",
        "| id | status | facts | layers | width | efficacy | held-out | others mean abs dP/P | "
        "others mean abs dP / mean P | others kept | slot firing | same subject kept | fluency ppl |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in rows:
        a = i.audit
        kept = f"{a.get('others_right_kept')}/{a.get('others_right_before')}" if a else "n/a"
        same = f"{a.get('same_subject_right_kept')}/{a.get('same_subject_right_before')}" if a else "n/a"
        md.append(
            f"| {i.id} | {i.status} | {i.n_facts} | {', '.join(map(str, i.layers))} | "
            f"{i.width_before} -> {i.width_after} | {_p(a.get('efficacy'))} | "
            f"{_p(a.get('generalisation'))}{_known(a)} | "
            f"{_p(a.get('others_mean_abs_rel_dp'))} | {_p(a.get('others_change_of_means'))} | {kept} | "
            f"{_p(a.get('others_firing_rate'))} | {same} | "
            f"{_p(a.get('fluency_ppl_change'), True)} |"
        )
    named = [(i.id, "; ".join(f"{k}: {v}" for k, v in named_changes(i.audit).items() if v)) for i in rows]
    if any(said for _, said in named):
        md += ["", "Which other facts of the run those figures come from (stored with each audit):", ""]
        md += [f"- injection {n}: {said}" for n, said in named if said]
    return md + [""]


def named_changes(a: dict[str, Any], group: str = "others") -> dict[str, str]:
    """The facts behind an audit group's figures, by name (what `atlas inject show` and the report
    print): the prompts moved most, with |dP/P| and P(gold) before -> after, and the right answers
    lost, with their prompt counts; an empty string where there are none."""
    moved = ", ".join(
        f"{m['fact']} {m['rel_dp']:.3g} ({m['p_before']:.2g} -> {m['p_after']:.2g})"
        for m in a.get(f"{group}_moved_most") or []
    )
    lost = ", ".join(f"{fact} ({n})" for fact, n in sorted((a.get(f"{group}_lost") or {}).items()))
    return {"moved most (abs dP/P)": moved, "right answers lost": lost}
