"""The prompts an injection's keys are built against, read from the atlas in the job's read
transaction and turned into FFN inputs once the model runs.

Pools (named by a string): the shared one ('': prompts of other facts, half of the injected
relations and half of the others, and the start of the general text), one per injected relation
(its templates with other subjects), and one per injected subject of its namesakes
(`injection_namesakes`: the atlas's facts whose subject contains the subject's last word, in any
case, where a key read at that word opens too: "patent troll"'s at "roll" of "Trollhunter"). The
namesakes are a fact's own negatives with `--namesake-negatives`, the positives of its guard pairs
with `--namesake-guards` (`atlas.model.inject.guards`). When either is on, the namesakes that hold
an injected subject whole ("Empire of Japan" for "Japan") are in no other pool: the key sees the
same name in nearly the same context there, so no gate separates them. One drawn into the shared
pool ("The capital of Empire of Japan is") scored above a training prompt ("In Japan, people pay
with the") and shut the fact's gate on it, where its guard would have cancelled it. Namesakes that
share only the last word ("Jorum Glacier" for "Suvorov Glacier") stay ordinary negatives: the gate
separates them, and without them in the pools a glacier's slot opened on the run's other glaciers
(SmolLM2, H100: right answers kept fell from 684 to 666-675 of 685 on two seeds). Prompts of the
facts the audit measures are never read: its specificity is measured on prompts the keys, gates and
guards never saw.

An atlas of a user's own facts alone holds few prompts outside the run it audits: a key built against
the general text only opened on every subject of the run (SmolLM2, `atlas demo`'s 9 facts:
"Azerbaijan -> Ankara" fired on 71 % of the other facts' prompts, mean |dP/P| 16.5 %; 0 % and 0.0 %
with kn-paper loaded). So where the atlas returns fewer rows than a pool takes (`--fill-negatives`,
the default), the bundled kn-paper facts fill the rest under the same conditions, in the same
order (md5 of text and fact id); the namesake pools are the atlas's only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from atlas.db.datasets import read_kn_paper
from atlas.db.sqlfile import sql_text
from atlas.jobs.evaluate import GENERAL_TEXT
from atlas.jobs.inject_audit import NEGATIVE_TEXT_CHARS
from atlas.jobs.specs import InjectSpec
from atlas.model.inject.keys import Negatives, answer_inputs, text_chunk, text_inputs
from atlas.model.loading import LoadedModel
from atlas.model.scoring import encode

if TYPE_CHECKING:
    from atlas.jobs.inject import NewFact

Pooled = tuple[str, str, str, str]  # (pool, fact id, prompt text, object)


def namesakes(subject: str) -> str:
    """The name of a subject's pool of namesakes (`injection_namesakes`)."""
    return f"namesakes:{subject}"


def last_word(subject: str) -> str:
    """The word a subject-keyed slot reads ('Benson' of 'Egbert Benson'): its namesakes contain it, in any case."""
    return subject.split()[-1] if subject.split() else subject


def _holds(subject: str, injected: set[str]) -> bool:
    """Whether `subject` holds one of the `injected` subjects whole (module docstring)."""
    return any(s in subject for s in injected)


def own_pools(f: NewFact, spec: InjectSpec) -> list[str]:
    """The pools of negatives a fact adds to the shared one: its relation's, and its namesakes'
    with --namesake-negatives."""
    return [f.relation_id] + ([namesakes(f.subject)] if spec.namesake_negatives else [])


