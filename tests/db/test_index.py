"""End-to-end indexing on both backends with a tiny random LLaMA: rows written, knowledge neurons
equal to refining the STORED coarse sets, complete prompt outputs, skipped prompts recorded."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from atlas.db.schema import (
    knowledge_neurons,
    prompt_outputs,
    prompt_scores,
    prompts,
    relation_thresholds,
    runs,
    work_items,
)
from atlas.db.store import Store
from indexer.attribution import refine
from indexer.job.run import IndexOptions, index
from tests.support.index_world import DATASET, load_world, run_rows, tiny_dir
from tests.support.refine_reference import coarse_from_triplets, sparse_scores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dir(tmp_path_factory.mktemp("models"))


def _opts(model_dir: Path, **kw: object) -> IndexOptions:
    return IndexOptions(model=str(model_dir), dataset=DATASET, facts_per_item=2, **kw)  # type: ignore[arg-type]


@pytest.fixture
def indexed(store: Store, model_dir: Path):
    load_world(store)
    summary = index(store, _opts(model_dir, score_cap=5))
    return store, summary


def test_every_causal_prompt_has_an_output(indexed) -> None:
    store, summary = indexed
    with store.begin() as conn:
        causal = conn.execute(sa.select(prompts.c.id).where(prompts.c.causal)).scalars().all()
        masked_only = conn.execute(sa.select(prompts.c.id).where(~prompts.c.causal)).scalars().all()
        out = {
            r.prompt_id: r
            for r in conn.execute(sa.select(prompt_outputs).where(prompt_outputs.c.run_id == summary.run.id))
        }
    assert sorted(out) == sorted(causal) and masked_only  # decoders never see masked-only prompts
    assert summary.run.status == "done"
    assert summary.counts.prompts == len(causal) == summary.counts.ok + summary.counts.skipped
    for r in out.values():
        assert r.status in ("ok", "skipped")
        if r.status == "ok":
            assert r.skip_reason is None and 0 < r.p_gold <= 1 and r.gold_rank >= 1 and r.n_answer_tokens >= 1
            assert r.max_score is not None
        else:
            assert r.skip_reason and r.p_gold is None


def test_unencodable_and_too_long_prompts_are_skipped_with_reasons(indexed) -> None:
    store, summary = indexed
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(prompts.c.fact_id, prompt_outputs.c.status, prompt_outputs.c.skip_reason)
            .join(prompts, prompts.c.id == prompt_outputs.c.prompt_id)
            .where(prompt_outputs.c.run_id == summary.run.id)
        ).all()
    by_fact = defaultdict(set)
    for fact_id, status, reason in rows:
        by_fact[fact_id].add((status, reason))
    assert by_fact["P36-brazil"] == {("skipped", "answer has a token unknown to the tokenizer")}
    assert all(
        s == "skipped" and r == "prompt and answer do not fit the model (64 tokens)" for s, r in by_fact["P36-uk"]
    )
    assert all(s == "ok" for s, _ in by_fact["P36-france"] | by_fact["P103-dante"])
    assert summary.counts.skip_reasons == {
        "answer has a token unknown to the tokenizer": 4,
        "prompt and answer do not fit the model (64 tokens)": 4,
    }


def _stored_coarse(store: Store, run_id: int) -> dict[str, dict[str, list[dict]]]:
    """relation -> fact -> per ok prompt: coarse neurons rebuilt from prompt_scores (test's own SQL)."""
    with store.begin() as conn:
        ok = conn.execute(
            sa.select(prompt_outputs.c.prompt_id, prompts.c.fact_id)
            .join(prompts, prompts.c.id == prompt_outputs.c.prompt_id)
            .where(prompt_outputs.c.run_id == run_id, prompt_outputs.c.status == "ok")
        ).all()
        scores = conn.execute(sa.select(prompt_scores).where(prompt_scores.c.run_id == run_id)).all()
        items = conn.execute(
            sa.select(work_items.c.relation_id, work_items.c.fact_ids).where(work_items.c.run_id == run_id)
        ).all()
    trip = defaultdict(list)
    for s in scores:
        trip[s.prompt_id].append((s.layer, s.neuron, s.score))
    per_fact = defaultdict(list)
    for prompt_id, fact_id in sorted(ok):
        per_fact[fact_id].append(coarse_from_triplets(trip[prompt_id]))
    import json

    out: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for rel, ids in items:
        for f in json.loads(ids):
            out[rel][f] = per_fact.get(f, [])
    return out


def test_knowledge_neurons_are_refine_of_stored_coarse_sets(indexed) -> None:
    store, summary = indexed
    rid = summary.run.id
    expected, thresholds = set(), {}
    for rel, facts in _stored_coarse(store, rid).items():
        ids = sorted(facts)
        res = refine.refine_tallies([refine.tally(facts[f]) for f in ids])
        thresholds[rel] = (pytest.approx(res.p), pytest.approx(res.mean_neurons), len(ids))
        expected |= {(f, n.layer, n.neuron, n.n_prompts) for f, ns in zip(ids, res.facts) for n in ns}
    with store.begin() as conn:
        got = {
            (r.fact_id, r.layer, r.neuron, r.n_prompts)
            for r in conn.execute(sa.select(knowledge_neurons).where(knowledge_neurons.c.run_id == rid))
        }
        th = {
            r.relation_id: (r.p, r.mean_neurons, r.n_facts)
            for r in conn.execute(sa.select(relation_thresholds).where(relation_thresholds.c.run_id == rid))
        }
    assert got == expected and len(got) > 0
    assert th == thresholds


def test_stored_scores_keep_every_coarse_neuron_despite_the_cap(indexed) -> None:
    store, summary = indexed
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(prompt_scores.c.prompt_id, prompt_scores.c.score, prompt_outputs.c.max_score)
            .join(
                prompt_outputs,
                sa.and_(
                    prompt_outputs.c.prompt_id == prompt_scores.c.prompt_id,
                    prompt_outputs.c.run_id == prompt_scores.c.run_id,
                ),
            )
            .where(prompt_scores.c.run_id == summary.run.id)
        ).all()
    per_prompt = defaultdict(list)
    for pid, score, mx in rows:
        assert score >= 0.1 * mx - 1e-12
        per_prompt[pid].append((score, mx))
    for vals in per_prompt.values():
        mx = vals[0][1]
        assert max(s for s, _ in vals) == mx  # the max itself is stored
        n_coarse = sum(s >= 0.2 * mx for s, _ in vals)
        assert len(vals) <= max(5, n_coarse)  # the cap (5) never cuts coarse ones


