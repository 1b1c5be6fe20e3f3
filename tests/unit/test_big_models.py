"""Big-model mechanics on CPU stand-ins: weights loaded in bf16 with no fp32 master, the streamed
and cached weight hash, the measured pass size's arithmetic, and the out-of-memory fallback that
halves a pass and goes on (a GPU's out-of-memory error is raised by a stand-in engine)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

import indexer.job.attributor as attributor_mod
from atlas.db.workqueue import WorkItem
from atlas.errors import ModelError
from atlas.model import loading
from atlas.model.loading import load_model, weights_sha256
from indexer.attribution.memory import PassMemory
from indexer.job.attributor import Attributor, load_for_index, result_params, weights_dtype
from indexer.job.options import IndexOptions
from tests.support.tiny_hf import save_tiny

ROWS = [
    (1, "The mother tongue of Alice Liddell is [Y] .", "English"),
    (2, "Alice Liddell spoke [Y] .", "English"),
    (3, "The capital of France is [Y] .", "Paris"),
    (4, "Paris is the capital of [Y] .", "France"),
    (5, "Rome is in [Y] .", "Italy"),
]
ITEM = WorkItem(run_id=1, item_id=1, relation_id="P1", fact_ids=("f",), attempts=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("big") / "llama")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))


def _plain_sha(model: torch.nn.Module) -> str:
    """The slow reference: the whole state dict on the host, hashed in one loop."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_bf16_load_keeps_no_fp32_master_and_is_its_own_model(tiny: Path) -> None:
    full = load_for_index(str(tiny), "cpu")
    low = load_for_index(str(tiny), "cpu", torch.bfloat16)
    assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    assert low.sha256 == _plain_sha(low.model) != full.sha256 == _plain_sha(full.model)


def test_the_streamed_hash_equals_the_plain_one(tiny: Path) -> None:
    lm = load_model(str(tiny))
    assert weights_sha256(lm.model) == _plain_sha(lm.model)


def test_the_hash_is_cached_per_directory_dtype_and_file_version(tiny: Path, monkeypatch) -> None:
    first = load_model(str(tiny)).sha256
    calls = []
    monkeypatch.setattr(loading, "weights_sha256", lambda m: calls.append(m) or _plain_sha(m))
    assert load_model(str(tiny)).sha256 == first and calls == []  # read back, not hashed
    load_model(str(tiny), dtype=torch.bfloat16)
    assert len(calls) == 1  # another dtype is hashed once
    weights = next(tiny.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the files changed: hash again
    assert load_model(str(tiny)).sha256 == first and len(calls) == 2


def test_gpu_runs_at_low_precision_load_those_weights_and_record_them(tiny: Path) -> None:
    def opts(**kw) -> IndexOptions:
        return IndexOptions(model=str(tiny), dataset="d", **kw)

    assert weights_dtype(opts(device="cuda", precision="bf16")) == torch.bfloat16
    assert weights_dtype(opts(device="cuda", precision="fp16")) == torch.float16
    assert weights_dtype(opts(device="cpu", precision="bf16")) == torch.float32  # a CPU keeps the master
    assert weights_dtype(opts(device="cuda")) == torch.float32
    assert result_params(opts(device="cuda", precision="bf16"))["weights"] == "bf16"
    assert "weights" not in result_params(opts(device="cpu", precision="bf16"))
    assert "weights" not in result_params(opts(device="cuda"))


def test_bf16_weights_attribute_close_to_fp32_with_fp32_probabilities(tiny: Path) -> None:
    opts = IndexOptions(model=str(tiny), dataset="d", batch_size=8)
    full = Attributor(load_for_index(str(tiny), "cpu"), opts).compute(ITEM, ROWS)
    low = Attributor(load_for_index(str(tiny), "cpu", torch.bfloat16), opts).compute(ITEM, ROWS)
    for a, b in zip(full.outputs, low.outputs):
        assert a.status == b.status == "ok" and abs(a.gold_rank - b.gold_rank) <= 3  # a random model's near ties
        assert b.p_gold == pytest.approx(a.p_gold, rel=0.05) and b.max_score == pytest.approx(a.max_score, rel=0.05)
    assert isinstance(low.outputs[0].p_gold, float)


@pytest.mark.parametrize(
    "free, expected",
    [(200e9, 512), (1e9, 4), (0.1e9, 1)],  # capped, what fits, at least one
)
def test_a_measured_pass_takes_what_fits(free: float, expected: int) -> None:
    mem = PassMemory(fixed=100e6, per_prompt=200e6, free=free)
    assert mem.prompts(share=0.9, cap=512) == expected
    assert PassMemory(fixed=0, per_prompt=1e6, free=1e9).prompts(share=0.5, cap=1000) == 500


def _oom_above(limit: int, real):
    """A stand-in engine: passes of more than `limit` prompts fail as a full GPU fails."""
    seen: list[int] = []

    def engine(model, adapter, items, cfg):
        seen.append(cfg.batch_size)
        if min(cfg.batch_size, len(items)) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return real(model, adapter, items, cfg)

    return engine, seen


def test_out_of_memory_halves_the_pass_and_gives_the_same_results(tiny: Path, monkeypatch) -> None:
    lm = load_for_index(str(tiny), "cpu")
    expected = Attributor(lm, IndexOptions(model=str(tiny), dataset="d", batch_size=1)).compute(ITEM, ROWS)
    engine, seen = _oom_above(2, attributor_mod.attribute_stacked)
    monkeypatch.setattr(attributor_mod, "attribute_stacked", engine)
    att = Attributor(lm, IndexOptions(model=str(tiny), dataset="d", batch_size=8))
    got = att.compute(ITEM, ROWS)
    assert seen == [8, 4, 2] and att.cfg.batch_size == 2
    assert [(o.status, o.gold_rank) for o in got.outputs] == [(o.status, o.gold_rank) for o in expected.outputs]
    assert [o.p_gold for o in got.outputs] == pytest.approx([o.p_gold for o in expected.outputs], abs=1e-6)
    assert got.score_value == pytest.approx(expected.score_value, abs=1e-6)
    att.compute(ITEM, ROWS)
    assert seen[3:] == [2]  # the smaller pass is kept


def test_out_of_memory_at_one_prompt_is_one_line(tiny: Path, monkeypatch) -> None:
    engine, _ = _oom_above(0, attributor_mod.attribute_stacked)
    monkeypatch.setattr(attributor_mod, "attribute_stacked", engine)
    att = Attributor(load_for_index(str(tiny), "cpu"), IndexOptions(model=str(tiny), dataset="d", batch_size=2))
    with pytest.raises(ModelError, match=r"^model llama: one prompt per pass does not fit in the device's memory$"):
        att.compute(ITEM, ROWS)
