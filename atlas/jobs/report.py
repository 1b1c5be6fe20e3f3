"""`atlas report`: a markdown report with plots reproducing the paper's analyses on one run.

It reads only what the atlas holds (knowledge neurons, probe results, edits and their metrics,
audit results), so it is cheap to regenerate and shows exactly what the other commands measured.
Sections whose data are missing say which command produces them. Figures are matplotlib PNGs
(Agg backend), numbers are compared with the paper's (BERT-base, PARAREL) where one exists.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from atlas.db.audits import PREDICTOR_NAMES
from atlas.db.edits import list_edits
from atlas.db.neurons import read_run_atlas
from atlas.db.store import Store
from atlas.jobs.probe import SummaryRow, summary
from atlas.jobs.report_edits import audit_section, erase_section, num, pct, update_section
from atlas.jobs.report_injections import injection_section

PAPER = {
    "neurons_per_fact": 4.13,
    "shared_same": 1.23,
    "shared_other": 0.09,
    "suppress": -0.2903,
    "amplify": 0.3117,
    "update_success": 0.344,
    "update_change": 0.485,
    "erase_erased_ppl": "+36.7 % .. +141.2 %",
    "erase_other_ppl": "+1.1 % .. +10.1 %",
}


@dataclass
class Figures:
    """Headline numbers of the report (also returned to the caller)."""

    n_facts: int = 0
    n_facts_with_neurons: int = 0
    neurons_per_fact: float | None = None
    shared_same: float | None = None
    shared_other: float | None = None
    suppress: float | None = None
    suppress_other_fact: float | None = None
    suppress_random: float | None = None
    amplify: float | None = None
    amplify_other_fact: float | None = None
    amplify_random: float | None = None
    update_form: str | None = None
    update_success: float | None = None
    update_change: float | None = None
    update_intra_ppl_change: float | None = None
    update_inter_ppl_change: float | None = None
    n_updates: int = 0
    audit_spearman: float | None = None
    audit_predictor: str = "impact"  # sketch | impact (atlas.db.audits.predictor_of)
    audit_auc: float | None = None
    audit_auc_interference: float | None = None
    n_audited: int = 0


_pct, _num = pct, num


def write_report(store: Store, run_name: str | int, out_dir: Path) -> Figures:
    """Write `out_dir/report.md` and its PNG figures; returns the headline numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run, facts, neurons = read_run_atlas(store, run_name)
    fig = Figures(n_facts=len(facts), n_facts_with_neurons=sum(1 for f in facts if f in neurons))
    relations = sorted({f.relation_id for f in facts.values()})
    md = [
        f"# Knowledge neurons of `{run.model_name}`: run `{run.name}`",
        "",
        f"Model weights sha256 `{run.model_sha256[:16]}…`; {len(facts)} facts in "
        f"{len(relations)} relations ({', '.join(relations)}); "
        f"run parameters `{json.dumps(run.params, sort_keys=True)}`.",
        "",
        "Paper figures are for BERT-base-cased on PARAREL (Dai et al., ACL 2022); here a left-to-right model, "
        "whose answer position is the last prompt token.",
        "",
    ]
    md += _neuron_section(plt, out_dir, facts, neurons, fig)
    md += _probe_section(plt, out_dir, store, run.name, fig)
    edits = list_edits(store, run.name)
    md += update_section(edits, fig, PAPER)
    md += erase_section(edits, PAPER)
    md += audit_section(plt, out_dir, store, edits, fig)
    md += injection_section(store, run.name)
    md += ["## Against the paper", ""] + _comparison(fig)
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    return fig


def _neuron_section(plt, out_dir: Path, facts, neurons, fig: Figures) -> list[str]:
    counts = {f: len(neurons.get(f, [])) for f in facts}
    by_rel: dict[str, list[int]] = defaultdict(list)
    for f, n in counts.items():
        by_rel[facts[f].relation_id].append(n)
    fig.neurons_per_fact = mean(counts.values()) if counts else None
    sets = {f: {(l, n) for l, n, _ in neurons.get(f, [])} for f in facts}
    same, other = [], []
    for a, b in itertools.combinations(sorted(facts), 2):
        (same if facts[a].relation_id == facts[b].relation_id else other).append(len(sets[a] & sets[b]))
    fig.shared_same = mean(same) if same else None
    fig.shared_other = mean(other) if other else None
    layers = Counter(l for f in neurons for l, _, _ in neurons[f] if f in facts)
    f1, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.hist(list(counts.values()), bins=range(0, max(counts.values(), default=0) + 2), align="left", color="#4c72b0")
    ax1.set(xlabel="knowledge neurons per fact", ylabel="facts", title="Knowledge neurons per fact")
    if layers:
        xs = range(max(layers) + 1)
        ax2.bar(list(xs), [layers.get(x, 0) for x in xs], color="#55a868")
    ax2.set(xlabel="layer", ylabel="knowledge neurons", title="Layer of knowledge neurons")
    f1.tight_layout()
    f1.savefig(out_dir / "neurons.png", dpi=90)
    plt.close(f1)
    md = [
        "## Knowledge neurons per fact",
        "",
        f"{fig.n_facts_with_neurons} of {fig.n_facts} facts have knowledge neurons; mean "
        f"{_num(fig.neurons_per_fact)} per fact (paper: {PAPER['neurons_per_fact']}).",
        "",
        "| relation | facts | mean neurons | facts without |",
        "|---|---|---|---|",
    ]
    for rel in sorted(by_rel):
        v = by_rel[rel]
        md.append(f"| {rel} | {len(v)} | {mean(v):.2f} | {sum(1 for x in v if x == 0)} |")
    md += [
        "",
        "![neurons per fact and layer](neurons.png)",
        "",
        "## Shared neurons within and across relations",
        "",
        f"Mean number of knowledge neurons shared by two facts: same relation {_num(fig.shared_same)} "
        f"({len(same)} pairs), different relations {_num(fig.shared_other)} ({len(other)} pairs). "
        f"Paper: {PAPER['shared_same']} and {PAPER['shared_other']}.",
        "",
    ]
    return md


