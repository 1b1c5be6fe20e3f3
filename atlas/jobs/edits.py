"""Editing a model through its knowledge neurons: the machinery every edit shares.

Every function is read -> compute -> write: one transaction reads the run, its facts, neurons and
the applied edits; the model then runs with no transaction open (on DuckDB an open one blocks the
only writer); one transaction writes the edit, after checking that the applied edits did not
change meanwhile. How the edited weights are derived and checked is `atlas.jobs.weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atlas.db.edits import (
    APPLIED,
    TRIAL,
    EditRecord,
    NewEdit,
    check_stack,
    get_edit,
    insert_edit,
)
from atlas.db.neurons import Workset
from atlas.db.store import Store
from atlas.errors import EditError
from atlas.jobs.weights import Slot, slots_written, working_copy
from atlas.model.loading import LoadedModel, weights_sha256
from atlas.model.scoring import single_token_id


@dataclass
class Outcome:
    """What computing an edit gave: its slots, the weights' hashes around it, the measurements
    (and those of the control edit, when there is one)."""

    slots: list[Slot]
    sha_before: str
    sha_after: str
    before: Any
    after: Any
    control_after: Any = None


SlotMaker = Callable[[LoadedModel], list[Slot]]


def apply_and_measure(
    lm: LoadedModel,
    ws: Workset,
    make_slots: SlotMaker,
    measure_fn: Callable[[LoadedModel], Any],
    status: str,
    control: SlotMaker | None = None,
) -> Outcome:
    """On the working copy (the base weights for a trial edit): `make_slots(lm)` reads the current
    slots and returns the edited ones; `measure_fn` runs before, after, and with the `control`
    slots instead (a control edit of the same form on other neurons), all in one place."""
    with working_copy(lm, ws.run, [] if status == TRIAL else ws.stack) as sha_before:
        slots = make_slots(lm)
        control_slots = control(lm) if control else None
        before = measure_fn(lm)
        with slots_written(lm, slots):
            sha_after = weights_sha256(lm.model)
            after = measure_fn(lm)
        control_after = None
        if control_slots is not None:
            with slots_written(lm, control_slots):
                control_after = measure_fn(lm)
    return Outcome(slots, sha_before, sha_after, before, after, control_after)


def record(
    store: Store, ws: Workset, kind: str, target: str, params: dict, out: Outcome, metrics: dict, status: str
) -> EditRecord:
    """Write the edit (an applied one only if the applied edits are still those it started from)."""
    with store.begin() as conn:
        if status == APPLIED:
            check_stack(conn, store.backend, ws.run.model_id, ws.stack)
        edit_id = insert_edit(
            store,
            conn,
            NewEdit(
                ws.run.id,
                ws.run.model_id,
                kind,
                target,
                params,
                status,
                out.sha_before,
                out.sha_after,
                [s.to_bytes() for s in out.slots],
                metrics,
            ),
        )
    return get_edit(store, edit_id)


def token_id(lm: LoadedModel, text: str, what: str) -> int:
    """The single token of `text` for the model, or an `EditError` naming it."""
    try:
        return single_token_id(lm.tokenizer, text)
    except ValueError as exc:
        raise EditError(f"unknown {what} token {text!r}: {exc}") from None
