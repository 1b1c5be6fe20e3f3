"""Reading the bundled datasets and JSONL fact files (pure: no database)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from atlas.db.datasets import (
    PARAREL_DIR,
    bundled_relations,
    causal_prefix,
    is_causal,
    kn_paper_fact_id,
    make_prompt,
    pararel_templates,
    read_dataset,
    read_jsonl,
    read_kn_paper,
    read_pararel,
)
from atlas.errors import InputError
from tests.support.files import FACT, write_jsonl


@pytest.mark.parametrize(
    "template, causal",
    [
        ("[X] was born in [Y].", True),
        ("[X] was born in [Y] .", True),
        ("[X] is created by [Y]", True),
        ("[X] is created by [Y]  ", True),
        ("[Y] is the capital of [X].", False),
        ("[X] is named in [Y]'s honor.", False),
        ("[X] is [Y]-born.", False),
        ("[X] lives in [Y], sadly.", False),
    ],
)
def test_causal_means_the_object_slot_ends_the_sentence(template: str, causal: bool) -> None:
    assert is_causal(template) is causal
    prompt = make_prompt(template, "Ada")
    assert prompt.causal is causal and prompt.masked
    assert prompt.text == template.replace("[X]", "Ada") and "[Y]" in prompt.text


def test_causal_prefix_cuts_at_the_slot() -> None:
    assert causal_prefix("The capital of France is [Y] .") == "The capital of France is"
    assert causal_prefix("France's capital, [Y].") == "France's capital,"


def test_pararel_matches_its_documented_size() -> None:
    data = read_pararel()
    assert len(data.relations) == 39
    assert len(data.facts) == 27_610
    assert data.n_prompts == 224_674
    assert len({f.id for f in data.facts}) == len(data.facts)


def test_kn_paper_matches_its_documented_size_and_reuses_pararel_ids() -> None:
    data = read_kn_paper()
    pararel_ids = {f.id for f in read_pararel().facts}
    ids = [f.id for f in data.facts]
    assert (len(data.relations), len(ids), data.n_prompts) == (34, 27_738, 253_448)
    assert len(set(ids)) == len(ids)  # repeated pairs get distinct ids
    assert sum(i in pararel_ids for i in ids) == 23_749
    derived = [f for f in data.facts if f.id not in pararel_ids]
    assert all(uuid.UUID(f.id).version == 5 for f in derived)


def test_kn_paper_ids_are_deterministic_and_distinct_for_repeated_pairs() -> None:
    first = read_kn_paper(["P190"])
    again = read_kn_paper(["P190"])
    assert [f.id for f in first.facts] == [f.id for f in again.facts]
    repeats = [f for f in first.facts if (f.subject, f.object) == ("Salisbury", "Salisbury")]
    assert len(repeats) == 3 and len({f.id for f in repeats}) == 3
    assert repeats[1].id == kn_paper_fact_id("P190", "Salisbury", "Salisbury", 1)


def test_subsets_keep_file_order_and_every_template() -> None:
    data = read_pararel(["P36", "P19"], limit_per_relation=3)
    rows = [json.loads(line) for line in (PARAREL_DIR / "trex_lms_vocab" / "P19.jsonl").read_text().splitlines()[:3]]
    assert [f.relation_id for f in data.facts] == ["P36"] * 3 + ["P19"] * 3
    assert [f.id for f in data.facts[3:]] == [r["uuid"] for r in rows]
    assert all([p.template for p in f.prompts] == pararel_templates(f.relation_id) for f in data.facts)
    assert [r.id for r in data.relations] == ["P36", "P19"]


def test_unknown_bundled_relation_is_refused() -> None:
    with pytest.raises(InputError, match="kn-paper has no relation P17"):
        read_kn_paper(["P17"])  # in PARAREL, left out of the paper
    with pytest.raises(InputError, match="pararel has no relation P31"):
        read_dataset("pararel", ["P31"])  # facts but no templates


def test_jsonl_templates_and_ready_prompts(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"relation": "P9001", "label": "favourite colour", "type": "N-1"},
            FACT,
            {**FACT, "templates": ["[X]'s capital is [Y].", "The capital of [X] is [Y]."]},  # same fact: prompts add up
            {
                "id": "f2",
                "relation": "P9001",
                "subject": "Ada",
                "object": "blue",
                "prompts": ["Ada likes [Y] best.", "[Y] is what Ada likes"],
            },
        ],
    )
    data = read_jsonl(path)
    assert data.name == "mine"
    assert [r.id for r in data.relations] == ["P36", "P9001"]
    assert data.relations[0] == bundled_relations()["P36"]
    f1, f2 = data.facts
    assert [p.text for p in f1.prompts] == ["The capital of France is [Y].", "France's capital is [Y]."]
    assert [(p.text, p.causal, p.masked) for p in f2.prompts] == [
        ("Ada likes [Y] best.", False, True),
        ("[Y] is what Ada likes", False, True),
    ]


def test_jsonl_limit_per_relation_and_relation_filter(tmp_path: Path) -> None:
    rows = [{**FACT, "id": f"f{i}", "subject": f"S{i}"} for i in range(5)] + [{**FACT, "id": "g", "relation": "P19"}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    assert [f.id for f in read_jsonl(path, limit_per_relation=2).facts] == ["f0", "f1", "g"]
    assert [f.id for f in read_jsonl(path, relations=["P19"]).facts] == ["g"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([FACT, '{"id": "f2", "relation": '], r"x.jsonl:2: malformed JSON"),
        ([FACT, "[1, 2]"], r"x.jsonl:2: expected a JSON object"),
        ([{k: v for k, v in FACT.items() if k != "object"}], r"x.jsonl:1: missing field 'object'"),
        ([{**FACT, "subject": ""}], r"x.jsonl:1: field 'subject' must be a non-empty string"),
        (
            [{**FACT, "templates": ["The capital of France is [Y]."]}],
            r"x.jsonl:1: template .* must contain \[X\] exactly once",
        ),
        ([{**FACT, "templates": ["The capital of [X]."]}], r"x.jsonl:1: template .* must contain \[Y\] exactly once"),
        ([{**FACT, "prompts": ["The capital of France is [Y]."]}], r"x.jsonl:1: fact f1 needs exactly one of"),
        ([{k: v for k, v in FACT.items() if k != "templates"}], r"x.jsonl:1: fact f1 needs exactly one of"),
        (
            [{**{k: v for k, v in FACT.items() if k != "templates"}, "prompts": ["The capital of France is"]}],
            r"x.jsonl:1: prompt .* must contain \[Y\] exactly once",
        ),
        ([{**FACT, "templates": []}], r"x.jsonl:1: field 'templates' must be a non-empty list"),
        ([FACT, {**FACT, "relation": "P9999"}], r"x.jsonl:2: fact f1 differs from its earlier line .*x.jsonl:1"),
        ([FACT, {**FACT, "object": "Lyon"}], r"x.jsonl:2: fact f1 differs .*'Paris'.* vs .*'Lyon'"),
        ([{**FACT, "relation": "P9999"}], r"x.jsonl:1: relation P9999 is neither declared in the file nor bundled"),
        ([{"relation": "P9001", "label": "x", "type": "1-N"}], r"x.jsonl:1: relation type '1-N' is not one of"),
        (
            [{"relation": "P9001", "label": "x", "type": "N-1"}, {"relation": "P9001", "label": "y", "type": "N-1"}],
            r"x.jsonl:2: relation P9001 declared again",
        ),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_jsonl(write_jsonl(tmp_path / "x.jsonl", rows))


def test_missing_file_and_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.jsonl: not a bundled dataset"):
        read_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="at least 1"):
        read_dataset("pararel", limit_per_relation=0)


def test_relation_types_are_lama_types() -> None:
    types = Counter(r.type for r in bundled_relations().values())
    assert set(types) <= {"1-1", "N-1", "N-M"} and sum(types.values()) == 46
