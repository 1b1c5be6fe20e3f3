"""How an injection reads on a terminal (`atlas inject show`, `list`): its facts and stored audit."""

from __future__ import annotations

from typing import Any

from atlas.db.injections import InjectionRecord
from atlas.jobs.report_injections import named_changes


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2%}" if signed else f"{x:.1%}"


def headline(a: dict[str, Any]) -> str:
    """The audit in one line."""
    if not a:
        return "no audit"
    return (
        f"efficacy {_pct(a.get('efficacy'))}, held-out {_pct(a.get('generalisation'))}, "
        f"others |dP/P| {_pct(a.get('others_mean_abs_rel_dp'))} kept {_pct(a.get('others_kept'))} "
        f"firing {_pct(a.get('others_firing_rate'))}, fluency ppl {_pct(a.get('fluency_ppl_change'), True)}"
    )


def summary_line(i: InjectionRecord) -> str:
    return (
        f"injection {i.id}: {i.n_facts} facts on run {i.run} [{i.status}], layers {i.layers}, FFN width "
        f"{i.width_before} -> {i.width_after}, sha256 {i.sha256_before[:12]} -> {i.sha256_after[:12]}; "
        f"{headline(i.audit)}"
    )


def describe(i: InjectionRecord, per_fact: bool = True) -> str:
    """The injection, its parameters, audit and (with `per_fact`) every fact with its slots."""
    lines = [summary_line(i)]
    shown = {k: v for k, v in i.params.items() if k not in ("method",)}
    lines.append(f"method: {i.params.get('method')}")
    lines.append("params: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    a = i.audit
    if a:
        lines.append(
            f"audit ({a.get('n_train_prompts')} training, {a.get('n_heldout_prompts')} held-out prompts; "
            f"{a.get('others_prompts')} prompts of other facts; {a.get('n_negatives')} negatives):"
        )
        lines.append(f"  efficacy (new object greedy, training prompts): {_pct(a.get('efficacy'))}")
        lines.append(
            f"  generalisation (held-out prompts): {_pct(a.get('generalisation'))}, "
            f"a slot open on {_pct(a.get('heldout_firing_rate'))} of them{_where_known(a)}"
        )
        lines.append(
            f"  specificity: mean |dP/P| {_pct(a.get('others_mean_abs_rel_dp'))} "
            f"(mean |dP| / mean P {_pct(a.get('others_change_of_means'))}), right answers kept "
            f"{a.get('others_right_kept')}/{a.get('others_right_before')}, "
            f"slot firing rate {_pct(a.get('others_firing_rate'))}"
        )
        lines += _named(a, "others")
        lines.append(
            f"  same subjects, other relations ({a.get('same_subject_prompts', 0)} prompts): mean |dP/P| "
            f"{_pct(a.get('same_subject_mean_abs_rel_dp'))}, right answers kept "
            f"{a.get('same_subject_right_kept')}/{a.get('same_subject_right_before')}, "
            f"slot firing rate {_pct(a.get('same_subject_firing_rate'))}"
        )
        lines += _named(a, "same_subject")
        lines.append(
            f"  fluency: perplexity {_pct(a.get('fluency_ppl_change'), True)} "
            f"(text never used as negatives: {_pct(a.get('fluency_unseen_ppl_change'), True)})"
        )
    if per_fact:
        audits = a.get("facts") or []
        for f in i.facts:
            fa = audits[f.position] if f.position < len(audits) else {}
            guards = f.info.get("guards") or []
            built = {g["index"] for g in guards if g["index"] is not None}
            slots = " ".join(f"L{lay}.{n}+{n + 1}" for lay, n in f.info.get("slots", []) if n not in built)
            was = ", ".join(f.info.get("replaces") or []) or repr(f.info.get("old_token"))
            lines.append(
                f"  [{f.position}] {f.relation_id}: {f.subject} -> {f.object} (was {was}), "
                f"slots {slots} ({f.info.get('layer_source')}), efficacy {_pct(fa.get('efficacy'))}, "
                f"held-out {_pct(fa.get('generalisation'))}{_guards(guards)}"
            )
    return "\n".join(lines)


def _where_known(a: dict[str, Any]) -> str:
    """Generalisation over the held-out prompts the model answered with the replaced object before."""
    if a.get("heldout_known") is None:
        return ""
    return (
        f"; {_pct(a.get('generalisation_where_known'))} of the {a['heldout_known']} the model "
        "answered with the replaced object before"
    )


def _named(a: dict[str, Any], group: str) -> list[str]:
    return [f"    {what}: {said}" for what, said in named_changes(a, group).items() if said]


def _guards(guards: list[dict[str, Any]]) -> str:
    """A fact's guards ("guard L10.1538+1539 shuts 12/14 namesake positions, -0.46 v"), where its slot
    opens on a namesake (the share of the slot's value, recorded since 2026-11-28)."""
    said = [
        f"guard L{g['layer']}.{g['index']}+{g['index'] + 1} shuts {g['cancelled']}/{g['opened']} namesake positions"
        + (f", -{g['share']:.2f} v" if "share" in g else "")
        if g["index"] is not None
        else f"slot opens on {g['opened']} namesake positions, no guard parts them"
        for g in guards
        if g["opened"]
    ]
    return "; " + "; ".join(said) if said else ""
