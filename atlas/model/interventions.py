"""Interventions on knowledge neurons: activation hooks and value-slot edits (pure torch).

Two ways to act on a neuron, matching the paper's two experiments:

* Activation interventions (suppress = x0, amplify = x2) change what a neuron *emits* for one
  forward pass. They are frozen dataclasses (stored as JSON next to their results) applied by the
  :func:`applied` context manager, which installs forward-pre-hooks on the FFN output projection
  (whose INPUT is the neuron vector) and always removes them on exit, even on errors.
* Value-slot edits change what a neuron *writes* permanently: the slot is one column (one row for
  GPT-2's Conv1D) of the output projection. :func:`update_slots` is the paper's update rule;
  :func:`slots_bytes` / :func:`slots_from_bytes` give the exact bytes the database keeps so
  that a rollback restores the weights bit for bit.

The module reaches the model only through an adapter and never imports the store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, ExitStack
from dataclasses import asdict, dataclass

import torch

Neuron = tuple[int, int]  # (layer, neuron)


@dataclass(frozen=True)
class ScaleNeurons:
    """Multiply the activations of `neurons` by `factor` at the answer position.

    factor 0 suppresses (the paper's "erase activation"), 2 amplifies. The answer position is the
    last prompt token for left-to-right models: the same position the attribution scaled.
    """

    neurons: tuple[Neuron, ...]
    factor: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", tuple(sorted((int(l), int(n)) for l, n in self.neurons)))

    @classmethod
    def suppress(cls, neurons: Sequence[Neuron]) -> "ScaleNeurons":
        return cls(tuple(neurons), 0.0)

    @classmethod
    def amplify(cls, neurons: Sequence[Neuron]) -> "ScaleNeurons":
        return cls(tuple(neurons), 2.0)

    def to_json(self) -> str:
        return json.dumps({"type": "scale_neurons", **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScaleNeurons":
        doc = json.loads(text)
        if doc.pop("type", None) != "scale_neurons":
            raise ValueError(f"not a scale_neurons intervention: {text[:80]!r}")
        return cls(tuple((l, n) for l, n in doc["neurons"]), float(doc["factor"]))

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for layer, neuron in self.neurons:
            out[layer].append(neuron)
        return dict(out)


def _scale_hook(neurons: list[int], factor: float, positions: torch.Tensor | None):
    """A forward-pre-hook scaling `neurons` of the projection input at `positions` ([B] indices)."""

    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0]
        idx = torch.as_tensor(neurons, dtype=torch.long, device=x.device)
        x = x.clone()
        if positions is None:
            x[..., -1, idx] = x[..., -1, idx] * factor
        else:
            rows = torch.arange(x.shape[0], device=x.device)[:, None]
            pos = positions.to(x.device)[:, None]
            x[rows, pos, idx[None, :]] = x[rows, pos, idx[None, :]] * factor
        return (x, *args[1:])

    return hook


@contextmanager
def applied(adapter, intervention: ScaleNeurons | None, positions: torch.Tensor | None = None) -> Iterator[None]:
    """Run the body with `intervention` active; `positions[b]` = answer position of batch row b.

    positions None means the last position of every row. A None intervention is a no-op, so that
    callers can run baseline and intervened passes through the same code.
    """
    with ExitStack() as stack:
        if intervention is not None:
            for layer, neurons in intervention.by_layer().items():
                handle = adapter.ffn_out(layer).register_forward_pre_hook(
                    _scale_hook(neurons, float(intervention.factor), positions))
                stack.callback(handle.remove)
        yield


# --- value slots -------------------------------------------------------------------------------


def read_slots(adapter, layer: int, neurons: Sequence[int]) -> torch.Tensor:
    """Copies of the value slots `neurons` of `layer`, `[k, hidden]`."""
    return adapter.value_slots(layer)[torch.as_tensor(list(neurons), dtype=torch.long)].clone()


def write_slots(adapter, layer: int, neurons: Sequence[int], values: torch.Tensor) -> None:
    """Overwrite value slots in place (the adapter knows whether slots are rows or columns)."""
    adapter.set_value_slots(layer, list(neurons), values)


def update_slots(v: torch.Tensor, e_old: torch.Tensor, e_new: torch.Tensor,
                 l1_scale: float = 1.0, l2_scale: float = 8.0) -> torch.Tensor:
    """The paper's update rule for value slots `v` `[k, hidden]`:

    v <- v - l1 * e_old + l2 * e_new,  l1 = |v| / |e_old| * l1_scale,  l2 = |v| / |e_new| * l2_scale

    with |.| the L2 norm of each slot, so every slot moves by amounts proportional to its own size.
    Computed in float64 and cast back, so the result does not depend on the slot dtype's rounding
    of intermediate terms.
    """
    v64 = v.double()
    norm = v64.norm(dim=-1, keepdim=True)
    eo, en = e_old.double(), e_new.double()
    l1 = norm / eo.norm() * l1_scale
    l2 = norm / en.norm() * l2_scale
    return (v64 - l1 * eo + l2 * en).to(v.dtype)


def slots_bytes(t: torch.Tensor) -> bytes:
    """Exact bytes of one slot vector (what edit_slots stores)."""
    return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


def slots_from_bytes(data: bytes, dtype: str) -> torch.Tensor:
    """Inverse of :func:`slots_bytes`; `dtype` is the torch dtype's name, e.g. ``float32``."""
    dt = getattr(torch, dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt).clone()


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")
