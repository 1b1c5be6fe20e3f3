"""The README's main job: a small atlas built from bundled data, end to end, in one call.

``run_demo`` is a list of stages so that later stages (indexing with the bundled SmolLM2 model,
printing knowledge neurons) can be appended without touching the ones before. Every stage takes the
store and the :class:`DemoState` and prints through ``echo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import migrate
from .datasets import causal_prefix, read_kn_paper
from .facts import FactDetail, LoadReport, load_dataset, show_fact
from .store import Store

DEMO_RELATIONS = ("P36", "P1376", "P103")  # capital, capital of, native language
DEMO_FACTS_PER_RELATION = 4

Echo = Callable[[str], None]


@dataclass
class DemoState:
    relations: tuple[str, ...]
    per_relation: int
    load: LoadReport | None = None
    fact_ids: list[str] = field(default_factory=list)  # the demo's facts, in dataset order
    facts: list[FactDetail] = field(default_factory=list)


def prepare_schema(store: Store, state: DemoState, echo: Echo) -> None:
    before = migrate.current_revision(store)
    migrate.upgrade(store)
    after = migrate.current_revision(store)
    echo(f"database {store!r}: schema {before or 'none'} -> {after}" if before != after else f"database {store!r}: schema {after}")


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
        echo(f"{detail.relation.id} {detail.relation.label}: {row.subject} -> {row.object}  "
             f"({row.n_prompts} prompts, {len(causal)} for left-to-right models)")
        for p in causal[:2]:
            echo(f"    {causal_prefix(p.text)} ...")


Stage = Callable[[Store, DemoState, Echo], None]
STAGES: list[Stage] = [prepare_schema, load_facts, show_facts]


def run_demo(store: Store, relations: tuple[str, ...] = DEMO_RELATIONS, per_relation: int = DEMO_FACTS_PER_RELATION,
             echo: Echo = print, stages: list[Stage] | None = None) -> DemoState:
    """Create or upgrade the schema, load a few bundled kn-paper facts and print them with their prompts."""
    state = DemoState(tuple(relations), per_relation)
    for stage in stages or STAGES:
        stage(store, state, echo)
    return state
