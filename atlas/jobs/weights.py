"""The weights an edit works on: the run's base model, checked by hash, with the applied edits replayed.

Design of the edited weights (the "working copy"): the database is the only state. Each edit
records the exact bytes of every value slot it changed, before and after (`atlas.db.edits`), and
the SHA-256 of the whole weights before and after. The working copy of a model is re-derived on
demand by loading the run's base weights and replaying the still-applied edits oldest first; the
replay is checked against the newest edit's `sha256_after`, so a copy that does not reproduce what
was recorded is refused instead of silently used. Consequences:

* nothing to keep in sync on disk: a rollback is one UPDATE, exact by construction (the original
  bytes go back; the result is checked against `sha256_before`);
* applied edits form a stack (each starts from the previous one's hash), rolled back newest first;
  an edit reads its slots' `original` bytes from the working copy, so overlapping edits roll back
  to exactly the state each started from;
* "trial" edits (made by `atlas audit --sample`) are measured against the base weights and never
  join the stack.

Every function takes a LoadedModel holding the run's BASE weights (checked by hash) and leaves it
holding them again when it returns or fails: edits live in the database, not in the caller's model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from atlas.db.edits import EditRows, SlotBytes, applied_stack
from atlas.db.runs import Run, get_run, resolve_run
from atlas.db.store import Store
from atlas.errors import EditError, WeightsMismatch
from atlas.model.loading import WEIGHT_DTYPES, LoadedModel, check_device, load_model, weights_sha256
from atlas.model.slots import dtype_name, read_slots, slots_bytes, slots_from_bytes, write_slots
from atlas.options import ModelChoice

ModelArg = LoadedModel | ModelChoice | str | None  # loaded; named (and where it runs); a spec; None: the run's own


@dataclass
class Slot:
    """One value slot an edit changes: its exact values before and after."""

    layer: int
    neuron: int
    original: torch.Tensor
    edited: torch.Tensor

    def to_bytes(self) -> SlotBytes:
        return SlotBytes(
            self.layer,
            self.neuron,
            slots_bytes(self.original),
            slots_bytes(self.edited),
            dtype_name(self.original),
            self.factor(),
        )

    def factor(self) -> float:
        """(v . dv) / |v|^2: how much of the slot's own direction the edit writes away (first order)."""
        v, dv = self.original.double(), self.edited.double() - self.original.double()
        norm = float(v @ v)
        return float(v @ dv) / norm if norm > 0 else 0.0

    @classmethod
    def from_bytes(cls, s: SlotBytes) -> Slot:
        return cls(s.layer, s.neuron, slots_from_bytes(s.original, s.dtype), slots_from_bytes(s.edited, s.dtype))


def slots_of(edits: Sequence[EditRows]) -> list[Slot]:
    """Every slot of `edits`, in order (replaying them in this order gives the edits' state)."""
    return [Slot.from_bytes(s) for e in edits for s in e.slots]


def resolve_model(store: Store, lm: ModelArg, run: Run | str | int) -> LoadedModel:
    """`lm` itself, or the model `lm` names, or (None) the model the run was indexed with.

    Loading is only a convenience: every operation still checks the weights' hash against the run.
    """
    if isinstance(lm, LoadedModel):
        return lm
    run = run if isinstance(run, Run) else get_run(store, run)
    choice = lm if isinstance(lm, ModelChoice) else ModelChoice(lm)
    check_device(choice.device)
    # in the dtype the run's weights were loaded in: fp32, or bf16/fp16 for a GPU run at that precision
    return load_model(choice.spec or run.model_spec(), device=choice.device, dtype=WEIGHT_DTYPES[run.weights])


def check_weights(lm: LoadedModel, run: Run) -> None:
    """Refuse weights other than the run's: attributions only describe the model they came from."""
    sha = weights_sha256(lm.model)
    if sha != run.model_sha256:
        raise WeightsMismatch(
            f"run {run.name!r} was indexed with model {run.model_name!r} (weights sha256 {run.model_sha256[:12]}…), "
            f"but the loaded weights of {lm.name!r} have sha256 {sha[:12]}…"
        )


@contextmanager
def slots_written(lm: LoadedModel, slots: Sequence[Slot], which: str = "edited") -> Iterator[None]:
    """Write `which` (edited|original) values of `slots` in order, restoring what was there on exit.

    Slots go in groups (`_layer_groups`): one read and one write per group. Reading a slot copies
    its whole layer off the device, so a slot at a time cost a layer copy per slot: auditing an
    erase of whole layers (4,608 slots) peaked at ~15 GB of host memory."""
    saved: list[tuple[int, list[int], torch.Tensor]] = []
    try:
        for group in _layer_groups(slots):
            layer, neurons = group[0].layer, [s.neuron for s in group]
            saved.append((layer, neurons, read_slots(lm.adapter, layer, neurons)))
            write_slots(lm.adapter, layer, neurons, torch.stack([getattr(s, which) for s in group]))
        yield
    finally:
        for layer, neurons, values in reversed(saved):
            write_slots(lm.adapter, layer, neurons, values)


def _layer_groups(slots: Sequence[Slot]) -> Iterator[list[Slot]]:
    """Runs of consecutive slots of one layer with distinct neurons: writing a run at once gives
    what writing its slots one by one gives (a neuron seen again starts a new run, so the later
    value still wins and the restore still ends on the first value saved)."""
    group: list[Slot] = []
    seen: set[int] = set()
    for s in slots:
        if group and (s.layer != group[0].layer or s.neuron in seen):
            yield group
            group, seen = [], set()
        group.append(s)
        seen.add(s.neuron)
    if group:
        yield group


@contextmanager
def working_copy(lm: LoadedModel, run: Run, stack: Sequence[EditRows]) -> Iterator[str]:
    """The base model with the edits of `stack` replayed, oldest first; yields the weights' hash.

    The base weights are checked against the run's model, the replay against the newest replayed
    edit's recorded hash. Everything is undone on exit.
    """
    check_weights(lm, run)
    with slots_written(lm, slots_of(stack)):
        sha = run.model_sha256
        if stack:
            sha = weights_sha256(lm.model)
            if sha != stack[-1].sha256_after:
                raise EditError(
                    f"replaying the applied edits {[e.id for e in stack]} gives weights sha256 {sha[:12]}…, "
                    f"not the {stack[-1].sha256_after[:12]}… recorded by edit {stack[-1].id}"
                )
        yield sha


@contextmanager
def current_weights(store: Store, lm: LoadedModel, run: str | int) -> Iterator[str]:
    """The run's model as its applied edits leave it (read first, then replayed); yields the hash."""
    with store.begin() as conn:
        found = resolve_run(conn, run)
        stack = applied_stack(conn, store.backend, found.model_id)
    with working_copy(lm, found, stack) as sha:
        yield sha


def layer_change(
    lm: LoadedModel, layer: int, delta: dict[int, torch.Tensor], projector: torch.Tensor | None
) -> list[Slot]:
    """The slots of `layer` after adding `delta[neuron]` (`[hidden]`) to the chosen slots, the
    whole change first restricted by `projector` (`[N, N]`, a null-space projection) when given;
    only slots whose bytes change are returned (and recorded)."""
    whole = lm.adapter.value_slots(layer)  # [N, hidden]
    change = torch.zeros(whole.shape, dtype=torch.float64)
    for neuron, d in delta.items():
        change[neuron] += d.double()
    if projector is not None:
        change = projector @ change
    new = (whole.double() + change).to(whole.dtype)
    return [Slot(layer, n, whole[n], new[n]) for n in range(whole.shape[0]) if not torch.equal(whole[n], new[n])]
