"""Turning stored prompts into token ids for attribution, or a reason why that is impossible.

Decoders read the prompt cut before ``[Y]`` (the caller cuts it) and must predict the answer next;
masked LMs read the whole prompt with ``[Y]`` replaced by one mask per answer token. The answer
is tokenised IN CONTEXT: for byte-level BPE (GPT-2, LLaMA-3, SmolLM2) " Paris" and "Paris" are
different tokens, and for SentencePiece tokenizers the leading-space marker appears on its own.
Tokenising the prompt with and without the answer appended and taking the difference gives the
ids the model really has to produce; when the prompt's ids are not a prefix of the joint ids
(a merge across the boundary), the answer is tokenised alone with its leading space.

A prompt that cannot be encoded is never dropped silently: `encode_*` returns its skip reason,
which the indexer stores in ``prompt_outputs.skip_reason``. Reasons are categories (the fact and
prompt are in their own tables), so summaries can count them. No torch, no atlas imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SLOT = "[Y]"


@dataclass(frozen=True)
class PromptItem:
    """Token ids of one prompt and its gold answer: what attribution and scoring take.

    Decoders: the prompt (cut before [Y]) and the answer the model must produce next. Masked LMs:
    the whole prompt with one mask token per answer token (the first mask is the scaled position).
    """

    prompt_ids: list[int]
    answer_ids: list[int]


def _ids(tok: Any, text: str, special: bool) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _answer_in_context(tok: Any, prefix: str, obj: str) -> list[int]:
    sep = " " if prefix and not prefix.endswith(" ") else ""
    pre = _ids(tok, prefix, False)
    joint = _ids(tok, prefix + sep + obj, False)
    if joint[: len(pre)] == pre and len(joint) > len(pre):
        return joint[len(pre) :]
    return _ids(tok, sep + obj, False)


def _check_answer(tok: Any, answer: list[int], obj: str) -> str | None:
    if not obj.strip():
        return "empty answer"
    if not answer:
        return "answer has no tokens"
    unk = getattr(tok, "unk_token_id", None)
    if unk is not None and unk in answer:
        return "answer has a token unknown to the tokenizer"
    return None


def _check_length(n: int, max_len: int | None) -> str | None:
    if max_len is not None and n > max_len:
        return f"prompt and answer do not fit the model ({max_len} tokens)"
    return None


def encode_causal(tok: Any, prefix: str, obj: str, max_len: int | None = None) -> PromptItem | str:
    """Ids for a left-to-right LM: ``prefix`` (the prompt cut before [Y]) then the answer."""
    if not prefix.strip():
        return "empty prompt before the answer slot"
    answer = _answer_in_context(tok, prefix, obj)
    reason = _check_answer(tok, answer, obj)
    if reason:
        return reason
    prompt = _ids(tok, prefix, True)
    # the answer's last token is never fed to the model (teacher forcing stops before it)
    return _check_length(len(prompt) + len(answer) - 1, max_len) or PromptItem(prompt, answer)


def encode_masked(tok: Any, text: str, obj: str, max_len: int | None = None) -> PromptItem | str:
    """Ids for a masked LM: ``text`` with its [Y] slot replaced by one mask per answer token."""
    mask = getattr(tok, "mask_token_id", None)
    if mask is None:
        return "the tokenizer has no mask token"
    if SLOT not in text:
        return "prompt has no [Y] slot"
    left, right = text.split(SLOT, 1)
    answer = _answer_in_context(tok, left.rstrip(), obj) if left.endswith(" ") else _answer_in_context(tok, left, obj)
    reason = _check_answer(tok, answer, obj)
    if reason:
        return reason
    body = _ids(tok, left.rstrip(), False) + [mask] * len(answer) + _ids(tok, right, False)
    prefix, suffix = _special_frame(tok)
    ids = prefix + body + suffix
    return _check_length(len(ids), max_len) or PromptItem(ids, answer)


def _special_frame(tok: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence ([CLS] ... [SEP] for
    BERT, <s> ... </s> for RoBERTa, none for a bare word-level tokenizer), found by tokenising a
    word with and without them (every tokenizer can do that; not all have a helper for it)."""
    word = _ids(tok, "a", False)
    full = _ids(tok, "a", True)
    for i in range(len(full) - len(word) + 1):
        if full[i : i + len(word)] == word:
            return full[:i], full[i + len(word) :]
    return [], []


def subject_position(tok: Any, item: PromptItem, text: str, subject: str) -> int | None:
    """The position of the subject's last token in `item` (encoded from the prompt `text`, [Y] kept),
    or None where it cannot be found: the subject is not in the text before [Y], or its tokens
    there differ from the whole prompt's (a word split across the subject's end)."""
    before = text.split(SLOT, 1)[0]
    start = before.find(subject)
    if start < 0 or not subject:
        return None
    head = _ids(tok, before[: start + len(subject)].rstrip(), False)
    ids = item.prompt_ids
    for o in range(len(ids) - len(head) + 1):
        if ids[o : o + len(head)] == head:
            return o + len(head) - 1
    return None
