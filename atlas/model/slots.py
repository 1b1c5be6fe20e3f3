"""Value slots: what a neuron *writes* (one column of a layer's FFN output projection, one row for
GPT-2's Conv1D), read and written in place, with their exact bytes for the database.

`slots_bytes` / `slots_from_bytes` give the exact bytes the edit tables keep, so that a rollback
restores the weights bit for bit; `update_slots` is the paper's update rule. Reaches the model
only through an adapter and never imports the store.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atlas.model.adapters import Adapter


def read_slots(adapter: Adapter, layer: int, neurons: Sequence[int]) -> torch.Tensor:
    """Copies of the value slots `neurons` of `layer`, `[k, hidden]`."""
    return adapter.value_slots(layer)[torch.as_tensor(list(neurons), dtype=torch.long)].clone()


def write_slots(adapter: Adapter, layer: int, neurons: Sequence[int], values: torch.Tensor) -> None:
    """Overwrite value slots in place (the adapter knows whether slots are rows or columns)."""
    adapter.set_value_slots(layer, list(neurons), values)


def update_slots(
    v: torch.Tensor, e_old: torch.Tensor, e_new: torch.Tensor, l1_scale: float = 1.0, l2_scale: float = 8.0
) -> torch.Tensor:
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


@torch.no_grad()
def top_tokens(adapter: Adapter, layer: int, neurons: Sequence[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` tokens each value slot raises most, read through the unembedding and the final
    norm's scale (LM-Debugger's projection of a value vector): token ids and logits, `[n, k]` each."""
    slots = read_slots(adapter, layer, neurons).float()  # [n, hidden]
    every_token = torch.arange(adapter.unembedding().shape[0])
    logits = slots @ adapter.answer_directions(every_token).float().T  # [n, vocab]
    values, ids = logits.topk(min(k, logits.shape[1]), dim=1)
    return ids, values