def test_second_call_is_a_no_op_and_models_table_is_filled(indexed, model_dir: Path) -> None:
    store, summary = indexed
    before = run_rows(store, summary.run.id)
    again = index(store, _opts(model_dir, score_cap=5))
    assert again.run.id == summary.run.id and not again.created and again.timings.items == 0
    assert run_rows(store, summary.run.id) == before
    with store.begin() as conn:
        model = conn.execute(sa.text("SELECT name, architecture, n_layers, n_neurons, sha256 FROM models")).one()
        stats = conn.execute(sa.select(runs.c.stats).where(runs.c.id == summary.run.id)).scalar_one()
    assert model[:4] == ("tiny-llama", "LlamaForCausalLM", 3, 48) and len(model.sha256) == 64
    import json

    st = json.loads(stats)
    assert st["sessions"] == 1 and st["prompts"] == summary.counts.prompts and st["model_s"] > 0 and st["db_s"] > 0


def test_batched_sparse_selection_matches_the_per_prompt_rule() -> None:
    import numpy as np
    import torch

    from indexer.attribution.sparse import sparse_rows

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 3, 40)).astype(np.float32)
    scores[2] = -np.abs(scores[2])  # a prompt whose max is negative stores nothing
    scores[3, 0, :30] = scores[3].max() * 0.5  # 30 coarse neurons tied: more than the cap
    for p, ratio in ((4, refine.SPARSE_RATIO), (5, refine.COARSE_T)):  # scores one ulp around the thresholds
        top = np.float32(5.0)  # a max whose threshold (float64) rounds DOWN to float32: the hard case
        while np.float64(np.float32(ratio * np.float64(top))) >= ratio * np.float64(top):
            top = np.nextafter(top, np.float32(9))
        scores[p, 0, 0] = top
        edge = np.float32(ratio * np.float64(top))
        scores[p, 1, :3] = [np.nextafter(edge, np.float32(-9)), edge, np.nextafter(edge, np.float32(9))]
    for cap in (4, 1000):
        pi, layer, neuron, value = sparse_rows(torch.from_numpy(scores), cap=cap)
        for p in range(6):
            mine = [(int(l), int(n), float(v)) for q, l, n, v in zip(pi, layer, neuron, value) if q == p]
            n_coarse = len(refine.coarse_neurons(scores[p]))
            assert mine == sparse_scores(scores[p], cap=max(cap, n_coarse))
        assert (pi == 2).sum() == 0 and (pi == 3).sum() >= 30
        assert (np.diff(pi) >= 0).all()  # prompt-major


