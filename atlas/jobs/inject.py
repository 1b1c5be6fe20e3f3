"""`atlas inject`: add facts <s, r, o'> to a model as new FFN slot pairs, audited against a run.

Read -> compute -> write, as every edit: one transaction (`atlas.jobs.inject_read`) reads the run,
its facts, the model's applied edits and injections, the facts already injected, the default layers (the statement
`inject_default_layer`: the weighted median layer of the relation's knowledge neurons in the run)
and the pools of prompts the keys are built against (`inject_pools`: other facts of the injected
relations and of the others, each injected relation's, and with --namesake-negatives or
--namesake-guards each injected subject's namesakes) and the facts the injected ones replace
(`injection_replaced`: the atlas's facts of an injected subject and relation, whose objects the
values push down); bad input is refused before the model runs. The facts the audit measures are left
out of the negatives (`--audit-unseen`), so that its specificity is measured on prompts the keys
never saw. The model then runs with no transaction open: on the working copy
(`inject_weights.injected_copy`) it is measured, widened by two neurons per fact and layer (four
with guards), each fact's pair (and guard) is built on the model that already holds the earlier ones
(`atlas.model.inject.build`), and it is measured again (`inject_audit`) widened by exactly the pairs
built. One transaction writes the injection, its facts, pairs and audit, after checking that the
applied edits and injections did not change meanwhile.

Default layer: `--layers`; else, for keys read at the subject (the default), a third of the depth
(where the subject's representation is built, and attention still has the layers above it to
carry the value to the answer); for keys read at the answer position, the relation's weighted
median knowledge-neuron layer in the run, else that of all the run's knowledge neurons, else 80%
of the depth (recorded per fact as `layer_source`: layers / subject / relation / run / depth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from atlas.db.datasets import make_prompt, pararel_templates, read_jsonl
from atlas.db.edits import check_stack
from atlas.db.injections import (
    APPLIED,
    InjectedFact,
    InjectionRecord,
    NewInjection,
    check_injections,
    get_injection,
    insert_injection,
    set_audit,
)
from atlas.db.runs import Run, resolve_run
from atlas.db.store import Store
from atlas.errors import ConflictError, InputError
from atlas.jobs import inject_audit as audit
from atlas.jobs.evaluate import EvalSet, sample
from atlas.jobs.inject_pools import namesakes, own_pools, pool_inputs
from atlas.jobs.inject_prompts import encode_fact, fact_keep, key_positions, prefixed_items, replaced_tokens
from atlas.jobs.inject_read import InjectionAtlas, read_atlas
from atlas.jobs.inject_weights import injected_copy, pair_bytes
from atlas.jobs.specs import InjectSpec
from atlas.jobs.weights import ModelArg, resolve_model
from atlas.model.inject import check_injectable, widened
from atlas.model.inject.build import BuildParams, FactSlots, build_fact
from atlas.model.inject.keys import answer_inputs
from atlas.model.loading import LoadedModel, weights_sha256

METHOD = "kformer-slots: discriminant key, clamped gate, line-searched value"


@dataclass(frozen=True)
class NewFact:
    """A fact to inject: its NEW object and its prompts (texts with [Y])."""

    id: str
    relation_id: str
    subject: str
    object: str
    prompts: tuple[str, ...]


def facts_from_file(path: str | Path) -> list[NewFact]:
    """Facts of a JSONL fact file (README "JSONL fact files"); `object` is the object to inject."""
    return [
        NewFact(f.id, f.relation_id, f.subject, f.object, tuple(p.text for p in f.prompts))
        for f in read_jsonl(path).facts
    ]


def fact_from_option(text: str, templates: Sequence[str] = ()) -> NewFact:
    """`--fact "SUBJECT|RELATION|OBJECT"`, with `--template`s or the relation's PARAREL templates."""
    parts = [p.strip() for p in text.split("|")]
    if len(parts) != 3 or not all(parts):
        raise InputError(f"bad --fact {text!r}: write SUBJECT|RELATION|OBJECT, e.g. 'France|P36|Lyon'")
    subject, relation, obj = parts
    templates = list(templates) or pararel_templates(relation)
    if not templates:
        raise InputError(f"--fact {text!r}: relation {relation} has no bundled templates; give --template")
    for t in templates:
        if t.count("[X]") != 1 or t.count("[Y]") != 1:
            raise InputError(f"template {t!r} must contain [X] and [Y] once each")
    prompts = tuple(dict.fromkeys(make_prompt(t, subject).text for t in templates))
    return NewFact(f"{relation}:{subject}->{obj}", relation, subject, obj, prompts)