def read_pools(conn: Any, backend: str, facts: Sequence[NewFact], spec: InjectSpec, causal: bool) -> list[Pooled]:
    """Every pool's prompts (module docstring), in one transaction."""
    rels = sorted({f.relation_id for f in facts})
    subjects = sorted({f.subject for f in facts})
    limit = max(spec.namesake_negatives, spec.namesake_guards)
    aside = set(subjects) if limit else set()
    out: list[Pooled] = []

    def negatives(pool: str, rel_ids: list[str], same: bool, n: int) -> None:
        params = {"relation_ids": rel_ids, "subjects": subjects, "same": same, "causal": causal, "limit": n}
        rows = [
            (r.fact_id, r.relation_id, r.subject, r.object, r.text)
            for r in conn.execute(sql_text("injection_negatives", backend), params)
        ]
        if spec.fill_negatives and len(rows) < n:
            rows += bundled_negatives(set(rel_ids), same, set(subjects), causal, {r[0] for r in rows}, n - len(rows))
        out.extend((pool, fid, text, obj) for fid, _, subject, obj, text in rows if not _holds(subject, aside))

    for same in (True, False):  # the shared pool: the injected relations and the others, half each
        negatives("", rels, same, (spec.negatives + (not same)) // 2)
    for rel in rels:  # each injected relation's own pool: its templates with other subjects
        negatives(rel, [rel], True, spec.relation_negatives)
    for subject in subjects if limit else ():
        params = {"subject": subject, "word": last_word(subject), "causal": causal, "limit": limit}
        rows = conn.execute(sql_text("injection_namesakes", backend), params)
        out += [(namesakes(subject), r.fact_id, r.text, r.object) for r in rows]
    return out


class _Bundled(NamedTuple):
    fact_id: str
    relation_id: str
    subject: str
    object: str
    text: str
    causal: bool


@cache
def _kn_paper_prompts() -> tuple[_Bundled, ...]:
    """Every bundled kn-paper prompt, in the order of `injection_negatives` (md5 of text and fact id)."""
    rows = [
        _Bundled(f.id, f.relation_id, f.subject, f.object, p.text, p.causal)
        for f in read_kn_paper().facts
        for p in f.prompts
    ]
    return tuple(sorted(rows, key=lambda r: hashlib.md5((r.text + r.fact_id).encode()).hexdigest()))


def bundled_negatives(
    rel_ids: set[str], same: bool, subjects: set[str], causal: bool, taken: set[str], n: int
) -> list[tuple[str, str, str, str, str]]:
    """The first `n` bundled prompts `injection_negatives` would return from an atlas holding
    kn-paper, but those of the facts `taken` (read from the atlas): (fact id, relation, subject,
    object, text)."""
    rows = (
        r[:5]
        for r in _kn_paper_prompts()
        if (r.relation_id in rel_ids) == same
        and r.subject not in subjects
        and (r.causal or not causal)
        and r.fact_id not in taken
    )
    return list(islice(rows, n))


def pool_inputs(
    lm: LoadedModel, pooled: Sequence[Pooled], layers: list[int], pool_layers: dict[str, set[int]], audited: set[str]
) -> tuple[dict[int, Negatives], dict[tuple[str, int], Negatives]]:
    """FFN inputs of the pools at every position: the shared pool and the general text's start per
    layer in `layers`, and every other pool at the layers `pool_layers` names for it (those of the
    facts that use it); prompts of the `audited` facts are left out."""
    masked = lm.adapter.is_masked_lm
    by_pool: dict[str, list] = {}  # pool -> its encoded prompts, in one pass
    for pool, fid, t, o in pooled:
        if fid not in audited and not isinstance(item := encode(lm.tokenizer, t, o, masked), str):
            by_pool.setdefault(pool, []).append(item)

    def inputs(pool: str, at_layers: list[int]) -> dict[int, torch.Tensor]:
        return answer_inputs(lm.model, lm.adapter, by_pool.get(pool, []), at_layers, every_position=True)

    xs = inputs("", layers)
    if not masked:
        text = GENERAL_TEXT.read_text()[:NEGATIVE_TEXT_CHARS]
        ids = list(lm.tokenizer(text, add_special_tokens=False).input_ids)
        gen = text_inputs(lm.model, lm.adapter, ids, layers, text_chunk(lm.adapter))
        xs = {layer: torch.cat([xs[layer], gen[layer]]) for layer in layers}
    shared = {layer: Negatives.of(xs[layer]) for layer in layers}
    own: dict[tuple[str, int], Negatives] = {}
    for pool, at_layers in pool_layers.items():
        if pool not in by_pool:  # e.g. no namesakes
            continue
        for layer, x in inputs(pool, sorted(at_layers)).items():
            if x.shape[0]:
                own[(pool, layer)] = Negatives.of(x)
    return shared, own
