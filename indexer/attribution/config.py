"""Attribution settings and results (records shared by the engine's modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Rule = Literal["left", "eleuther"]
AnswerMode = Literal["joint", "first"]


@dataclass(frozen=True)
class IGConfig:
    """Attribution settings.

    `batch_size` is the number of PROMPTS per pass (each expands to n_layers * steps rows; see
    `default_batch_size`). `dtype`, when set and different from the model's (torch.bfloat16 on a
    GPU or an AMX/AVX-512-BF16 CPU), runs the SCALED pass of decoders on a copy of the weights in
    that dtype (made once per model and weight version, see `low_precision`), while the clean run
    (activations, `p_gold`, `gold_rank`) stays in the model's own precision and scores multiply
    the full-precision activations; softmaxes and sums are always at least fp32. Masked LMs run
    the scaled pass under autocast instead. `head_chunk` bounds the full-vocabulary logits held
    at once (elements; default 2**28 on a GPU, where each slice is a few kernel launches that
    the host must issue, 2**23 on a CPU, where cache-sized slices are faster); `mask_token_id` is
    needed for masked LMs when the adapter does not carry one.
    """

    steps: int = 20
    rule: Rule = "left"
    answer: AnswerMode = "joint"
    batch_size: int = 8
    dtype: torch.dtype | None = None
    head_chunk: int | None = None
    mask_token_id: int | None = None
    layers: tuple[int, int] | None = None  # attribute only layers lo..hi (inclusive); the others score 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.rule not in ("left", "eleuther"):
            raise ValueError(f"rule must be 'left' or 'eleuther', got {self.rule!r}")
        if self.answer not in ("joint", "first"):
            raise ValueError(f"answer must be 'joint' or 'first', got {self.answer!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.layers is not None and not 0 <= self.layers[0] <= self.layers[1]:
            raise ValueError(f"layers must be (lo, hi) with 0 <= lo <= hi, got {self.layers!r}")

    def layer_range(self, n_layers: int) -> range:
        """The layers attributed in a model of `n_layers` (all by default)."""
        if self.layers is None:
            return range(n_layers)
        lo, hi = self.layers
        if hi >= n_layers:
            raise ValueError(f"layers {lo}..{hi}: the model has layers 0..{n_layers - 1}")
        return range(lo, hi + 1)


@dataclass
class PromptAttribution:
    """Scores `[n_layers, n_neurons]` (fp32, cpu) plus the unscaled model's P(gold) and gold rank."""

    scores: Tensor
    p_gold: float
    gold_rank: int


@dataclass
class Attributions:
    """The attributions of a list of prompts, stacked and left on the model's device: scores
    `[n, n_layers, n_neurons]` fp32, p_gold `[n]`, gold_rank `[n]` (1-based), in input order.

    Kept on the device so that a caller that needs only a few numbers per prompt (the indexer
    stores ~50 of 46,080 scores) selects them there: nothing then waits for the GPU between
    passes, and only the selection crosses to the host."""

    scores: Tensor
    p_gold: Tensor
    gold_rank: Tensor

    def to_prompts(self) -> list[PromptAttribution]:
        scores, p, r = self.scores.cpu(), self.p_gold.tolist(), self.gold_rank.tolist()
        return [PromptAttribution(scores[i], p[i], int(r[i])) for i in range(len(p))]


def alphas(steps: int, rule: Rule) -> Tensor:
    """Scaling factors of the Riemann sum (fp64 for exactness, cast by the caller)."""
    if rule == "left":
        return torch.arange(steps, dtype=torch.float64) / steps
    return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
