"""What `atlas inject` reads of the atlas, in one transaction before the model runs: the run and
its facts, the applied edits and injections, the facts already injected, the default layers, the
pools of prompts the keys are built against, the atlas's other facts about the injected subjects,
the keep templates and the objects `--keep-gold` holds, and the facts the injected ones replace
(the statements are named in ARCHITECTURE.md, `atlas inject`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atlas.db.edits import EditRows, applied_stack
from atlas.db.injections import InjectedFact, InjectionRows, applied_injections, default_layer, injected_facts
from atlas.db.neurons import Fact, facts_of_rows, run_facts
from atlas.db.runs import Run, resolve_run
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.jobs.inject_pools import read_pools
from atlas.jobs.specs import InjectSpec

if TYPE_CHECKING:
    from atlas.jobs.inject import NewFact


@dataclass
class InjectionAtlas:
    """What one transaction read for an injection."""

    run: Run
    facts: dict[str, Fact]
    edits: list[EditRows]
    stack: list[InjectionRows]
    known: list[InjectedFact]
    layers: dict[str, int | None]
    run_layer: int | None
    negatives: list[tuple[str, str, str, str]]  # (pool: '', a relation or `namesakes(s)`; fact id, text, object)
    same_subject: list[Fact]  # facts of the atlas about an injected subject (other relations too)
    keep_templates: dict[str, str]  # relation -> the template its keep prompts use (injection_keep_templates.sql)
    keep_golds: dict[str, dict[str, list[str]]]  # subject -> relation -> objects outside the run (--keep-gold)
    replaced: dict[tuple[str, str], list[str]]  # (subject, relation) -> the atlas's objects a fact replaces


def read_atlas(
    store: Store, run_name: str | int, facts: Sequence[NewFact], spec: InjectSpec, causal: bool
) -> InjectionAtlas:
    """The read step of `atlas inject` (`atlas.jobs.inject`), in one transaction."""
    with store.begin() as conn:
        run = resolve_run(conn, run_name)
        be = store.backend
        rels = sorted({f.relation_id for f in facts})
        subjects = sorted({f.subject for f in facts})
        negatives = read_pools(conn, be, facts, spec, causal)
        kept = {
            r.relation_id: r.template
            for r in conn.execute(sql_text("injection_keep_templates", be), {"causal": causal})
        }
        params = {
            "subjects": subjects,
            "causal": causal,
            "kept": sorted(set(kept.values())),
            "limit": 20 * spec.audit_facts,
        }
        same = facts_of_rows(conn.execute(sql_text("injection_same_subject", be), params))
        replaced: dict[tuple[str, str], list[str]] = {}
        for r in conn.execute(sql_text("injection_replaced", be), {"subjects": subjects, "relation_ids": rels}):
            replaced.setdefault((r.subject, r.relation_id), []).append(r.object)
        in_run = run_facts(conn, run.id, be)
        golds: dict[str, dict[str, list[str]]] = {}
        for r in conn.execute(sql_text("injection_keep_golds", be), {"subjects": subjects}):
            if r.fact_id not in in_run:
                golds.setdefault(r.subject, {}).setdefault(r.relation_id, []).append(r.object)
        return InjectionAtlas(
            run,
            in_run,
            applied_stack(conn, be, run.model_id),
            applied_injections(conn, be, run.model_id),
            injected_facts(conn, be, run.model_id),
            {r: default_layer(conn, be, run.id, r) for r in rels},
            default_layer(conn, be, run.id, ""),
            negatives,
            list(same.values()),
            kept,
            golds,
            {(f.subject, f.relation_id): replaced.get((f.subject, f.relation_id), []) for f in facts},
        )
