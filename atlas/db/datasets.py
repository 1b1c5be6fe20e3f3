"""Fact datasets: the bundled PARAREL and kn-paper sets and user JSONL files, read into records.

Pure Python (no database, no torch): everything here turns files into :class:`Dataset` records
and refuses bad input with a :class:`InputError` that names ``file:line``, so that the loader
never starts a transaction on data it would have to reject halfway.

Prompts keep the object slot: ``Prompt.text`` is the template with the subject filled in and
the literal ``[Y]`` left where the object goes. Masked LMs put their mask token there; left-to-right
LMs can only use a prompt whose ``[Y]`` ends the sentence (``causal``) and read it up to the slot
(:func:`causal_prefix`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.db.jsonl import ID_MAX, check_text, json_lines, text_field
from atlas.errors import InputError

DATA_DIR = Path(__file__).parents[1] / "data"
PARAREL_DIR = DATA_DIR / "pararel"
KN_PAPER_DIR = DATA_DIR / "kn_paper"
RELATIONS_FILE = KN_PAPER_DIR / "lama_relations.jsonl"
BUNDLED = ("pararel", "kn-paper")
RELATION_TYPES = ("1-1", "N-1", "N-M")
SUBJECT, OBJECT = "[X]", "[Y]"
FACT_KEYS = {"id", "subject", "object", "templates", "prompts"}  # a JSONL line with none of them declares a relation

# kn-paper pairs without a PARAREL uuid get uuid5(KN_PAPER_NAMESPACE, "relation\tsubject\tobject\tk"),
# k = how many earlier pairs of that relation had the same subject and object (the set repeats a few).
KN_PAPER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/Hunter-DDM/knowledge-neurons")

# "[Y]" ends the sentence: nothing after it but an optional full stop, with or without a space.
_CAUSAL = re.compile(r"\[Y\] ?\.?$")


@dataclass(frozen=True)
class Relation:
    id: str  # Wikidata property id, e.g. P36
    label: str
    type: str  # 1-1 | N-1 | N-M
    where: str = field(default="", compare=False)  # file:line that declared it, for error messages


@dataclass(frozen=True)
class Prompt:
    template: str  # with [X] and [Y] (for ready prompts: the prompt as given)
    text: str  # subject filled in, [Y] kept
    causal: bool  # [Y] ends the sentence: usable by a left-to-right LM
    masked: bool  # usable by a masked LM


@dataclass(frozen=True)
class Fact:
    id: str
    relation_id: str
    subject: str
    object: str
    prompts: tuple[Prompt, ...]
    where: str = field(default="", compare=False)  # file:line it came from, for error messages


@dataclass
class Dataset:
    name: str
    relations: list[Relation]
    facts: list[Fact]

    @property
    def n_prompts(self) -> int:
        return sum(len(f.prompts) for f in self.facts)


def is_causal(template: str) -> bool:
    """Whether a left-to-right LM can use the template: its ``[Y]`` ends the sentence."""
    return bool(_CAUSAL.search(template.rstrip()))


def causal_prefix(text: str) -> str:
    """What a left-to-right LM reads: the prompt text cut at the ``[Y]`` slot (trailing space removed)."""
    return text.split(OBJECT, 1)[0].rstrip()


def make_prompt(template: str, subject: str) -> Prompt:
    """The prompt for one template and subject; the template must hold one [X] and one [Y]."""
    return Prompt(template=template, text=template.replace(SUBJECT, subject), causal=is_causal(template), masked=True)


def kn_paper_fact_id(relation_id: str, subject: str, obj: str, occurrence: int = 0) -> str:
    """The deterministic id of a kn-paper fact that has no PARAREL uuid (see ``KN_PAPER_NAMESPACE``)."""
    return str(uuid.uuid5(KN_PAPER_NAMESPACE, f"{relation_id}\t{subject}\t{obj}\t{occurrence}"))


# ----------------------------------------------------------------------------------------------
# checks with file:line errors (reading the lines: `atlas.db.jsonl`)


def _check_template(template: str, where: str) -> str:
    for slot in (SUBJECT, OBJECT):
        if template.count(slot) != 1:
            raise InputError(f"{where}: template {template!r} must contain {slot} exactly once")
    return template


def _check_relation_type(value: str, where: str) -> str:
    if value not in RELATION_TYPES:
        raise InputError(f"{where}: relation type {value!r} is not one of {', '.join(RELATION_TYPES)}")
    return value


# ----------------------------------------------------------------------------------------------
# bundled data


def bundled_relations() -> dict[str, Relation]:
    """LAMA's relation list (id, label, type), shipped with the package."""
    out = {}
    for where, obj in json_lines(RELATIONS_FILE):
        rid = text_field(obj, "relation", where)
        out[rid] = Relation(
            rid, text_field(obj, "label", where), _check_relation_type(text_field(obj, "type", where), where), where
        )
    return out


def pararel_templates(relation_id: str) -> list[str]:
    """The PARAREL paraphrase templates of one relation (empty when it has none)."""
    path = PARAREL_DIR / "patterns" / f"{relation_id}.jsonl"
    if not path.exists():
        return []
    return [_check_template(text_field(obj, "pattern", where), where) for where, obj in json_lines(path)]