def _refuse_contradictions(facts: Sequence[NewFact], known: Sequence[InjectedFact]) -> None:
    """A fact whose subject and relation an applied injection (or an earlier line) already gave an object."""
    held = {(k.subject, k.relation_id): (k.object, f"injection {k.injection_id}") for k in known if k.status == APPLIED}
    for f in facts:
        old = held.get((f.subject, f.relation_id))
        if old is not None:
            what = "repeats" if old[0] == f.object else "contradicts"
            raise ConflictError(
                f"fact {f.id!r} ({f.relation_id}: {f.subject} -> {f.object}) {what} {old[1]} "
                f"({f.subject} -> {old[0]}); roll that back first"
            )
        held[(f.subject, f.relation_id)] = (f.object, f"fact {f.id!r} of this input")


def _layers_of(lm: LoadedModel, f: NewFact, spec: InjectSpec, at: InjectionAtlas) -> tuple[list[int], str]:
    n = lm.adapter.n_layers
    if spec.layers:
        for layer in spec.layers:
            if not 0 <= layer < n:
                raise InputError(f"layer {layer} is out of range: model {lm.name!r} has layers 0..{n - 1}")
        return sorted(set(spec.layers)), "layers"
    if spec.key_position == "subject":
        return [round((n - 1) / 3)], "subject"
    if at.layers.get(f.relation_id) is not None:
        return [at.layers[f.relation_id]], "relation"
    if at.run_layer is not None:
        return [at.run_layer], "run"
    return [round(0.8 * (n - 1))], "depth"


def inject_facts(
    store: Store, lm: ModelArg, run_name: str | int, facts: Sequence[NewFact], spec: InjectSpec | None = None
) -> InjectionRecord:
    """Inject `facts` (see the module docstring); recorded, audited and reversible."""
    spec = spec or InjectSpec()
    spec.check()
    if not facts:
        raise InputError("no fact to inject")
    _refuse_contradictions(facts, [])
    lm = resolve_model(store, lm, _run_of(store, run_name))
    at = read_atlas(store, run_name, facts, spec, causal=not lm.adapter.is_masked_lm)
    _refuse_contradictions(facts, at.known)
    check_injectable(lm.adapter)
    layers = [_layers_of(lm, f, spec, at) for f in facts]
    encoded = [encode_fact(lm, f, spec.heldout) for f in facts]
    plan, audited = _plan(lm, at, facts, encoded, spec)
    out = _compute(_Work(lm, at, plan, facts, encoded, [lay for lay, _ in layers], spec, audited))
    rows = [
        InjectedFact(
            i,
            f.id,
            f.relation_id,
            f.subject,
            f.object,
            enc[2][: len(enc[0])],
            enc[2][len(enc[0]) :],
            _fact_info(lm, out["built"][i], layers[i][1], at.replaced[(f.subject, f.relation_id)]),
        )
        for i, (f, enc) in enumerate(zip(facts, encoded))
    ]
    return _write(store, at, spec, out, rows, lm)


def _run_of(store: Store, run_name: str | int) -> Run:
    with store.begin() as conn:
        return resolve_run(conn, run_name)


def _plan(
    lm: LoadedModel, at: InjectionAtlas, facts: Sequence[NewFact], encoded: list, spec: InjectSpec
) -> tuple[audit.AuditPlan, set[str]]:
    """What the audit measures, and the ids of the other facts it measures (never negatives)."""
    others = audit.untouched(at.facts.values(), at.replaced)
    chosen = sample(others, spec.audit_facts, f"inject-audit:{spec.seed}")
    # with --keep-gold the values read the objects of the subject's facts outside the run: the
    # same-subject group then measures the run's facts only, whose objects they never read
    same = audit.untouched([f for f in at.same_subject if not spec.keep_gold or f.id in at.facts], at.replaced)
    plan = audit.AuditPlan(
        [e[0] for e in encoded],
        [e[1] for e in encoded],
        EvalSet.of("others", lm, chosen),
        EvalSet.of("same_subject", lm, sample(same, spec.audit_facts, f"inject-same:{spec.seed}")),
        [
            tuple(replaced_tokens(lm, text, at.replaced[(f.subject, f.relation_id)]))
            for f, (train, _, texts) in zip(facts, encoded)
            for text in texts[len(train) :]
        ],
    )
    return plan, {f.id for f in chosen} if spec.audit_unseen else set()


