"""The weights an injection works on, and undoing or materialising injections.

Like edits (`atlas.jobs.weights`), the database is the only state: an injected model is the run's
base weights (checked by hash), the applied edits replayed, then every applied injection's slot
pairs widened in, oldest first (`atlas.model.inject.widened`); the result is checked against the
newest injection's recorded `sha256_after`, so a state that does not reproduce what was recorded
(an edit made or rolled back underneath an injection, say) is refused instead of used. Rolling
back the newest injection is one UPDATE after checking that the stack without it hashes to its
`sha256_before`; the model given in is always left as it came (original modules and config).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from atlas.db.edits import EditRows, applied_stack
from atlas.db.injections import (
    APPLIED,
    ROLLED_BACK,
    InjectionRecord,
    InjectionRows,
    PairBytes,
    check_injections,
    get_injection,
    injection_row,
    mark_rolled_back,
    model_injections,
)
from atlas.db.runs import Run, resolve_run
from atlas.db.store import Store
from atlas.errors import EditError
from atlas.jobs.weights import ModelArg, resolve_model, working_copy
from atlas.model.inject import SlotPair, widened
from atlas.model.loading import LoadedModel, weights_sha256
from atlas.model.slots import slots_bytes, slots_from_bytes


def pair_of(b: PairBytes) -> SlotPair:
    return SlotPair(
        b.layer,
        b.neuron,
        slots_from_bytes(b.key, b.dtype),
        b.threshold,
        b.slope,
        slots_from_bytes(b.value, b.dtype),
        b.sharpness,
    )


def pair_bytes(p: SlotPair, position: int) -> PairBytes:
    """Exact bytes of a pair (float64: the widened weights are recomputed from them bit for bit)."""
    key, value = p.key.double(), p.value.double()
    return PairBytes(
        p.layer, p.index, position, slots_bytes(key), slots_bytes(value), "float64", p.threshold, p.slope, p.sharpness
    )


@contextmanager
def injected_copy(
    lm: LoadedModel, run: Run, edits: Sequence[EditRows], stack: Sequence[InjectionRows]
) -> Iterator[str]:
    """The run's model with `edits` replayed and `stack` widened in; yields the weights' hash."""
    with working_copy(lm, run, edits) as sha:
        pairs = [pair_of(p) for i in stack for p in i.pairs]
        width = stack[-1].width_after if stack else lm.adapter.n_neurons
        with widened(lm.adapter, pairs, width):
            if stack:
                sha = weights_sha256(lm.model)
                if sha != stack[-1].sha256_after:
                    raise EditError(
                        f"replaying the applied injections {[i.id for i in stack]} gives weights sha256 "
                        f"{sha[:12]}…, not the {stack[-1].sha256_after[:12]}… recorded by injection {stack[-1].id} "
                        "(were edits made or rolled back underneath it?)"
                    )
            yield sha


def _read(store: Store, injection_id: int) -> tuple[Any, Run, list[EditRows], list[InjectionRows]]:
    with store.begin() as conn:
        row = injection_row(conn, injection_id)
        run = resolve_run(conn, row.run_id)
        edits = applied_stack(conn, store.backend, run.model_id)
        return row, run, edits, model_injections(conn, store.backend, run.model_id)


def rollback_injection(store: Store, lm: ModelArg, injection_id: int) -> InjectionRecord:
    """Remove injection `injection_id` (the newest applied one of its model); the weights without it
    must hash to the `sha256_before` it recorded."""
    row, run, edits, every = _read(store, injection_id)
    if row.status == ROLLED_BACK:
        raise EditError(f"injection {injection_id} was already rolled back (at {row.rolled_back_at})")
    stack = [i for i in every if i.status == APPLIED]
    if stack[-1].id != injection_id:
        raise EditError(
            f"injection {injection_id} cannot be rolled back before injection {stack[-1].id}: injections of "
            f"model {run.model_name!r} are rolled back newest first"
        )
    lm = resolve_model(store, lm, run)
    with injected_copy(lm, run, edits, stack[:-1]) as sha:
        pass
    if sha != row.sha256_before:
        raise EditError(
            f"removing injection {injection_id}'s slots gives sha256 {sha[:12]}…, "
            f"not the {row.sha256_before[:12]}… it started from"
        )
    with store.begin() as conn:
        check_injections(conn, store.backend, run.model_id, stack)
        mark_rolled_back(conn, injection_id)
    return get_injection(store, injection_id)


@contextmanager
def as_of_injection(store: Store, lm: ModelArg, injection_id: int) -> Iterator[tuple[LoadedModel, Run, str]]:
    """The model as of injection `injection_id` (the applied stack up to it): the loaded model, its
    run and the weights' hash, for reading; the model is left as it came on exit."""
    row, run, edits, every = _read(store, injection_id)
    if row.status == ROLLED_BACK:
        raise EditError(f"injection {injection_id} was rolled back; there is no such model")
    stack = [i for i in every if i.status == APPLIED and i.id <= injection_id]
    lm = resolve_model(store, lm, run)
    with injected_copy(lm, run, edits, stack) as sha:
        yield lm, run, sha


def export_injection(store: Store, lm: ModelArg, injection_id: int, out_dir: Path) -> Path:
    """Write the model as of injection `injection_id` (its stack) as a Hugging Face safetensors
    directory; the config says the wider `intermediate_size` (and `mlp_bias` for LLaMA)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EditError(f"output folder {str(out_dir)!r} exists and is not empty")
    with as_of_injection(store, lm, injection_id) as (lm, run, sha), torch.no_grad():
        out_dir.mkdir(parents=True, exist_ok=True)
        lm.model.save_pretrained(out_dir, safe_serialization=True)
        lm.tokenizer.save_pretrained(out_dir)
        note = {"injection_id": injection_id, "run": run.name, "base_sha256": run.model_sha256, "sha256": sha}
        (out_dir / "kn_atlas_injection.json").write_text(json.dumps(note, indent=1))
    return out_dir
