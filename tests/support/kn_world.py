"""A small atlas for intervention tests: a tiny random LLaMA with a word-level tokenizer saved as
a Hugging Face directory, and a run over it whose rows are inserted directly.

The knowledge neurons are planted, not attributed: each relation has one "hub" neuron in every
fact, each fact two or three own neurons, and a few neurons are shared across facts and across
relations so that interference queries have something to find. Every prompt of a fact stores a
score for each of the fact's neurons (its first one is the prompt's max), as the indexer would.
Word-level tokens make every object a single token, so the update rule has a real e_t and e_t'.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from atlas.db.models import ModelInfo, register_model
from atlas.db.schema import facts, knowledge_neurons, prompt_outputs, prompt_scores, prompts, relations, runs
from atlas.db.store import Store
from atlas.model.loading import WEIGHT_DTYPES, LoadedModel, load_model
from tests.support.tiny_hf import tiny_model

RELATIONS = {
    "P36": (
        "capital",
        ["France", "Italy", "Spain", "Japan", "Peru"],
        ["Paris", "Rome", "Madrid", "Tokyo", "Lima"],
        ["The capital of [X] is [Y]", "[X] has its capital in [Y]", "The capital city of [X] is [Y]"],
    ),
    "P37": (
        "language",
        ["Brazil", "Mexico", "Egypt", "Chile", "Cuba"],
        ["Portuguese", "Spanish", "Arabic", "Spanish", "Spanish"],
        ["The official language of [X] is [Y]", "In [X] people speak [Y]", "People in [X] speak [Y]"],
    ),
    "P30": (
        "continent",
        ["Kenya", "Nepal", "Fiji", "Ghana", "Laos"],
        ["Africa", "Asia", "Oceania", "Africa", "Asia"],
        ["[X] is located in [Y]", "[X] lies on the continent of [Y]", "[X] is a country in [Y]"],
    ),
}
EXTRA_WORDS = ["Berlin", "English", "Europe", "unknown"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    words = {w for _, subj, objs, tpls in RELATIONS.values() for w in subj + objs}
    words |= {
        w for *_, tpls in RELATIONS.values() for t in tpls for w in t.replace("[X]", "").replace("[Y]", "").split()
    }
    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "[MASK]"] + sorted(words | set(EXTRA_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")


@dataclass
class World:
    lm: LoadedModel
    run: str
    run_id: int
    model_dir: Path
    fact_ids: list[str]


def save_model(path: Path, seed: int = 0, family: str = "llama") -> Path:
    tiny_model(family, seed=seed).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def build_world(store: Store, tmp_path: Path, seed: int = 0, family: str = "llama", weights: str = "fp32") -> World:
    """The planted run over a tiny `family` model (llama; bert for a masked LM: every prompt is
    usable by both kinds); `weights="bf16"`: the run of bf16 weights a GPU run at bf16 records."""
    model_dir = save_model(tmp_path / f"tiny-{family}", seed, family)
    lm = load_model(str(model_dir), dtype=WEIGHT_DTYPES[weights])
    row, _ = register_model(
        store,
        ModelInfo(lm.name, lm.source, type(lm.model).__name__, lm.adapter.n_layers, lm.adapter.n_neurons, lm.sha256),
    )
    rng = random.Random(seed)
    cols: dict[str, dict[str, list]] = {t: {} for t in ("facts", "prompts", "po", "kn", "ps")}

    def add(table: str, **values) -> None:
        for k, v in values.items():
            cols[table].setdefault(k, []).append(v)

    with store.begin() as conn:
        run_id = conn.execute(
            runs.insert()
            .values(
                name="tiny-run",
                model_id=row.id,
                dataset="test",
                method="ig",
                params=json.dumps({"params": {"weights": weights}} if weights != "fp32" else {}),
                params_key="k",
                code_version="test",
                status="done",
            )
            .returning(runs.c.id)
        ).scalar_one()
        fact_ids, prompt_id, cross = [], 0, (2, 7)
        for r_i, (rel, (label, subjects, objects, templates)) in enumerate(RELATIONS.items()):
            conn.execute(relations.insert().values(id=rel, label=label, type="N-1"))
            for f_i, (subj, obj) in enumerate(zip(subjects, objects)):
                fid = f"{rel}-{f_i}"
                fact_ids.append(fid)
                add("facts", id=fid, relation_id=rel, subject=subj, object=obj, dataset="test")
                for tpl in templates:
                    prompt_id += 1
                    add(
                        "prompts",
                        id=prompt_id,
                        fact_id=fid,
                        template=tpl,
                        text=tpl.replace("[X]", subj),
                        causal=True,
                        masked=True,
                    )
                    add(
                        "po",
                        run_id=run_id,
                        prompt_id=prompt_id,
                        status="ok",
                        p_gold=0.0,
                        gold_rank=1,
                        max_score=1.0,
                        n_answer_tokens=1,
                    )
                own = {(1 + (r_i + f_i) % 2, 10 + 5 * r_i + f_i), (2, 30 + 3 * r_i + f_i)}
                if f_i < 2:
                    own.add(cross)  # shared by the first two facts of every relation
                own.add((0, 40 + r_i))  # the relation's hub neuron
                for pid in range(prompt_id - len(templates) + 1, prompt_id + 1):  # every prompt uses them all
                    for rank, (layer, neuron) in enumerate(sorted(own)):
                        score = 1.0 if rank == 0 else round(rng.uniform(0.3, 0.9), 3)
                        add("ps", run_id=run_id, prompt_id=pid, layer=layer, neuron=neuron, score=score)
                for layer, neuron in sorted(own):
                    add(
                        "kn",
                        run_id=run_id,
                        fact_id=fid,
                        layer=layer,
                        neuron=neuron,
                        score=round(rng.uniform(0.2, 1.0), 3),
                        n_prompts=2,
                    )
        store.bulk_insert(conn, facts, cols["facts"])
        store.bulk_insert(conn, prompts, cols["prompts"])
        store.bulk_insert(conn, prompt_outputs, cols["po"])
        store.bulk_insert(conn, knowledge_neurons, cols["kn"])
        store.bulk_insert(conn, prompt_scores, cols["ps"])
    return World(lm, "tiny-run", int(run_id), model_dir, fact_ids)


def load_world_facts(store: Store) -> list[str]:
    """The world's facts loaded as the dataset "kn-world" (for the real indexer); their ids."""
    from atlas.db.datasets import Dataset, Fact, Relation, make_prompt
    from atlas.db.facts import load_dataset

    rels = [Relation(rel, label, "N-1") for rel, (label, *_rest) in RELATIONS.items()]
    fs = [
        Fact(f"{rel}-{i}", rel, subj, obj, tuple(make_prompt(t, subj) for t in tpls))
        for rel, (_, subjects, objects, tpls) in RELATIONS.items()
        for i, (subj, obj) in enumerate(zip(subjects, objects))
    ]
    load_dataset(store, Dataset("kn-world", rels, fs))
    return [f.id for f in fs]


def index_world(store: Store, tmp_path: Path, seed: int = 0, steps: int = 4, sketch_rank: int = 0) -> World:
    """The same facts, loaded as a dataset and indexed by the real indexer (a small real run)."""
    from indexer.job.run import IndexOptions, index

    model_dir = save_model(tmp_path / "tiny-llama-indexed", seed)
    fact_ids = load_world_facts(store)
    opts = IndexOptions(
        model=str(model_dir), dataset="kn-world", steps=steps, run_name="tiny-indexed", sketch_rank=sketch_rank
    )
    index(store, opts)
    lm = load_model(str(model_dir))
    return World(lm, "tiny-indexed", 0, model_dir, fact_ids)
