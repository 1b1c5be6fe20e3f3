"""The fast IG engine against the slow reference (tests/ig_reference.py) and EleutherAI's tool."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from atlas.model.adapters import adapter_for
from indexer.attribution.ig import IGConfig, PromptItem, alphas, attribute
from tests.support.ig_reference import reference_attribute
from tests.support.tiny_hf import TINY_FAMILIES, tiny_model

MASK = 99
DECODER_ITEMS = [PromptItem([5, 7, 9, 4], [11]), PromptItem([3, 8], [12, 40, 7]), PromptItem([42], [17])]
MASKED_ITEMS = [PromptItem([2, 5, 7, MASK, 8, 3], [11]), PromptItem([2, 9, MASK, MASK, 4, 6, 7, 3], [12, 40])]


def rel_err(fast: torch.Tensor, ref: torch.Tensor) -> float:
    return float((fast - ref).norm() / ref.norm())


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """The reference needs no weight gradients; freezing only makes it faster."""
    for p in model.parameters():
        p.requires_grad_(False)
    yield


def test_alphas() -> None:
    assert alphas(4, "left").tolist() == [0.0, 0.25, 0.5, 0.75]
    assert alphas(3, "eleuther").tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("rule", ["left", "eleuther"])
def test_fast_matches_reference(family: str, rule: str) -> None:
    model = tiny_model(family, seed=3)
    ad = adapter_for(model)
    items = MASKED_ITEMS if ad.is_masked_lm else DECODER_ITEMS
    for answer in ("joint", "first"):
        cfg = IGConfig(steps=4, rule=rule, answer=answer, batch_size=3, mask_token_id=MASK)
        fast = attribute(model, ad, items, cfg)
        with frozen(model):
            for item, res in zip(items, fast):
                ref, p0, rank = reference_attribute(model, ad, item, 4, rule, answer, MASK)
                assert res.scores.shape == (ad.n_layers, ad.n_neurons) and res.scores.dtype == torch.float32
                assert rel_err(res.scores, ref) < 1e-4, (family, rule, answer, item)
                assert res.p_gold == pytest.approx(p0, rel=1e-4) and res.gold_rank == rank


def test_batching_and_order_do_not_change_results() -> None:
    model = tiny_model("llama", seed=5)
    ad = adapter_for(model)
    one_by_one = [attribute(model, ad, [it], IGConfig(steps=4))[0] for it in DECODER_ITEMS]
    batched = attribute(model, ad, DECODER_ITEMS, IGConfig(steps=4, batch_size=4))
    for a, b in zip(one_by_one, batched):
        assert rel_err(b.scores, a.scores) < 1e-5 and b.p_gold == pytest.approx(a.p_gold, rel=1e-5)


def test_left_rule_approaches_probability_gain() -> None:
    """Completeness: with many steps, a layer's scores sum to P(alpha=1) - P(alpha=0)."""
    model = tiny_model("gpt2", seed=2)
    ad = adapter_for(model)
    item = DECODER_ITEMS[0]
    res = attribute(model, ad, [item], IGConfig(steps=400))[0]
    with frozen(model):
        ref = reference_attribute(model, ad, item, steps=1, layers=[1])  # alpha = 0 only
    p_zero = _prob_with_layer_zeroed(model, ad, item, layer=1)
    assert float(res.scores[1].sum()) == pytest.approx(res.p_gold - p_zero, rel=2e-2)
    assert ref[1] == pytest.approx(res.p_gold, rel=1e-5)


def _prob_with_layer_zeroed(model, ad, item, layer: int) -> float:
    pos = len(item.prompt_ids) - 1

    def zero(m, args):
        x = args[0].clone()
        x[0, pos] = 0
        return (x,)

    h = ad.ffn_out(layer).register_forward_pre_hook(zero)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item.prompt_ids])).logits[0, pos]
    h.remove()
    return float(torch.softmax(logits, -1)[item.answer_ids[0]])


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox", "bert"])
def test_bf16_is_close_and_keeps_the_clean_run_exact(family: str) -> None:
    """bf16 rounds the scaled pass only (a bf16 copy of the weights for decoders, autocast for
    masked LMs): scores move by ~0.5% (more than fp32 rounding, so bf16 really ran), P(gold) and
    the rank come from the fp32 clean run."""
    model = tiny_model(family, seed=3)
    ad = adapter_for(model)
    items = MASKED_ITEMS if ad.is_masked_lm else DECODER_ITEMS
    fp32 = attribute(model, ad, items, IGConfig(steps=8, mask_token_id=MASK))
    bf16 = attribute(model, ad, items, IGConfig(steps=8, dtype=torch.bfloat16, mask_token_id=MASK))
    assert next(model.parameters()).dtype == torch.float32
    for a, b in zip(fp32, bf16):
        assert 1e-4 < rel_err(b.scores, a.scores) < 3e-2 and b.scores.dtype == torch.float32
        assert b.p_gold == a.p_gold and b.gold_rank == a.gold_rank