@dataclass
class _Work:
    """What the compute step of an injection works on: the model, what was read, the audit plan,
    the facts with their encoded prompts and layers, the options, and the audited facts' ids."""

    lm: LoadedModel
    at: InjectionAtlas
    plan: audit.AuditPlan
    facts: Sequence[NewFact]
    encoded: list
    layers: list[list[int]]
    spec: InjectSpec
    audited: set[str]


def _compute(work: _Work) -> dict:
    """Measure, widen, build every fact's pairs in order (with room for its guards), measure again
    on the model widened by exactly the pairs built (no transaction open)."""
    lm, at, plan, facts, spec = work.lm, work.at, work.plan, work.facts, work.spec
    with injected_copy(lm, at.run, at.edits, at.stack) as sha_before:
        width_before = lm.adapter.n_neurons
        room = _room(spec) * sum(len(ls) for ls in work.layers)
        before = audit.measure(lm, plan)
        with widened(lm.adapter, [], width_before + room):
            built, shared, own_pool = _build_all(work, width_before)
        pairs = [p for b in built for p in b.pairs]
        for k, p in enumerate(pairs):  # the guards that were not needed leave no empty neurons
            p.index = width_before + 2 * k
        width_after = width_before + 2 * len(pairs)
        with widened(lm.adapter, pairs, width_after):
            sha_after = weights_sha256(lm.model)
            after = audit.measure(lm, plan, pairs)
    verdict = audit.judge(plan, before, after, [b.value.hits if b.value else 0 for b in built])
    verdict["n_negatives"] = int(next(iter(shared.values())).n)
    negative = {r for f in facts for r in own_pools(f, spec)}
    for key, pools in (("n_relation_negatives", negative), ("n_guard_namesakes", {r for r, _ in own_pool} - negative)):
        verdict[key] = {f"{r}@{lay}": n.n for (r, lay), n in sorted(own_pool.items()) if r in pools}
    return dict(
        built=built, sha_before=sha_before, sha_after=sha_after, width=(width_before, width_after), audit=verdict
    )


def _room(spec: InjectSpec) -> int:
    """Neurons a fact may take per layer: its pair, and room for the pair's guard."""
    return 4 if spec.namesake_guards else 2