def _pararel_rows(relation_id: str) -> Iterator[tuple[str, str, str, str]]:
    """(``file:line``, uuid, subject, object) of the PARAREL facts of one relation, in file order."""
    for where, obj in json_lines(PARAREL_DIR / "trex_lms_vocab" / f"{relation_id}.jsonl"):
        subject, obj_label = text_field(obj, "sub_label", where), text_field(obj, "obj_label", where)
        yield where, text_field(obj, "uuid", where), subject, obj_label


def pararel_relation_ids() -> list[str]:
    """Relations that PARAREL has both facts and templates for (39)."""
    with_facts = {p.stem for p in (PARAREL_DIR / "trex_lms_vocab").glob("P*.jsonl")}
    with_templates = {p.stem for p in (PARAREL_DIR / "patterns").glob("P*.jsonl")}
    return sorted(with_facts & with_templates, key=lambda r: int(r[1:]))


def _kn_paper_pairs() -> dict[str, list[tuple[str, str]]]:
    path = KN_PAPER_DIR / "query_pairs.json"
    pairs = json.loads(path.read_text(encoding="utf-8"))
    return {rel: [(s, o) for s, o in items] for rel, items in pairs.items()}


def _select(available: list[str], wanted: Iterable[str] | None, dataset: str) -> list[str]:
    """The requested relations in the given order; one not in ``available`` is a InputError."""
    if wanted is None:
        return list(available)
    wanted = list(dict.fromkeys(wanted))
    missing = [r for r in wanted if r not in available]
    if missing:
        raise InputError(f"{dataset} has no relation {', '.join(missing)} (it has {', '.join(available)})")
    return wanted


def read_pararel(
    relations: Iterable[str] | None = None,
    limit_per_relation: int | None = None,
    on_relation: Callable[[str], None] | None = None,
) -> Dataset:
    """PARAREL facts with every template of their relation (39 relations, 27,610 facts, 224,674 prompts)."""
    known = bundled_relations()
    chosen = _select(pararel_relation_ids(), relations, "pararel")
    facts = []
    for rid in chosen:
        templates = pararel_templates(rid)
        for where, fid, subject, obj in _limit(_pararel_rows(rid), limit_per_relation):
            facts.append(Fact(fid, rid, subject, obj, tuple(make_prompt(t, subject) for t in templates), where))
        if on_relation:
            on_relation(rid)
    return Dataset("pararel", [known[r] for r in chosen], facts)


def read_kn_paper(
    relations: Iterable[str] | None = None,
    limit_per_relation: int | None = None,
    on_relation: Callable[[str], None] | None = None,
) -> Dataset:
    """The facts of Dai et al. 2022 (34 relations, 27,738 facts, 253,448 prompts).

    Ids: the PARAREL uuid of the same (relation, subject, object) where there is one (23,749
    facts); the set repeats some pairs, and the k-th repeat takes the k-th matching uuid in
    PARAREL's order, or :func:`kn_paper_fact_id` with occurrence k when PARAREL has fewer.
    """
    known = bundled_relations()
    pairs = _kn_paper_pairs()
    chosen = _select(list(pairs), relations, "kn-paper")
    where = str(KN_PAPER_DIR / "query_pairs.json")
    facts = []
    for rid in chosen:
        uuids: dict[tuple[str, str], list[str]] = {}
        for _, fid, subject, obj in _pararel_rows(rid):
            uuids.setdefault((subject, obj), []).append(fid)
        templates = pararel_templates(rid)
        seen: Counter[tuple[str, str]] = Counter()
        for subject, obj in _limit(iter(pairs[rid]), limit_per_relation):
            k = seen[(subject, obj)]
            seen[(subject, obj)] += 1
            matches = uuids.get((subject, obj), [])
            fid = matches[k] if k < len(matches) else kn_paper_fact_id(rid, subject, obj, k)
            facts.append(
                Fact(fid, rid, subject, obj, tuple(make_prompt(t, subject) for t in templates), f"{where} [{rid}]")
            )
        if on_relation:
            on_relation(rid)
    return Dataset("kn-paper", [known[r] for r in chosen], facts)


def _limit(rows: Iterator, n: int | None) -> Iterator:
    for i, row in enumerate(rows):
        if n is not None and i >= n:
            return
        yield row


# ----------------------------------------------------------------------------------------------
# user JSONL files


