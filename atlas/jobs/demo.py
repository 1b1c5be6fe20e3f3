"""The README's main job: a small atlas built from bundled data, end to end, in one call.

``run_demo`` is a list of stages so that later stages (indexing with the bundled SmolLM2 model,
printing knowledge neurons) can be appended without touching the ones before. Every stage takes the
store and the :class:`DemoState` and prints through ``echo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from atlas.db import migrate
from atlas.db.datasets import causal_prefix, read_kn_paper
from atlas.db.facts import FactDetail, LoadReport, load_dataset, show_fact
from atlas.db.store import Store

# capital, capital of, place of birth: 6-8 left-to-right prompts per fact (refining needs >= 3),
# 63 prompts in all, which SmolLM2 indexes in 2-2.5 minutes on 2 CPU cores
DEMO_RELATIONS = ("P36", "P1376", "P19")
DEMO_FACTS_PER_RELATION = 3

Echo = Callable[[str], None]


@dataclass
class DemoState:
    relations: tuple[str, ...]
    per_relation: int
    load: LoadReport | None = None
    fact_ids: list[str] = field(default_factory=list)  # the demo's facts, in dataset order
    facts: list[FactDetail] = field(default_factory=list)
    run_id: int | None = None  # the indexing run (set by index_facts)


def prepare_schema(store: Store, state: DemoState, echo: Echo) -> None:
    before = migrate.current_revision(store)
    migrate.upgrade(store)
    after = migrate.current_revision(store)
    echo(
        f"database {store!r}: schema {before or 'none'} -> {after}"
        if before != after
        else f"database {store!r}: schema {after}"
    )


def load_facts(store: Store, state: DemoState, echo: Echo) -> None:
    dataset = read_kn_paper(state.relations, state.per_relation)
    state.fact_ids = [f.id for f in dataset.facts]
    state.load = load_dataset(store, dataset)
    echo(f"loaded {state.load}")
    counts = migrate.table_counts(store)
    echo(f"atlas now holds {counts['relations']} relations, {counts['facts']:,} facts, {counts['prompts']:,} prompts")


def show_facts(store: Store, state: DemoState, echo: Echo) -> None:
    for fact_id in state.fact_ids:
        detail = show_fact(store, fact_id)
        state.facts.append(detail)
        row, causal = detail.fact, [p for p in detail.prompts if p.causal]
        echo(
            f"{detail.relation.id} {detail.relation.label}: {row.subject} -> {row.object}  "
            f"({row.n_prompts} prompts, {len(causal)} for left-to-right models)"
        )
        for p in causal[:2]:
            echo(f"    {causal_prefix(p.text)} ...")


def index_facts(store: Store, state: DemoState, echo: Echo) -> None:
    """Index the demo facts with the bundled SmolLM2 model on the CPU (resumes if interrupted), in
    bf16 where the processor runs it natively (1.8x faster than fp32 on an AMD EPYC with
    AVX512_BF16: BENCHMARKS.md), else fp32."""
    from atlas.model.cpu import fastest_cpu_precision
    from indexer.job.run import IndexOptions, index

    last = [""]

    def report(done: int, total: int, relation: str) -> None:
        if relation != last[0]:
            last[0] = relation
            echo(f"  indexing: {done}/{total} prompts" + (f" ({relation} done)" if relation else ""))

    precision, why = fastest_cpu_precision()
    echo(f"indexing on the CPU in {precision} ({why})")
    opts = IndexOptions(
        model="smollm2",
        dataset="kn-paper",
        relations=state.relations,
        limit_per_relation=state.per_relation,
        precision=precision,
    )
    summary = index(store, opts, report)
    state.run_id = summary.run.id
    c, t = summary.counts, summary.timings
    echo(
        f"indexed run {summary.run.name}: {c.prompts} prompts ({c.skipped} skipped), {c.neurons} knowledge neurons "
        f"in {c.facts_with_neurons}/{c.facts} facts; {summary.wall_s:.0f} s "
        f"(model {t.model_s:.0f} s, database {t.db_s:.1f} s)"
    )


def show_neurons(store: Store, state: DemoState, echo: Echo) -> None:
    """Per fact, whether the model knows it and its strongest knowledge neurons; then the neurons
    shared by facts of each relation."""
    from atlas.db.queries import run_query
    from atlas.db.results import fact_knowledge

    knows = fact_knowledge(store, state.run_id)
    for detail in state.facts:
        k = knows.get(detail.fact.id)
        verdict = (
            f"{'knows it' if k.known else 'does not know it'} (P(gold) {k.mean_p_gold:.2f}, "
            f"rank 1 on {k.n_top1}/{k.n_ok} prompts, best rank {k.best_rank})"
            if k
            else "no prompt the model could read"
        )
        rows = run_query(store, "fact-neurons", {"run_id": state.run_id, "fact_id": detail.fact.id}).rows
        shown = ", ".join(f"L{layer}.{neuron} ({score:.2g})" for layer, neuron, score, _, _ in rows[:3])
        echo(
            f"{detail.fact.subject} -> {detail.fact.object}: the model {verdict}; {len(rows)} knowledge neurons {shown}"
        )
    for relation in state.relations:
        rows = run_query(
            store, "relation-neurons", {"run_id": state.run_id, "relation_id": relation, "min_facts": 2}
        ).rows
        shown = ", ".join(
            f"L{layer}.{neuron} ({n_facts}/{rel_facts} facts)" for layer, neuron, n_facts, rel_facts, _, _ in rows[:5]
        )
        echo(f"{relation}: {len(rows)} neurons shared by >= 2 facts {shown}")


Stage = Callable[[Store, DemoState, Echo], None]
STAGES: list[Stage] = [prepare_schema, load_facts, show_facts, index_facts, show_neurons]


def run_demo(
    store: Store,
    relations: tuple[str, ...] = DEMO_RELATIONS,
    per_relation: int = DEMO_FACTS_PER_RELATION,
    echo: Echo = print,
    stages: list[Stage] | None = None,
) -> DemoState:
    """Create or upgrade the schema, load a few bundled kn-paper facts, print them with their prompts,
    index them with the bundled SmolLM2 on the CPU and print their knowledge neurons."""
    state = DemoState(tuple(relations), per_relation)
    for stage in stages or STAGES:
        stage(store, state, echo)
    return state