def _build_all(work: _Work, index: int) -> tuple[list[FactSlots], dict, dict]:
    """Every fact's pairs, built in order on the widened model that holds the earlier ones, each
    fact's at the next free indices from `index`; and the pools' inputs (shared, and own per
    (pool, layer))."""
    lm, at, plan, facts = work.lm, work.at, work.plan, work.facts
    encoded, layers, spec = work.encoded, work.layers, work.spec
    params = BuildParams.of(spec)
    used = sorted({layer for ls in layers for layer in ls})
    pool_layers: dict[str, set[int]] = {}  # each fact's own pools (negatives, guards), at its layers
    for f, ls in zip(facts, layers):
        for pool in own_pools(f, spec) + ([namesakes(f.subject)] if spec.namesake_guards else []):
            pool_layers.setdefault(pool, set()).update(ls)
    shared, own_pool = pool_inputs(lm, at.negatives, used, pool_layers, work.audited)
    key_at = [key_positions(lm, f, items, enc[2], spec) for f, items, enc in zip(facts, plan.train, encoded)]
    own = [answer_inputs(lm.model, lm.adapter, items, used, at=where) for items, where in zip(plan.train, key_at)]
    trained = [it for items in plan.train for it in items] if spec.namesake_guards else []
    shut = answer_inputs(lm.model, lm.adapter, trained, used, every_position=True)  # no guard opens there
    held = injected_golds(at.keep_golds, facts)
    built: list[FactSlots] = []
    for i, (f, items) in enumerate(zip(facts, plan.train)):
        negs = {}
        for layer in layers[i]:
            pool = shared[layer]
            for name in own_pools(f, spec):
                if (name, layer) in own_pool:
                    pool = pool + own_pool[(name, layer)]
            rest = [o[layer] for j, o in enumerate(own) if j != i and not _namesame(facts[j], f, key_at[i])]
            negs[layer] = pool.plus(torch.cat(rest)) if rest else pool
        guard_against = None  # the namesake pool is also read for --namesake-negatives alone
        if spec.namesake_guards:
            names = {layer: own_pool.get((namesakes(f.subject), layer)) for layer in layers[i]}
            guard_against = {lay: (torch.cat(n.blocks), shut[lay]) for lay, n in names.items() if n is not None} or None
        replaced = at.replaced[(f.subject, f.relation_id)]
        keep, golds = fact_keep(lm, f, spec, key_at[i] is not None, at.keep_templates, held, replaced)
        old = replaced_tokens(lm, encoded[i][2][0], replaced)
        extra = prefixed_items(lm, f, encoded[i][2][: len(items)], spec)
        built.append(
            build_fact(
                lm.model,
                lm.adapter,
                items,
                negs,
                layers[i],
                index,
                params,
                key_at[i],
                keep,
                old,
                guard_against,
                extra,
                golds,
            )
        )
        index += _room(spec) * len(layers[i])
    return built, shared, own_pool


def _namesame(other: NewFact, f: NewFact, key_at: list[int] | None) -> bool:
    """Whether `other`'s training prompts are left out of `f`'s negatives: they name the same
    subject where both keys read it, so no gate parts them (SmolLM2, seed 2: "Paulus Manutius"
    died in Stockholm and worked in Pasadena; injected together, both gates stayed shut and
    neither fact was injected). Both slots then open on both facts' prompts; each one's values
    hold the other's new object (`injected_golds`)."""
    return key_at is not None and other.subject == f.subject


def injected_golds(golds: dict[str, dict[str, list[str]]], facts: Sequence[NewFact]) -> dict[str, dict[str, list[str]]]:
    """The objects the values hold on their subject's other relations (`--keep-gold`: the atlas's,
    subject -> relation -> objects), but for a relation this injection gives the subject a new
    object, that one instead of those it replaces."""
    out = {s: dict(rels) for s, rels in golds.items()}
    for f in facts:
        out.setdefault(f.subject, {})[f.relation_id] = [f.object]
    return out


def _fact_info(lm: LoadedModel, b: FactSlots, source: str, replaced: list[str]) -> dict[str, Any]:
    tok = lm.tokenizer
    return {
        "layer_source": source,
        "new_token": tok.decode([b.new_tok]),
        "old_token": None if b.old_tok is None else tok.decode([b.old_tok]),
        "replaces": replaced,
        "gates": [asdict(g) for g in b.gates],
        "value": asdict(b.value) if b.value else None,
        "residual_norm": b.residual,
        "slots": [[p.layer, p.index] for p in b.pairs],
        "guards": [asdict(g) | {"index": p.index if p else None} for g, p in b.guards],
    }


def _write(
    store: Store, at: InjectionAtlas, spec: InjectSpec, out: dict, rows: list[InjectedFact], lm: LoadedModel
) -> InjectionRecord:
    pairs = [pair_bytes(p, i) for i, b in enumerate(out["built"]) for p in b.pairs]
    params = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
        "method": METHOD,
        "model": lm.name,
        "applied_edits": [e.id for e in at.edits],
        "applied_injections": [i.id for i in at.stack],
    }
    with store.begin() as conn:
        check_stack(conn, store.backend, at.run.model_id, at.edits)
        check_injections(conn, store.backend, at.run.model_id, at.stack)
        new = NewInjection(
            at.run.id,
            at.run.model_id,
            sorted({p.layer for p in pairs}),
            params,
            *out["width"],
            out["sha_before"],
            out["sha_after"],
            rows,
            pairs,
        )
        injection_id = insert_injection(store, conn, new)
        set_audit(conn, injection_id, out["audit"])
    return get_injection(store, injection_id)
