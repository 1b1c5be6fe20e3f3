"""Teacher-forced scoring of prompts, with or without an intervention (model access, torch only).

Everything the probe, the edit metrics and the audit measure reduces to one forward pass per
batch of prompts: the input is `prompt + answer[:-1]`, the answer position is the last prompt
token (where interventions act, as in the attribution), and for each gold answer token we read
its log-probability and whether it is the argmax. P(gold) is the joint probability of the answer
(teacher forcing), the same quantity the indexer attributes by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from atlas.model.encode import PromptItem, encode_causal
from atlas.model.interventions import ScaleNeurons, applied

Y_SLOT = "[Y]"


@dataclass(frozen=True)
class Scored:
    """One prompt's outcome: joint P(gold), per-token log-probs, and greedy exact match."""

    p_gold: float
    logprobs: tuple[float, ...]
    greedy: bool  # the argmax at every answer position is the gold token (= greedy decoding gives it)
    top1: int  # the argmax token at the answer position


def encode(tokenizer, text: str, answer: str) -> PromptItem | str:
    """Token ids of a causal prompt (`... [Y]`) and its answer, or the reason it cannot be encoded.

    Delegates to the indexer's encoder so that interventions score exactly the ids that were
    attributed.
    """
    if Y_SLOT not in text:
        return f"prompt {text!r} has no {Y_SLOT} slot"
    enc = encode_causal(tokenizer, text.split(Y_SLOT, 1)[0].rstrip(), answer)
    return enc


def single_token_id(tokenizer, text: str) -> int:
    """The one token id of `text` as an answer (with its leading space); error if it is not one token."""
    ids = list(tokenizer(" " + text, add_special_tokens=False).input_ids)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer; a single token is needed")
    if ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"{text!r} is not in the tokenizer's vocabulary")
    return ids[0]


@torch.no_grad()
def score(
    model, adapter, items: Sequence[PromptItem], intervention: ScaleNeurons | None = None, batch_size: int = 32
) -> list[Scored]:
    """Score `items` (decoder models), optionally with `intervention` at each answer position."""
    if getattr(adapter, "is_masked_lm", False):
        raise NotImplementedError("interventions are implemented for left-to-right models only")
    dev = next(model.parameters()).device
    out: list[Scored | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt_ids) + len(items[i].answer_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [list(items[i].prompt_ids) + list(items[i].answer_ids[:-1]) for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):  # right padding keeps every real token at its true position
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        answer_pos = torch.tensor([len(items[i].prompt_ids) - 1 for i in chunk])
        with applied(adapter, intervention, answer_pos):
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for r, i in enumerate(chunk):
            p0 = int(answer_pos[r])
            ans = list(items[i].answer_ids)
            rows = logp[r, p0 : p0 + len(ans)]
            lps = rows[torch.arange(len(ans)), torch.tensor(ans)]
            greedy = bool((rows.argmax(-1) == torch.tensor(ans)).all())
            out[i] = Scored(
                p_gold=float(lps.sum().exp()),
                logprobs=tuple(float(x) for x in lps),
                greedy=greedy,
                top1=int(rows[0].argmax()),
            )
    return out  # type: ignore[return-value]
