"""The real SmolLM2 (marked `model`): the fast IG path against the reference, what it knows, and the
README's main job end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from atlas.model.loading import load_model
from indexer.attribution.ig import IGConfig, PromptItem, attribute
from tests.support.cli import atlas
from tests.support.ig_reference import reference_attribute
from tests.unit.test_ig import frozen, rel_err


@pytest.fixture(scope="module")
def smollm2():

    return load_model("smollm2")


@pytest.fixture(scope="module")
def smollm2_f64():
    """fp64 copy: fast vs reference then differ by rounding only (~1e-12), proving exactness.
    In fp32 the two (different summation orders through 30 layers) differ by ~1e-4 relative."""

    lm = load_model("smollm2", dtype=torch.float64)
    return lm


@pytest.mark.model
def test_smollm2_matches_reference(smollm2_f64) -> None:
    """A two-token answer (teacher forcing, joint P) on the first and last layer, fp64."""
    tok, model, ad = smollm2_f64.tokenizer, smollm2_f64.model, smollm2_f64.adapter
    item = PromptItem(tok("The capital city of Japan is").input_ids, tok(" Tokyo Tower").input_ids)
    assert len(item.answer_ids) == 2
    layers = [0, 29]
    fast = attribute(model, ad, [item], IGConfig(steps=2))[0]
    with frozen(model):
        ref, p0, rank = reference_attribute(model, ad, item, steps=2, layers=layers)
    assert rel_err(fast.scores[layers].double(), ref[layers]) < 1e-4
    assert fast.p_gold == pytest.approx(p0, rel=1e-4) and fast.gold_rank == rank


@pytest.mark.model
def test_smollm2_knows_paris(smollm2) -> None:
    tok = smollm2.tokenizer
    res = attribute(
        smollm2.model,
        smollm2.adapter,
        [PromptItem(tok("The capital of France is").input_ids, tok(" Paris").input_ids)],
        IGConfig(),
    )[0]
    assert res.gold_rank == 1 and res.p_gold > 0.5
    assert res.scores.shape == (30, 1536) and float(res.scores.max()) > 0
    bf16 = attribute(
        smollm2.model,
        smollm2.adapter,
        [PromptItem(tok("The capital of France is").input_ids, tok(" Paris").input_ids)],
        IGConfig(dtype=torch.bfloat16),
    )[0]
    top = lambda s: set(s.flatten().topk(20).indices.tolist())  # noqa: E731
    assert bf16.p_gold == res.p_gold and len(top(bf16.scores) & top(res.scores)) >= 16


@pytest.mark.model
def test_demo_builds_a_small_atlas_and_is_rerunnable(tmp_path: Path) -> None:
    """The README's main job end to end on the embedded default (a DuckDB file), on one fact so the
    real SmolLM2 indexes it in seconds; the rerun adds nothing and resumes the finished run."""
    url = f"duckdb:///{tmp_path / 'atlas.duckdb'}"
    args = ("demo", "--db", url, "--relations", "P36", "--facts-per-relation", "1")
    first = atlas(*args)
    assert first.exit_code == 0, first.output
    assert "schema none -> " in first.output
    assert "(1 new facts" in first.output and "atlas now holds 1 relations, 1 facts" in first.output
    assert "indexed run" in first.output and "knowledge neurons" in first.output
    assert re.search(r"the model (knows|does not know) it \(P\(gold\) [0-9.]+, rank 1 on \d+/\d+ prompts", first.output)
    again = atlas(*args)
    assert again.exit_code == 0, again.output
    assert "(0 new facts, 0 new prompts)" in again.output
    neuron_lines = [line for line in first.output.splitlines() if "knowledge neurons" in line and "->" in line]
    assert neuron_lines and all(line in again.output for line in neuron_lines)


@pytest.mark.model
def test_precise_erase_and_audit_on_the_real_model(tmp_path: Path) -> None:
    """A small real run (capitals and continents) with gradient sketches, the default erase of P36
    judged on both relations with its control, its audit, and a rollback back to the base weights."""
    from atlas.db import migrate
    from atlas.db.audits import stored_rows
    from atlas.db.datasets import read_kn_paper
    from atlas.db.facts import load_dataset
    from atlas.db.store import Store
    from atlas.jobs.audit import audit_edit
    from atlas.jobs.erase import erase_relation
    from atlas.jobs.rollback import rollback
    from atlas.jobs.specs import EraseSpec
    from atlas.model.loading import weights_sha256
    from indexer.job.options import IndexOptions
    from indexer.job.run import index

    store = Store(f"duckdb:///{tmp_path / 'atlas.duckdb'}")
    migrate.upgrade(store)
    load_dataset(store, read_kn_paper(["P36", "P30"], 3))
    summary = index(store, IndexOptions(model="smollm2", dataset="kn-paper", run_name="real", sketch_rank=2))
    assert summary.run.status == "done" and summary.counts.neurons > 0
    lm = load_model("smollm2")
    base = weights_sha256(lm.model)
    e = erase_relation(store, lm, "real", "P36", EraseSpec(eval_facts=3, other_facts=3))  # the default: lsq
    assert e.params["form"] == "lsq" and e.params["n_layers"] == 3 and e.n_slots > 1000  # whole layers
    assert all(row["layer"] >= lm.adapter.n_layers // 3 for row in e.params["edited_layers"])
    assert e.metrics["edited"]["n_prompts"] > 0 and set(e.metrics["others"]) == {"P30"}
    assert e.metrics["fluency"]["ppl_before"] > 1 and "control" in e.metrics
    assert e.metrics["edited"]["nll_after"] > e.metrics["edited"]["nll_before"]  # the erased answers lost mass
    audit = audit_edit(store, lm, e.id)
    assert audit.n_targets == 3 and audit.spearman is not None
    assert audit.predictor == "sketch"  # the run kept gradient sketches: predicted from them
    targets = [r for r in stored_rows(store, e.id) if r.role == "target"]
    assert sum(r.predicted_sketch_dp for r in targets) < 0  # the erase is predicted to take P36's answers away
    rollback(store, lm, e.id)
    assert weights_sha256(lm.model) == base


@pytest.mark.model
def test_a_second_conversion_keeps_the_first_directory(tmp_path: Path) -> None:
    """Processes loading SmolLM2 at once may each convert it: the one that finishes later drops
    its copy, so a process already reading the first one (its tokenizer files) is not pulled from
    under (six benchmark processes started together lost one to this)."""
    from atlas.model.loading import convert_smollm2

    dest = tmp_path / "smollm2"
    convert_smollm2(dest)
    (dest / "opened-by-a-reader").write_text("x")
    assert convert_smollm2(dest) == dest and (dest / "opened-by-a-reader").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]  # the second copy is gone
    assert load_model(str(dest)).tokenizer("Paris").input_ids
