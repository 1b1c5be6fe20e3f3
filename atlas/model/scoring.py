"""Scoring prompts: P(gold), per-token log-probabilities and greedy match, with or without an
intervention (model access, torch only).

Everything the probe, the edit metrics and the audit measure reduces to one forward pass per batch:

* left-to-right models read `prompt + answer[:-1]` (teacher forcing); answer token j is predicted
  at position `len(prompt) - 1 + j`, and interventions act at the last prompt token;
* masked LMs read the prompt with one mask per answer token; token j is predicted at mask j, and
  interventions act at the first mask.

Both are the positions the attribution scaled, so a probe or an edit is measured where the atlas
found its neurons. P(gold) is the joint probability of the answer, the quantity the indexer
attributes by default. With `candidates` (token ids, e.g. the first tokens of every object of a
relation) a prompt also says whether its gold first token beats all of them: "top-1 among the
relation's answers", which does not depend on how well a template fits the model's style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem, encode_causal, encode_masked
from atlas.model.interventions import ScaleNeurons, applied

Y_SLOT = "[Y]"


@dataclass(frozen=True)
class Scored:
    """One prompt's outcome on one model state."""

    p_gold: float  # joint P(gold answer)
    logprobs: tuple[float, ...]  # log P of each gold answer token
    greedy: bool  # the argmax at every answer position is the gold token (= greedy decoding gives it)
    top1: int  # the argmax token at the first answer position
    candidate_top1: bool | None = None  # the gold first token beats every candidate (None: no candidates)

    @property
    def nll(self) -> float:
        """-log P(gold answer)."""
        return -sum(self.logprobs)


def encode(tokenizer, text: str, answer: str, masked: bool = False) -> PromptItem | str:
    """Token ids of a prompt with its `[Y]` slot and answer, or the reason it cannot be encoded.

    The indexer's own encoders, so that interventions score exactly the ids that were attributed.
    """
    if Y_SLOT not in text:
        return f"prompt {text!r} has no {Y_SLOT} slot"
    if masked:
        return encode_masked(tokenizer, text, answer)
    return encode_causal(tokenizer, text.split(Y_SLOT, 1)[0].rstrip(), answer)


def single_token_id(tokenizer, text: str) -> int:
    """The one token id of `text` as an answer (with its leading space); error if it is not one token."""
    ids = list(tokenizer(" " + text, add_special_tokens=False).input_ids)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer; a single token is needed")
    if ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"{text!r} is not in the tokenizer's vocabulary")
    return ids[0]


@dataclass
class AnswerBatch:
    ids: Tensor  # [B, S]
    attn: Tensor  # [B, S]
    pred: Tensor  # [B, T] where answer token j is predicted (padded with 0)
    gold: Tensor  # [B, T]
    valid: Tensor  # [B, T] bool
    act: Tensor  # [B] where interventions act


def answer_batch(items: Sequence[PromptItem], masked: bool, mask_id: int | None) -> AnswerBatch:
    seqs = [list(it.prompt_ids) if masked else list(it.prompt_ids) + list(it.answer_ids[:-1]) for it in items]
    width, T = max(len(s) for s in seqs), max(len(it.answer_ids) for it in items)
    b = AnswerBatch(
        *(torch.zeros(len(items), n, dtype=torch.long) for n in (width, width, T, T)),
        torch.zeros(len(items), T, dtype=torch.bool),
        torch.zeros(len(items), dtype=torch.long),
    )
    for r, (s, it) in enumerate(zip(seqs, items)):  # right padding keeps every real token at its true position
        b.ids[r, : len(s)], b.attn[r, : len(s)] = torch.tensor(s), 1
        n = len(it.answer_ids)
        if masked:
            pos = [i for i, t in enumerate(it.prompt_ids) if t == mask_id]
            if len(pos) != n:
                raise ValueError(f"prompt has {len(pos)} mask tokens for {n} answer tokens")
        else:
            pos = list(range(len(it.prompt_ids) - 1, len(it.prompt_ids) - 1 + n))
        b.pred[r, :n], b.gold[r, :n], b.valid[r, :n], b.act[r] = (
            torch.tensor(pos),
            torch.tensor(it.answer_ids),
            True,
            pos[0],
        )
    return b


def answer_logprobs(model: nn.Module, adapter: Adapter, b: AnswerBatch, **inputs: Tensor) -> Tensor:
    """The model on batch `b` (`inputs`: its `input_ids`, or `inputs_embeds` for a caller that needs
    gradients) -> log-softmax `[B, T, V]` (fp32) at the positions that predict each answer token."""
    dev = next(iter(inputs.values())).device
    extra = {"token_type_ids": torch.zeros_like(b.ids).to(dev)} if adapter.is_masked_lm else {}
    logits = model(attention_mask=b.attn.to(dev), **inputs, **extra).logits
    rows = logits.gather(1, b.pred.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])).float()
    return torch.log_softmax(rows, dim=-1)


@torch.no_grad()
def score(
    model: nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    intervention: ScaleNeurons | None = None,
    batch_size: int = 32,
    candidates: Sequence[Tensor | None] | None = None,
) -> list[Scored]:
    """Score `items`, optionally with `intervention` at each answer position (see the module docstring).

    `candidates[i]` (token ids) makes item i report `candidate_top1`."""
    dev = next(model.parameters()).device
    out: list[Scored | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt_ids) + len(items[i].answer_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        b = answer_batch([items[i] for i in chunk], adapter.is_masked_lm, adapter.mask_token_id)
        with applied(adapter, intervention, b.act):
            logp = answer_logprobs(model, adapter, b, input_ids=b.ids.to(dev)).cpu()
        for r, i in enumerate(chunk):
            n = int(b.valid[r].sum())
            lps = logp[r, torch.arange(n), b.gold[r, :n]]
            cand = candidates[i] if candidates is not None else None
            out[i] = Scored(
                p_gold=float(lps.sum().exp()),
                logprobs=tuple(float(x) for x in lps),
                greedy=bool((logp[r, :n].argmax(-1) == b.gold[r, :n]).all()),
                top1=int(logp[r, 0].argmax()),
                candidate_top1=None if cand is None else bool(logp[r, 0, b.gold[r, 0]] >= logp[r, 0, cand].max()),
            )
    return out  # type: ignore[return-value]


@torch.no_grad()
def text_nll(model: nn.Module, tokenizer, text: str, chunk: int = 256) -> tuple[float, int]:
    """Summed negative log-likelihood of `text`'s tokens and their count, read in chunks of `chunk`
    tokens (left-to-right models; the first token of each chunk is not predicted)."""
    dev = next(model.parameters()).device
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        part = torch.tensor([ids[start : start + chunk + 1]], device=dev)
        if part.shape[1] < 2:
            break
        logp = torch.log_softmax(model(input_ids=part).logits[0, :-1].float(), dim=-1)
        total -= float(logp.gather(1, part[0, 1:, None]).sum())
        count += part.shape[1] - 1
    return total, count
