"""`fact_knowledge` (what the demo says per fact) against the stored prompt outputs, on both backends."""

from __future__ import annotations

import sqlalchemy as sa

from atlas.db.results import fact_knowledge
from atlas.db.runs import get_run
from atlas.db.schema import prompt_outputs, prompts
from tests.support.kn_world import index_world


def test_fact_knowledge_is_the_prompt_outputs_summed_by_hand(store, tmp_path) -> None:
    w = index_world(store, tmp_path)
    run = get_run(store, w.run)
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(prompts.c.fact_id, prompt_outputs.c.p_gold, prompt_outputs.c.gold_rank)
            .join(prompts, prompts.c.id == prompt_outputs.c.prompt_id)
            .where(prompt_outputs.c.run_id == run.id, prompt_outputs.c.status == "ok")
        ).all()
    by_fact: dict[str, list[tuple[float, int]]] = {}
    for fact_id, p, rank in rows:
        by_fact.setdefault(fact_id, []).append((p, rank))
    got = fact_knowledge(store, run.id)
    assert set(got) == set(by_fact) and got
    for fact_id, outs in by_fact.items():
        k = got[fact_id]
        assert k.n_ok == len(outs) and k.best_rank == min(r for _, r in outs)
        assert k.n_top1 == sum(r == 1 for _, r in outs) and k.known == (2 * k.n_top1 > k.n_ok)
        assert abs(k.mean_p_gold - sum(p for p, _ in outs) / len(outs)) < 1e-6
