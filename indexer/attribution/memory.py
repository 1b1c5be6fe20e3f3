"""How many prompts a GPU pass holds, measured on the model itself rather than estimated.

A pass's memory is a fixed part (the clean run's cache, the head's vocabulary slice, workspace)
plus a part per prompt (its layers x steps re-run rows). Two trial passes of `small` and `large`
copies of one prompt give both: per prompt = the slope of the peaks, fixed = what is left. The
pass then takes as many prompts as `share` of the memory free after loading holds, at most `cap`.
Estimating from the shape instead was off by 1.5x on SmolLM2 and ignored what the kernels allocate
as workspace; a measured size also grows by itself when `--layers` attributes fewer layers.

A pass can still fail (a longer prompt than the trial's, another process taking memory): the
indexer then halves its pass and goes on (`indexer.job.attributor`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from indexer.attribution.config import IGConfig
from indexer.attribution.ig import attribute_stacked
from indexer.attribution.tensors import device


@dataclass(frozen=True)
class PassMemory:
    """Bytes a pass needs: `fixed + per_prompt * n`, and the bytes free for passes."""

    fixed: float
    per_prompt: float
    free: float

    def prompts(self, share: float = 0.9, cap: int = 512) -> int:
        """Prompts per pass that fit in `share` of the free memory (1 at least, `cap` at most)."""
        room = share * self.free - self.fixed
        return int(max(1, min(cap, room // max(self.per_prompt, 1.0))))


def _peak(model: nn.Module, adapter: Adapter, trial: PromptItem, n: int, cfg: IGConfig) -> float:
    dev = device(model)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    attribute_stacked(model, adapter, [trial] * n, replace(cfg, batch_size=n))
    torch.cuda.synchronize(dev)
    return float(torch.cuda.max_memory_allocated(dev) - base)


def measure(
    model: nn.Module, adapter: Adapter, trial: PromptItem, cfg: IGConfig, small: int = 1, large: int = 4
) -> PassMemory:
    """The memory of passes of `trial` on the model's GPU (see the module docstring)."""
    dev = device(model)
    if dev.type != "cuda":
        raise ValueError("pass memory is measured on a CUDA device")
    lo, hi = _peak(model, adapter, trial, small, cfg), _peak(model, adapter, trial, large, cfg)
    per_prompt = max((hi - lo) / (large - small), 1.0)
    free, _ = torch.cuda.mem_get_info(dev)
    held = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)  # cached by torch, usable
    return PassMemory(fixed=max(lo - small * per_prompt, 0.0), per_prompt=per_prompt, free=float(free + held))
