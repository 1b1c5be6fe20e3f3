"""Small tensor helpers of the attribution engine: device moves that never wait for the GPU, padding,
precision, and the frozen-model context."""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from indexer.attribution.config import IGConfig


def answer(item: PromptItem, cfg: IGConfig) -> list[int]:
    return list(item.answer_ids[:1] if cfg.answer == "first" else item.answer_ids)


def device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def put(t: Tensor, dev: torch.device) -> Tensor:
    """A host tensor moved to `dev` without waiting for the work queued there: a plain copy to a
    GPU waits for the whole queue, which would leave the GPU idle at the start of every pass."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """eval mode and no weight gradients (only input gradients are needed: half the backward)."""
    flags = [p.requires_grad for p in model.parameters()]
    training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(training)


LOW_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.dtype, Adapter]] = weakref.WeakKeyDictionary()


def low_precision(ad: Adapter, dtype: torch.dtype | None) -> Adapter:
    """An adapter over a copy of `ad.model` in `dtype`, for the scaled pass (`ad` itself when no
    copy is needed). The copy is kept per model and remade when any weight changes: an in-place
    edit bumps the parameter's version counter, a move to another device or a reload changes its
    storage. Autocast would instead re-cast every weight at every call, which on a CPU costs more
    than the bf16 matmuls save."""
    model = ad.model
    if dtype is None or dtype == next(model.parameters()).dtype:
        return ad
    versions = tuple((p._version, p.data_ptr()) for p in model.parameters())
    hit = LOW_COPIES.get(model)
    if hit is None or hit[0] != versions or hit[1] != dtype:
        low = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
        low_ad = type(ad)(low)
        low_ad.mask_token_id = ad.mask_token_id
        LOW_COPIES[model] = hit = (versions, dtype, low_ad)
    return hit[2]


def autocast(model: nn.Module, cfg: IGConfig) -> contextlib.AbstractContextManager:
    dev = device(model)
    if cfg.dtype is None or cfg.dtype == next(model.parameters()).dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=cfg.dtype)


def head_chunk(cfg: IGConfig, dev: torch.device) -> int:
    if cfg.head_chunk is not None:
        return cfg.head_chunk
    return 1 << 23 if dev.type == "cpu" else 1 << 28


def up(x: Tensor) -> Tensor:
    """Softmax-bound values in at least fp32 (bf16/fp16 runs), fp64 kept for exactness checks."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pad(seqs: list[list[int]], value: int = 0) -> Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def first_rank(logits: Tensor, gold: Tensor) -> Tensor:
    """1-based rank of `gold` in each row of `logits` (ties count in the gold's favour)."""
    g = logits.gather(-1, gold[:, None])
    return (logits > g).sum(-1) + 1


# --- decoders: prefix cache + answer-side sweep --------------------------------------------------