class _SlowAttributor:
    """The real attributor, slowed down: each item takes longer than a lease (a slow CPU)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.causal, self.opts, self.cfg = inner, delay, inner.causal, inner.opts, inner.cfg
        self.lm = inner.lm

    def compute(self, item, rows):
        import time

        time.sleep(self.delay)
        return self.inner.compute(item, rows)


@pytest.mark.parametrize("backend", ["duckdb"], indirect=True)
def test_items_claimed_ahead_keep_their_lease_and_are_attributed_once(store: Store, model_dir: Path) -> None:
    from atlas.db.runs import RunSpec, open_run
    from atlas.db.workqueue import WorkQueue
    from indexer.job.attributor import Attributor, load_for_index, model_info, result_params
    from indexer.job.loop import Timings, run_loop
    from indexer.job.pool import LocalPool

    load_world(store)
    opts = _opts(model_dir, relations=("P103",), lease_s=2)
    lm = load_for_index(opts.model, "cpu")
    run, _ = open_run(store, RunSpec(model_info(lm), DATASET, ("P103",), None, True, result_params(opts)), None, 1)
    pool = LocalPool(_SlowAttributor(Attributor(lm, opts), 2.5))
    try:
        run_loop(store, WorkQueue(store, run.id, lease_s=2), pool, True, Timings())
    finally:
        pool.close()
    with store.begin() as conn:
        attempts = conn.execute(
            sa.select(work_items.c.attempts, work_items.c.status).where(work_items.c.run_id == run.id)
        ).all()
    assert sorted(attempts) == [(1, "done")] * 4


def test_worker_processes_write_what_the_in_process_run_writes(store: Store, model_dir: Path) -> None:
    """`--workers 2`: two model processes fed by this one (the GPU layout, here on the CPU) give
    exactly the rows of the single in-process run, on both backends."""
    import os

    from tests.support.index_world import assert_same_rows, run_rows, torch_threads

    load_world(store)
    with torch_threads(max(1, (os.cpu_count() or 1) // 2)):  # each of 2 workers gets half the cores
        one = index(store, _opts(model_dir, run_name="one"))
    two = index(store, _opts(model_dir, run_name="two", workers=2))
    assert one.workers == 1 and two.workers == 2 and two.run.status == "done"
    assert two.timings.prompts == one.timings.prompts == two.counts.prompts and two.timings.model_s > 0
    assert_same_rows(run_rows(store, one.run.id), run_rows(store, two.run.id))


def test_database_tally_equals_the_python_tally_at_the_threshold_edge(indexed) -> None:
    """`relation_tallies` (the database's GROUP BY) against `refine.tally` of the coarse sets rebuilt
    in Python, after planting scores one float32 step below, at and above 0.2 x a prompt's max."""
    import numpy as np

    from atlas.db.results import relation_tallies
    from atlas.db.schema import facts

    def want_edge(values, top):  # the rule itself, in float64 as refine applies it
        return [(0, 1001 + i) for i, v in enumerate(values) if float(v) >= refine.COARSE_T * float(np.float32(top))]

    store, summary = indexed
    rid = summary.run.id
    with store.begin() as conn:
        pid, top, fact = conn.execute(
            sa.select(prompt_outputs.c.prompt_id, prompt_outputs.c.max_score, prompts.c.fact_id)
            .join(prompts, prompts.c.id == prompt_outputs.c.prompt_id)
            .join(facts, facts.c.id == prompts.c.fact_id)
            .where(
                prompt_outputs.c.run_id == rid,
                prompt_outputs.c.status == "ok",
                prompt_outputs.c.max_score > 0,
                facts.c.relation_id == "P36",
            )
            .order_by(prompt_outputs.c.prompt_id)
        ).first()
        edge = np.float32(refine.COARSE_T * np.float64(np.float32(top)))
        planted = [np.nextafter(edge, np.float32(-1)), edge, np.nextafter(edge, np.float32(1e9))]
        store.bulk_insert(
            conn,
            prompt_scores,
            {
                "run_id": [rid] * 3,
                "prompt_id": [pid] * 3,
                "layer": [0] * 3,
                "neuron": [1001, 1002, 1003],
                "score": [float(v) for v in planted],
            },
        )
    expected = _stored_coarse(store, rid)["P36"]
    got = relation_tallies(store, rid, "P36", refine.COARSE_T)
    assert sorted(got) == sorted(f for f, prompts_ in expected.items() if prompts_)
    for fact_id, t in got.items():
        ref = refine.tally(expected[fact_id])
        assert t.n_prompts == ref.n_prompts
        mine = {(int(l), int(n)): (int(c), float(s)) for l, n, c, s in zip(t.layers, t.neurons, t.counts, t.sums)}
        want = {
            (int(l), int(n)): (int(c), float(s)) for l, n, c, s in zip(ref.layers, ref.neurons, ref.counts, ref.sums)
        }
        assert mine.keys() == want.keys()
        assert all(mine[k][0] == want[k][0] and mine[k][1] == pytest.approx(want[k][1], rel=1e-12) for k in mine)
    planted_coarse = {(int(l), int(n)) for l, n in zip(got[fact].layers, got[fact].neurons)} & {
        (0, 1001),
        (0, 1002),
        (0, 1003),
    }
    assert (
        (0, 1003) in planted_coarse
        and (0, 1001) not in planted_coarse
        and planted_coarse == set(want_edge(planted, top))
    )


def test_a_run_of_bf16_weights_is_reloaded_in_bf16_by_the_jobs(store: Store, model_dir: Path) -> None:
    """A GPU run at bf16 records its weights' dtype; probes, edits and audits load those bytes (an
    fp32 load would not hash to the run's model)."""
    import torch

    from atlas.db.runs import RunSpec, open_run
    from atlas.jobs.weights import check_weights, resolve_model
    from indexer.job.attributor import load_for_index, model_info, result_params

    load_world(store)
    opts = _opts(model_dir, relations=("P103",), device="cuda", precision="bf16")  # what a GPU run records
    lm = load_for_index(opts.model, "cpu", torch.bfloat16)
    run, _ = open_run(store, RunSpec(model_info(lm), DATASET, ("P103",), None, True, result_params(opts)), None, 1)
    assert run.weights == "bf16"
    again = resolve_model(store, None, run)
    assert {p.dtype for p in again.model.parameters()} == {torch.bfloat16}
    check_weights(again, run)  # the same bytes
    named = resolve_model(store, str(model_dir), run.id)
    assert named.sha256 == lm.sha256  # a model named by the user loads in the run's dtype too