def _probe_section(plt, out_dir: Path, store: Store, run: str, fig: Figures) -> list[str]:
    md = ["## Suppressing and amplifying knowledge neurons", ""]
    tables = {k: summary(store, run, k) for k in ("suppress", "amplify")}
    if not any(tables.values()):
        return md + [
            "No probe results yet: run `atlas probe suppress --run RUN` and `atlas probe amplify --run RUN`.",
            "",
        ]
    f2, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, (kind, rows) in zip(axes, tables.items()):
        overall = {r.neurons: r.relative_change for r in rows if r.relation_id == "ALL"}
        setattr(fig, kind, overall.get("knowledge"))
        setattr(fig, f"{kind}_other_fact", overall.get("other_fact"))
        setattr(fig, f"{kind}_random", overall.get("random"))
        md += [
            f"**{kind}** (x{'0' if kind == 'suppress' else '2'} at the answer position): relative change of "
            f"P(gold), mean delta p / mean p0 (paper, knowledge neurons: {_pct(PAPER[kind])})",
            "",
            "| relation | facts | knowledge neurons | other relation's fact | random, same layers |",
            "|---|---|---|---|---|",
        ]
        rels = sorted({r.relation_id for r in rows}, key=lambda x: (x == "ALL", x))
        cell = {(r.relation_id, r.neurons): r for r in rows}
        for rel in rels:
            vals = [cell.get((rel, n)) for n in ("knowledge", "other_fact", "random")]
            md.append(
                f"| {rel} | {vals[0].n_facts if vals[0] else 0} | "
                + " | ".join(_pct(v.relative_change if v else None) for v in vals)
                + " |"
            )
        md.append("")
        _bars(ax, rels, cell, kind)
    f2.tight_layout()
    f2.savefig(out_dir / "probe.png", dpi=90)
    plt.close(f2)
    return md + ["![suppress and amplify](probe.png)", ""]


def _bars(ax, rels: list[str], cell: dict[tuple[str, str], SummaryRow], kind: str) -> None:
    width = 0.27
    for i, (name, colour) in enumerate((("knowledge", "#c44e52"), ("other_fact", "#8172b2"), ("random", "#999999"))):
        vals = [100 * (cell[(r, name)].relative_change or 0) if (r, name) in cell else 0 for r in rels]
        ax.bar([x + (i - 1) * width for x in range(len(rels))], vals, width, label=name, color=colour)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(rels)), rels)
    ax.set(ylabel="change of P(gold), %", title=kind)
    ax.legend(fontsize=8)


def _differences(fig: Figures) -> list[str]:
    """One generated sentence per figure that can be compared with the paper's."""

    def cmp(name: str, ours: float | None, paper: float) -> str | None:
        if ours is None:
            return None
        word = (
            "close to" if abs(ours - paper) <= 0.15 * abs(paper) else ("above" if abs(ours) > abs(paper) else "below")
        )
        return f"- {name}: {ours:.3g} here, {word} the paper's {paper:.3g}."

    lines = [
        cmp("knowledge neurons per fact", fig.neurons_per_fact, PAPER["neurons_per_fact"]),
        cmp("neurons shared within a relation", fig.shared_same, PAPER["shared_same"]),
        cmp("neurons shared across relations", fig.shared_other, PAPER["shared_other"]),
        cmp("suppression effect", fig.suppress, PAPER["suppress"]),
        cmp("amplification effect", fig.amplify, PAPER["amplify"]),
        cmp("update success rate", fig.update_success, PAPER["update_success"]),
        cmp("update change rate", fig.update_change, PAPER["update_change"]),
    ]
    return ["Where the numbers differ (magnitudes; 'close' = within 15 %):", ""] + [x for x in lines if x] + [""]


def _comparison(fig: Figures) -> list[str]:
    return _differences(fig) + [
        "| figure | this run | paper (BERT-base, PARAREL) |",
        "|---|---|---|",
        f"| knowledge neurons per fact | {_num(fig.neurons_per_fact)} | {PAPER['neurons_per_fact']} |",
        f"| shared neurons, same / different relation | {_num(fig.shared_same)} / {_num(fig.shared_other)} | "
        f"{PAPER['shared_same']} / {PAPER['shared_other']} |",
        f"| suppress: knowledge / other fact / random | {_pct(fig.suppress)} / {_pct(fig.suppress_other_fact)} / "
        f"{_pct(fig.suppress_random)} | {_pct(PAPER['suppress'])} / baseline -1.47 % / - |",
        f"| amplify: knowledge / other fact / random | {_pct(fig.amplify)} / {_pct(fig.amplify_other_fact)} / "
        f"{_pct(fig.amplify_random)} | {_pct(PAPER['amplify'])} / baseline -1.27 % / - |",
        f"| update success / change rate | {_num(fig.update_success, '.1%')} / {_num(fig.update_change, '.1%')} | "
        f"{PAPER['update_success']:.1%} / {PAPER['update_change']:.1%} |",
        f"| audit: Spearman rho / ROC AUC at 10 % ({PREDICTOR_NAMES[fig.audit_predictor]}; edit-interference) | "
        f"{_num(fig.audit_spearman, '.3f')} / {_num(fig.audit_auc, '.3f')}; "
        f"{_num(fig.audit_auc_interference, '.3f')} | (no counterpart) |",
        "",
    ]
