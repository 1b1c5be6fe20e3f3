"""Finalising relations: knowledge neurons refined from the stored coarse sets, once a relation is done.

A relation is finalised when its last work item is done: the database aggregates each fact's
coarse tally (`atlas.db.results.relation_tallies`), `indexer.attribution.refine.refine_tallies`
picks the neurons with the relation-adaptive p, and `write_relation` replaces them in one
transaction (idempotent, so finalising twice is harmless).
"""

from __future__ import annotations

from atlas.db.results import CoarseTally, RelationNeurons, relation_facts, relation_tallies, write_relation
from atlas.db.retry import with_retries
from atlas.db.runs import mark_done
from atlas.db.store import Store
from atlas.db.workqueue import WorkQueue
from indexer.attribution import refine


def _fact_tally(t: CoarseTally | None) -> refine.FactTally:
    """The store's tally of a fact (None: no ok prompt) as the refiner takes it."""
    if t is None:
        return refine.tally([])
    return refine.FactTally(t.n_prompts, t.layers, t.neurons, t.counts, t.sums)


def finalize_relation(store: Store, run_id: int, relation_id: str) -> RelationNeurons:
    """Refine the relation's knowledge neurons from its stored coarse sets and store them."""
    fact_ids = relation_facts(store, run_id, relation_id)
    tallies = relation_tallies(store, run_id, relation_id, refine.COARSE_T)
    res = refine.refine_tallies([_fact_tally(tallies.get(f)) for f in fact_ids])
    rel = RelationNeurons(relation_id, [], [], [], [], [], float(res.p), float(res.mean_neurons), len(fact_ids))
    for fact_id, neurons in zip(fact_ids, res.facts):
        for n in neurons:
            rel.fact_id.append(fact_id)
            rel.layer.append(n.layer)
            rel.neuron.append(n.neuron)
            rel.score.append(n.mean_score)
            rel.n_prompts.append(n.n_prompts)
    write_relation(store, run_id, rel)
    return rel


def finalize_if_complete(store: Store, queue: WorkQueue, relation_id: str) -> None:
    """Finalise `relation_id` if its last item is done and it is not finalised yet."""
    for prog in queue.progress():
        if prog.relation_id == relation_id and prog.complete and not prog.finalized:
            finalize_relation(store, queue.run_id, relation_id)


def finish(store: Store, queue: WorkQueue) -> int:
    """Finalise every complete relation that is not yet; mark the run done when all are.
    Returns the number of items not yet done (held by other workers)."""
    progress = with_retries(queue.progress, what="reading run progress")
    for prog in progress:
        if prog.complete and not prog.finalized:
            with_retries(
                lambda p=prog: finalize_relation(store, queue.run_id, p.relation_id),
                what=f"finalising {prog.relation_id}",
            )
    left = sum(p.n_items - p.n_done for p in progress)
    if left == 0:
        with_retries(lambda: mark_done(store, queue.run_id), what="marking the run done")
    return left
