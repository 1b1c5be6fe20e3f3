"""Gradient sketches against a plain recompute: M_l is the gradient of log P(gold) on the layer's
value-slot weights, so one autograd call per prompt and layer on an unbatched model is the
obviously correct reference; its full SVD gives the triplets the fast path must reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.model.adapters import adapter_for
from atlas.model.encode import PromptItem
from indexer.attribution.sketch import first_order, pack, sketch, top_triplets, unpack
from tests.support.tiny_hf import TINY_FAMILIES, tiny_model

MASK = 99  # as in test_ig: not a special id of any tiny config (RoBERTa counts its pad id 1 out of positions)
DECODER_ITEMS = [PromptItem([5, 7, 9, 4], [11]), PromptItem([3, 8], [12, 40, 7]), PromptItem([42, 6, 6, 9, 30], [17])]
MASKED_ITEMS = [PromptItem([2, 5, 7, MASK, 8, 3], [11]), PromptItem([2, 9, MASK, MASK, 4, 6, 7, 3], [12, 40])]


def gold_logprob_plain(model, ad, item: PromptItem) -> torch.Tensor:
    """log P(gold) of one prompt, joint over its answer tokens, with a plain model call."""
    if ad.is_masked_lm:
        ids = torch.tensor([item.prompt_ids])
        pos = [i for i, t in enumerate(item.prompt_ids) if t == MASK]
        logits = model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0]
    else:
        ids = torch.tensor([item.prompt_ids + item.answer_ids[:-1]])
        pos = list(range(len(item.prompt_ids) - 1, len(item.prompt_ids) - 1 + len(item.answer_ids)))
        logits = model(input_ids=ids).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    return sum(lp[p, a] for p, a in zip(pos, item.answer_ids))


def reference_m(model, ad, item: PromptItem, layer: int) -> torch.Tensor:
    """d log P(gold) / d W_out of `layer`, as `[hidden, neurons]` (one column per value slot)."""
    w = ad.ffn_out(layer).weight
    for p in model.parameters():
        p.requires_grad_(p is w)
    (grad,) = torch.autograd.grad(gold_logprob_plain(model, ad, item), [w])
    return grad if grad.shape == (ad.hidden_size, ad.n_neurons) else grad.T


def rebuild(s: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("r,rh,rn->hn", s, u, w)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_sketch_matches_svd_of_the_weight_gradient(family: str) -> None:
    model = tiny_model(family, seed=5).eval()
    ad = adapter_for(model)
    if ad.is_masked_lm:
        ad.mask_token_id = MASK
    items = MASKED_ITEMS if ad.is_masked_lm else DECODER_ITEMS
    layers = list(range(ad.n_layers))
    fast = sketch(model, ad, items, layers, rank=2)
    for i, item in enumerate(items):
        for j, layer in enumerate(layers):
            ref = reference_m(model, ad, item, layer).double()
            uu, ss, vh = torch.linalg.svd(ref)
            expected = rebuild(ss[:2], uu[:, :2].T, vh[:2])
            got = rebuild(fast.s[i, j].double(), fast.u[i, j].double(), fast.w[i, j].double())
            assert torch.allclose(got, expected, atol=1e-5 * float(ref.abs().max()) + 1e-9), (family, i, layer)
            assert torch.allclose(fast.s[i, j].double(), ss[:2], rtol=1e-4, atol=1e-5 * float(ss[0]) + 1e-12)


def test_full_rank_sketch_predicts_a_small_slot_change() -> None:
    """With rank >= positions the sketch is M itself: sum s u^T dV w is the first-order change of
    log P(gold) for a small value-slot change, which a finite difference measures."""
    model = tiny_model("llama", seed=2).eval()
    ad = adapter_for(model)
    item = DECODER_ITEMS[2]
    sk = sketch(model, ad, [item], [1], rank=16)
    gen = torch.Generator().manual_seed(0)
    dv = 1e-3 * torch.randn(ad.hidden_size, 5, generator=gen)  # 5 slots of layer 1
    cols = [3, 10, 11, 20, 47]
    predicted = float(torch.einsum("r,rh,hk,rk->", sk.s[0, 0], sk.u[0, 0], dv, sk.w[0, 0][:, cols]))
    with torch.no_grad():
        before = float(gold_logprob_plain(model, ad, item))
        ad.set_value_slots(1, cols, ad.value_slots(1)[cols] + dv.T)
        after = float(gold_logprob_plain(model, ad, item))
    assert abs(predicted) > 1e-6
    assert abs((after - before) - predicted) < 0.05 * abs(predicted)


def test_top_triplets_of_a_known_matrix() -> None:
    gen = torch.Generator().manual_seed(1)
    g, a = torch.randn(2, 6, 9, generator=gen), torch.randn(2, 6, 13, generator=gen)
    s, u, w = top_triplets(g, a, 3)
    for b in range(2):
        m = g[b].T @ a[b]
        uu, ss, vh = torch.linalg.svd(m)
        assert torch.allclose(s[b], ss[:3], rtol=1e-5)
        assert torch.allclose(rebuild(s[b], u[b], w[b]), rebuild(ss[:3], uu[:, :3].T, vh[:3]), atol=1e-4)


def test_pack_round_trip() -> None:
    s = np.array([3.5, 0.25], np.float32)
    u, w = np.random.default_rng(0).normal(size=(2, 7)), np.random.default_rng(1).normal(size=(2, 11))
    s2, u2, w2 = unpack(pack(s, u, w))
    assert s2.tolist() == s.tolist()
    assert np.allclose(u2, u, atol=2e-3) and np.allclose(w2, w, atol=2e-3)
    assert u2.shape == (2, 7) and w2.shape == (2, 11)


def test_first_order_equals_the_inner_product_with_the_rebuilt_matrix() -> None:
    """sum_k s_k u_k^T dV w_k[cols] over packed sketches of mixed ranks = <dV, s u w^T> column by column."""
    rng = np.random.default_rng(3)
    cols = np.array([4, 0, 9])
    dv = rng.normal(size=(7, 3)).astype(np.float32)
    blobs, expected = [], []
    for r in (2, 1, 2, 3):
        s, u, w = rng.random(r).astype(np.float32), rng.normal(size=(r, 7)), rng.normal(size=(r, 11))
        blobs.append(pack(s, u, w))
        s2, u2, w2 = unpack(blobs[-1])
        m = np.einsum("r,rh,rn->hn", s2, u2, w2)  # the sketch's matrix [hidden, neurons]
        expected.append(sum(float(m[:, c] @ dv[:, j]) for j, c in enumerate(cols)))
    assert np.allclose(first_order(blobs, cols, dv), expected, rtol=1e-5)
