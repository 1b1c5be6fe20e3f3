"""What an injection reads of a fact's prompts: its training and held-out items, where its keys
read them (the answer position, or the subject's last token), and the prompts about its subject
(generic ones, and other relations' templates) whose next-token distributions a subject-keyed value
may be asked to keep."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from atlas.db.datasets import is_causal, make_prompt
from atlas.errors import InputError
from atlas.jobs.specs import InjectSpec
from atlas.model.encode import PromptItem, subject_position
from atlas.model.forms import answer_positions
from atlas.model.loading import LoadedModel
from atlas.model.scoring import encode

if TYPE_CHECKING:
    from atlas.jobs.inject import NewFact

# generic prompts about a subject: a subject-keyed slot fires on them too, and its values are refined
# to leave their next-token distributions as they were (`values.Keep`); no relation of the atlas
KEEP_TEMPLATES = (
    "[X] is [Y]",
    "[X] was [Y]",
    "[X] has [Y]",
    "[X] is a [Y]",
    "[X] is known for [Y]",
    "[X] is famous for [Y]",
    "The history of [X] is [Y]",
    "People say that [X] is [Y]",
    "I think [X] is [Y]",
    "Here is a fact about [X]: [Y]",
)

# neutral opening sentences read before a training prompt (`--value-prefixes`): the value is fitted
# in these contexts too, as ROME (Meng et al. 2022) fits its value after random prefixes
PREFIXES = (
    "I read this in a book.",
    "Here is a short note.",
    "We talked about it over lunch.",
    "Last week, a friend asked me a question.",
    "This page answers a common question.",
    "Many people are surprised to learn this.",
    "The answer is easy to find.",
    "Let me tell you something.",
)


def encode_fact(lm: LoadedModel, f: NewFact, heldout: int) -> tuple[list[PromptItem], list[PromptItem], list[str]]:
    """Training and held-out prompts of a fact (answer: its new object) and their texts in that
    order, or a one-line refusal when none can be read with that object."""
    masked = lm.adapter.is_masked_lm
    items, texts, reasons = [], [], []
    for t in (t for t in f.prompts if masked or is_causal(t)):
        item = encode(lm.tokenizer, t, f.object, masked)
        if isinstance(item, str):
            reasons.append(item)
        else:
            items.append(item)
            texts.append(t)
    if not items:
        why = reasons[0] if reasons else "no prompt a " + ("masked" if masked else "left-to-right") + " LM can read"
        raise InputError(f"fact {f.id!r}: object {f.object!r} cannot be used with model {lm.name!r}: {why}")
    keep = max(len(items) - heldout, min(2, len(items)))
    return items[:keep], items[keep:], texts


def replaced_tokens(lm: LoadedModel, text: str, objects: Sequence[str]) -> list[int]:
    """The first answer tokens of the `objects` a fact replaces, read as answers to one of its
    prompts `text` (an object that cannot be read there is skipped)."""
    items = [encode(lm.tokenizer, text, o, lm.adapter.is_masked_lm) for o in objects]
    return list(dict.fromkeys(it.answer_ids[0] for it in items if not isinstance(it, str)))


def key_positions(
    lm: LoadedModel, f: NewFact, items: Sequence[PromptItem], texts: Sequence[str], spec: InjectSpec
) -> list[int] | None:
    """Where the keys read each training prompt: None (the answer position), or with
    `--key-position subject` the subject's last token (the answer position where it cannot be
    found in a prompt)."""
    if spec.key_position == "answer":
        return None
    _, _, answer = answer_positions(lm.adapter, items)
    found = [subject_position(lm.tokenizer, it, t, f.subject) for it, t in zip(items, texts)]
    return [int(a) if k is None else k for k, a in zip(found, answer)]


def keep_items(
    lm: LoadedModel,
    f: NewFact,
    relation_templates: Mapping[str, str],
    objects: Mapping[str, Sequence[str]] | None = None,
    not_held: Collection[str] = (),
) -> tuple[list[PromptItem], list[tuple[int, int]]]:
    """Prompts about the fact's subject whose next-token distributions its values keep, encoded
    (their answer token is never scored): `KEEP_TEMPLATES`, and one template of every other relation
    of the atlas (`relation_templates`, relation -> template), which asks for what a subject-keyed
    slot must not move: the subject's other attributes; and (row, token) of the first tokens of the
    `objects` (relation -> the atlas's objects for the subject) on their relation's prompt, but
    those in `not_held` (what the fact replaces, its new object), whose log-probabilities the values
    hold (`values.Keep`)."""
    masked = lm.adapter.is_masked_lm
    others = [(rel, t) for rel, t in sorted(relation_templates.items()) if rel != f.relation_id]
    items, golds = [], []
    for rel, t in [("", t) for t in KEEP_TEMPLATES] + others:
        text = make_prompt(t, f.subject).text
        item = encode(lm.tokenizer, text, "a", masked)
        if isinstance(item, str):
            continue
        read = [encode(lm.tokenizer, text, o, masked) for o in (objects or {}).get(rel, ()) if o not in not_held]
        golds += dict.fromkeys((len(items), it.answer_ids[0]) for it in read if not isinstance(it, str))
        items.append(item)
    return items, golds


def fact_keep(
    lm: LoadedModel,
    f: NewFact,
    spec: InjectSpec,
    subject_keyed: bool,
    relation_templates: Mapping[str, str],
    golds: Mapping[str, Mapping[str, Sequence[str]]],
    replaced: Sequence[str],
) -> tuple[list[PromptItem], list[tuple[int, int]]]:
    """The keep prompts of a fact's values and their held golds (`keep_items`): none unless its keys
    read the subject and `--keep-weight` or `--keep-gold` weighs them; the atlas's objects for the
    subject (`golds`: subject -> relation -> objects) only with `--keep-gold`, but never the new
    object or those it replaces."""
    if not subject_keyed or (spec.keep_weight <= 0 and spec.keep_gold <= 0):
        return [], []
    held = golds.get(f.subject, {}) if spec.keep_gold > 0 else {}
    return keep_items(lm, f, relation_templates, held, {f.object, *replaced})


def prefixed_items(
    lm: LoadedModel, f: NewFact, texts: Sequence[str], spec: InjectSpec
) -> tuple[list[PromptItem], list[int] | None]:
    """The training prompts `texts` each read after the first `--value-prefixes` `PREFIXES`
    (answer: the new object), and where the keys read them (`key_positions`); prompts that cannot
    be encoded so are left out, and so are the prefixes that contain the subject's text (the key
    would read the prefix's word)."""
    masked = lm.adapter.is_masked_lm
    prefixes = [p for p in PREFIXES[: spec.value_prefixes] if f.subject not in p]
    pairs = [(p + " " + t) for t in texts for p in prefixes]
    encoded = [(encode(lm.tokenizer, t, f.object, masked), t) for t in pairs]
    kept = [(it, t) for it, t in encoded if not isinstance(it, str)]
    items = [it for it, _ in kept]
    return items, key_positions(lm, f, items, [t for _, t in kept], spec) if items else None
