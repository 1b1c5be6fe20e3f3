"""Undoing and materialising edits: roll the newest applied edit back, export any state as a model.

Both replay the recorded slots on the run's base weights (`atlas.jobs.weights`) and check the
result against the recorded hashes; a rollback writes one row (read -> compute -> write).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atlas.db.edits import (
    APPLIED,
    ROLLED_BACK,
    TRIAL,
    EditRecord,
    EditRows,
    check_stack,
    edit_row,
    get_edit,
    mark_rolled_back,
    model_edits,
)
from atlas.db.runs import Run, resolve_run
from atlas.db.store import Store
from atlas.errors import EditError
from atlas.jobs.weights import ModelArg, resolve_model, slots_of, slots_written, working_copy
from atlas.model.loading import weights_sha256


def _read_edit(store: Store, edit_id: int) -> tuple[Any, Run, list[EditRows]]:
    """The edit's row, its run and every edit of its model (one transaction)."""
    with store.begin() as conn:
        row = edit_row(conn, edit_id)
        run = resolve_run(conn, row.run_id)
        return row, run, model_edits(conn, store.backend, run.model_id)


def rollback(store: Store, lm: ModelArg, edit_id: int) -> EditRecord:
    """Undo edit `edit_id` (the newest applied edit of its model) and check the weights come back exactly."""
    row, run, edits = _read_edit(store, edit_id)
    if row.status == ROLLED_BACK:
        raise EditError(f"edit {edit_id} was already rolled back (at {row.rolled_back_at})")
    if row.status == TRIAL:
        raise EditError(f"edit {edit_id} is a trial edit (made by an audit sample); it was never applied")
    stack = [e for e in edits if e.status == APPLIED]
    if stack[-1].id != edit_id:
        raise EditError(
            f"edit {edit_id} cannot be rolled back before edit {stack[-1].id}: edits of model "
            f"{run.model_name!r} are rolled back newest first"
        )
    lm = resolve_model(store, lm, run)
    with working_copy(lm, run, stack), slots_written(lm, slots_of(stack[-1:]), "original"):
        sha = weights_sha256(lm.model)
    if sha != row.sha256_before:
        raise EditError(
            f"restoring edit {edit_id}'s original slots gives sha256 {sha[:12]}…, "
            f"not the {row.sha256_before[:12]}… it started from"
        )
    with store.begin() as conn:
        check_stack(conn, store.backend, run.model_id, stack)
        mark_rolled_back(conn, edit_id)
    return get_edit(store, edit_id)


def export(store: Store, lm: ModelArg, edit_id: int, out_dir: Path) -> Path:
    """Write the weights as of edit `edit_id` (its stack, or base + itself for a trial) as safetensors."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EditError(f"output folder {str(out_dir)!r} exists and is not empty")
    row, run, edits = _read_edit(store, edit_id)
    if row.status == ROLLED_BACK:
        raise EditError(f"edit {edit_id} was rolled back; there is no such model to export")
    lm = resolve_model(store, lm, run)
    trial = row.status == TRIAL
    stack = [] if trial else [e for e in edits if e.status == APPLIED and e.id <= edit_id]
    own: Sequence[EditRows] = [e for e in edits if e.id == edit_id] if trial else []
    with working_copy(lm, run, stack), slots_written(lm, slots_of(own)):
        sha = weights_sha256(lm.model)
        if sha != row.sha256_after:
            raise EditError(
                f"the weights of edit {edit_id} hash to {sha[:12]}…, not the recorded {row.sha256_after[:12]}…"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        lm.model.save_pretrained(out_dir, safe_serialization=True)
        lm.tokenizer.save_pretrained(out_dir)
        (out_dir / "kn_atlas_edit.json").write_text(
            json.dumps({"edit_id": edit_id, "run": run.name, "base_sha256": run.model_sha256, "sha256": sha}, indent=1)
        )
    return out_dir