def read_jsonl(
    path: str | Path,
    name: str | None = None,
    relations: Iterable[str] | None = None,
    limit_per_relation: int | None = None,
) -> Dataset:
    """A user fact file (format in README.md, "JSONL fact files"); the dataset is named after the file.

    A line with any of ``FACT_KEYS`` is a fact; any other line declares a relation (``relation``,
    ``label``, ``type``). A fact's relation must be declared in the file or be one of the bundled LAMA relations.
    """
    path = Path(path)
    wanted = set(relations) if relations is not None else None
    declared: dict[str, Relation] = {}
    facts: dict[str, Fact] = {}
    per_relation: Counter[str] = Counter()
    for where, obj in json_lines(path):
        if not FACT_KEYS & obj.keys():
            rel = Relation(
                text_field(obj, "relation", where),
                text_field(obj, "label", where),
                _check_relation_type(text_field(obj, "type", where), where),
                where,
            )
            if declared.get(rel.id, rel) != rel:
                old = declared[rel.id]
                raise InputError(
                    f"{where}: relation {rel.id} declared again as {rel.label!r} ({rel.type}); "
                    f"{old.where} declared it {old.label!r} ({old.type})"
                )
            declared[rel.id] = rel
            continue
        fact = _jsonl_fact(obj, where)
        if wanted is not None and fact.relation_id not in wanted:
            continue
        is_new = fact.id not in facts
        if is_new and per_relation[fact.relation_id] == limit_per_relation:
            continue
        facts[fact.id] = _merge(facts.get(fact.id), fact)
        per_relation[fact.relation_id] += is_new
    bundled = bundled_relations()
    used = []
    for fact in facts.values():
        if fact.relation_id not in declared and fact.relation_id not in bundled:
            raise InputError(f"{fact.where}: relation {fact.relation_id} is neither declared in the file nor bundled")
        if fact.relation_id not in used:
            used.append(fact.relation_id)
    name = check_text(name or path.stem, "dataset", f"{path}: dataset name", ID_MAX)
    return Dataset(name, [declared.get(r) or bundled[r] for r in used], list(facts.values()))


def _jsonl_fact(obj: dict[str, Any], where: str) -> Fact:
    fid, rid = text_field(obj, "id", where), text_field(obj, "relation", where)
    subject, obj_label = _filler(obj, "subject", where), _filler(obj, "object", where)
    has_templates, has_prompts = "templates" in obj, "prompts" in obj
    if has_templates == has_prompts:
        raise InputError(f"{where}: fact {fid} needs exactly one of 'templates' or 'prompts'")
    key = "templates" if has_templates else "prompts"
    items = obj[key]
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
        raise InputError(f"{where}: field {key!r} must be a non-empty list of non-empty strings")
    for t in items:
        check_text(t, key[:-1], where)
    if has_templates:
        prompts = [make_prompt(_check_template(t, where), subject) for t in items]
    else:
        prompts = [_ready_prompt(p, where) for p in items]
    return Fact(fid, rid, subject, obj_label, tuple(dict.fromkeys(prompts)), where)


def _filler(obj: dict[str, Any], key: str, where: str) -> str:
    """A subject or object: it fills a slot, so it may not hold one ([X] or [Y] would be read as the slot)."""
    value = text_field(obj, key, where)
    for slot in (SUBJECT, OBJECT):
        if slot in value:
            raise InputError(f"{where}: {key} {value!r} contains {slot}, which marks a slot in templates")
    return value


def _ready_prompt(text: str, where: str) -> Prompt:
    """A prompt written out in full: the subject already in it, ``[Y]`` where the object goes."""
    if text.count(OBJECT) != 1 or SUBJECT in text:
        raise InputError(f"{where}: prompt {text!r} must contain [Y] exactly once and no [X]")
    return Prompt(template=text, text=text, causal=is_causal(text), masked=True)


def _merge(old: Fact | None, new: Fact) -> Fact:
    """The same fact on two lines: its prompts add up; a different relation, subject or object is an error."""
    if old is None:
        return new
    if (old.relation_id, old.subject, old.object) != (new.relation_id, new.subject, new.object):
        raise InputError(
            f"{new.where}: fact {new.id} differs from its earlier line {old.where} ({describe(old)} vs {describe(new)})"
        )
    return Fact(
        old.id, old.relation_id, old.subject, old.object, tuple(dict.fromkeys(old.prompts + new.prompts)), old.where
    )


def describe(fact: Fact) -> str:
    """``relation(subject, object)``: a fact's content in one short string."""
    return f"{fact.relation_id}({fact.subject!r}, {fact.object!r})"


def read_dataset(
    source: str,
    relations: Iterable[str] | None = None,
    limit_per_relation: int | None = None,
    name: str | None = None,
    on_relation: Callable[[str], None] | None = None,
) -> Dataset:
    """``pararel``, ``kn-paper`` or the path of a JSONL fact file."""
    if limit_per_relation is not None and limit_per_relation < 1:
        raise InputError(f"--limit-per-relation must be at least 1, got {limit_per_relation}")
    if source == "pararel":
        return read_pararel(relations, limit_per_relation, on_relation)
    if source == "kn-paper":
        return read_kn_paper(relations, limit_per_relation, on_relation)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: not a bundled dataset ({', '.join(BUNDLED)}) nor a readable file")
    return read_jsonl(path, name, relations, limit_per_relation)


def relation_count(source: str, relations: Iterable[str] | None = None) -> int | None:
    """How many relations reading ``source`` will report through ``on_relation`` (None for files)."""
    if relations is not None:
        return len(list(dict.fromkeys(relations)))
    if source == "pararel":
        return len(pararel_relation_ids())
    if source == "kn-paper":
        return len(_kn_paper_pairs())
    return None