def test_bf16_copy_follows_weight_edits() -> None:
    """The bf16 weight copy is remade when the model's weights change (an edit of value slots),
    so a bf16 attribution after an edit equals one on a model that had the edit all along."""
    model = tiny_model("llama", seed=3)
    ad = adapter_for(model)
    cfg = IGConfig(steps=8, dtype=torch.bfloat16)
    before = attribute(model, ad, DECODER_ITEMS, cfg)
    ad.set_value_slots(1, [0, 1, 2], torch.zeros(3, ad.hidden_size))
    after = attribute(model, ad, DECODER_ITEMS, cfg)
    fresh = copy.deepcopy(model)
    expect = attribute(fresh, adapter_for(fresh), DECODER_ITEMS, cfg)
    for b, a, e in zip(before, after, expect):
        assert torch.equal(a.scores, e.scores) and not torch.equal(a.scores, b.scores)


def test_masked_lm_needs_mask_id_and_matching_masks() -> None:
    model = tiny_model("bert")
    ad = adapter_for(model)
    with pytest.raises(ValueError, match="mask_token_id"):
        attribute(model, ad, MASKED_ITEMS, IGConfig(steps=2))
    with pytest.raises(ValueError, match="mask tokens"):
        attribute(model, ad, [PromptItem([2, MASK, 3], [4, 5])], IGConfig(steps=2, mask_token_id=MASK))


def test_matches_eleuther_knowledge_neurons_on_bert(tmp_path) -> None:
    """EleutherAI's rule on a random BERT equals `knowledge-neurons==0.0.2` get_scores.

    No patching of their package was needed: it runs as published with transformers 5 (it needs
    `einops`). Their tokenizer is a BertTokenizer built from a throw-away vocabulary file.
    """
    kn = pytest.importorskip("knowledge_neurons")
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(96)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    model = tiny_model("bert", seed=7)
    prompt, gold = "w3 w17 [MASK] w40 w9", "w22"
    theirs = kn.KnowledgeNeurons(model, tok, model_type="bert", device="cpu").get_scores(
        prompt, gold, batch_size=10, steps=20, pbar=False
    )
    ad = adapter_for(model)
    item = PromptItem(tok(prompt).input_ids, [tok.convert_tokens_to_ids(gold)])
    ours = attribute(model, ad, [item], IGConfig(steps=20, rule="eleuther", mask_token_id=tok.mask_token_id))[0]
    assert rel_err(ours.scores, theirs.detach().float()) < 1e-4


# --- the real model ------------------------------------------------------------------------------


def test_passes_are_balanced_and_shrink_with_answer_length() -> None:
    """Each index once, in order; one answer length per pass; equal passes of at most
    batch_size // T prompts."""
    from indexer.attribution.ig import passes as _passes

    lens = [1] * 130 + [2] * 5 + [3] * 70
    passes = _passes(list(range(len(lens))), lens, 128)
    assert [i for p in passes for i in p] == list(range(len(lens)))
    assert [len(p) for p in passes] == [65, 65, 5, 35, 35]  # 128 // 3 = 42 per pass at T = 3
    assert all(len({lens[i] for i in p}) == 1 and len(p) <= 128 // lens[p[0]] for p in passes)
    assert _passes([0, 1], [9, 9], 4) == [[0], [1]]  # batch_size // T < 1 still makes progress


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_layer_range_scores_those_layers_exactly_and_no_others(family: str) -> None:
    """`IGConfig.layers` (`atlas index --layers`): within the range the scores are the slow
    reference's, outside it exactly 0; P(gold) and rank are the whole model's."""
    model = tiny_model(family, seed=3)
    ad = adapter_for(model)
    items = MASKED_ITEMS if ad.is_masked_lm else DECODER_ITEMS
    for lo, hi in ((1, 1), (1, ad.n_layers - 1), (0, 0)):
        res = attribute(model, ad, items, IGConfig(steps=4, batch_size=3, mask_token_id=MASK, layers=(lo, hi)))
        with frozen(model):
            for item, r in zip(items, res):
                ref, p0, rank = reference_attribute(model, ad, item, 4, "left", "joint", MASK)
                inside = slice(lo, hi + 1)
                assert rel_err(r.scores[inside], ref[inside]) < 1e-4, (family, lo, hi)
                outside = torch.ones(ad.n_layers, dtype=torch.bool)
                outside[inside] = False
                assert torch.count_nonzero(r.scores[outside]) == 0
                assert r.p_gold == pytest.approx(p0, rel=1e-4) and r.gold_rank == rank
    with pytest.raises(ValueError, match="the model has layers"):
        attribute(model, ad, items, IGConfig(steps=2, mask_token_id=MASK, layers=(0, ad.n_layers)))
    with pytest.raises(ValueError, match="0 <= lo <= hi"):
        IGConfig(layers=(2, 1))
