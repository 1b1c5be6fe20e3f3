"""Keys and gates of injected slots, from the model's own hidden states (no training).

For a fact, X+ `[n+, hidden]` are the FFN inputs x (post-norm) of the chosen layer where the key
reads its training prompts (the subject's last token, by default; or the answer position: the last
prompt token, the first mask of a masked LM), X-
`[n-, hidden]` those of hard negatives, at every position: a shared pool of prompts of other facts
(of the injected relations and of the others), a pool of each injected relation's own prompts with
other subjects (the same templates: the hardest negatives), optionally a pool of the facts whose
subject contains the injected one's last word in any case ("University of Chile" for "Chile"), general text, the other
facts being injected (where their keys read; not those of the fact's own subject when the keys read
the subject, `atlas.jobs.inject`) and the fact's own object being spelled. A plain normalised mean of X+
also fires on the relation's other facts (they share the template), so the key is the Fisher
discriminant direction with a pooled within-class covariance

    w = (S- + lambda S+ + eps I)^-1 (mu+ - mu-) / |...|,   eps = ridge * tr(S-) / hidden,

with S-, mu- the covariance and mean of X- (summed from per-pool `Moments`) and S+ the scatter of
X+ around its mean: lambda (`pos_scatter`, default 1) discounts the directions in which a fact's
own paraphrases differ, so that a held-out paraphrase scores like the training ones and a key is
not built on what one template says. Optionally (`hard`, off by default), `rounds` times: the
`hard` negatives H that score highest on w add their scatter (1/|H|) sum (x - mu-)(x - mu-)^T to
the matrix and w is solved again (it generalises better to held-out paraphrases but opens on
unseen general text: BENCHMARKS.md). The gate lies on the scores s = w . x:
lo = max s(X-), hi = min s(X+); the slot starts at b = lo + low (hi - lo) and saturates at
lo + high (hi - lo) (`widen` turns b and a = 1 / (saturation - b) into a clamped ramp). It never
starts below lo: when the sides overlap (hi <= lo) the slot starts at lo and saturates at the mean
score of the training prompts above it, giving up those below (`Gate.separable` is false;
`--gate-overlap open` instead saturates every training prompt and lets the negatives above
hi - (mean s(X+) - hi) / 4 open it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.forms import answer_positions


@torch.no_grad()
def answer_inputs(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    layers: Sequence[int],
    batch_size: int = 32,
    every_position: bool = False,
    at: Sequence[int] | None = None,
) -> dict[int, Tensor]:
    """FFN inputs at each item's answer position (the last prompt token; the first mask of a masked
    LM), or at `at` (one position per item: a subject-keyed slot's reading point): {layer:
    `[n_items, hidden]`} (float64); with `every_position`, at every position of every item
    (`[n_tokens, hidden]`: negatives)."""
    seen: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    dev = next(model.parameters()).device
    for start in range(0, len(items), batch_size):
        ids, attn, pos = answer_positions(adapter, items[start : start + batch_size])
        if at is not None:
            pos = torch.tensor(list(at[start : start + batch_size]), dtype=torch.long)
        grabbed = _grab(model, adapter, layers, ids.to(dev), attn.to(dev))
        for layer in layers:
            got = grabbed[layer].double().cpu()
            seen[layer].append(got[attn.bool()] if every_position else got[torch.arange(len(pos)), pos])
    return {
        layer: torch.cat(v) if v else torch.zeros(0, adapter.hidden_size, dtype=torch.float64)
        for layer, v in seen.items()
    }


def _grab(model: torch.nn.Module, adapter: Adapter, layers: Sequence[int], ids: Tensor, attn: Tensor) -> dict:
    """One forward pass recording each layer's FFN input `[B, S, hidden]`."""
    got: dict[int, Tensor] = {}
    handles = [
        adapter.ffn_in(layer).register_forward_pre_hook(lambda _m, args, layer=layer: got.__setitem__(layer, args[0]))
        for layer in layers
    ]
    try:
        extra = {"token_type_ids": torch.zeros_like(ids)} if adapter.is_masked_lm else {}
        model(input_ids=ids, attention_mask=attn, **extra)
    finally:
        for h in handles:
            h.remove()
    return got


@torch.no_grad()
def text_inputs(
    model: torch.nn.Module, adapter: Adapter, ids: Sequence[int], layers: Sequence[int], chunk: int = 256
) -> dict:
    """FFN inputs at every position of one token sequence (general text), read in chunks of
    `chunk` tokens: {layer: `[S, hidden]`}."""
    dev = next(model.parameters()).device
    parts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(ids), chunk):
        t = torch.tensor([list(ids[start : start + chunk])], device=dev)
        got = _grab(model, adapter, layers, t, torch.ones_like(t))
        for layer in layers:
            parts[layer].append(got[layer][0].double().cpu())
    return {layer: torch.cat(v) for layer, v in parts.items()}


def text_chunk(adapter: Adapter) -> int:
    """Tokens per chunk of general text: 256, or fewer where the model's positions end sooner."""
    limit = adapter.max_positions_exact() if hasattr(adapter, "max_positions_exact") else None
    return min(256, limit - 1) if limit else 256


@dataclass
class Moments:
    """Count, sum and sum of outer products of some FFN inputs (float64): what the key needs of a
    large set of negatives, added up per part (shared pool, relation pool, per-fact extras)."""

    n: int
    total: Tensor  # [hidden]
    gram: Tensor  # [hidden, hidden]

    @classmethod
    def of(cls, x: Tensor) -> Moments:
        x = x.double()
        return cls(x.shape[0], x.sum(0), x.T @ x)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.gram + other.gram)

    def mean(self) -> Tensor:
        return self.total / max(self.n, 1)

    def cov(self) -> Tensor:
        mu = self.mean()
        return (self.gram - self.n * torch.outer(mu, mu)) / max(self.n - 1, 1)


@dataclass
class Negatives:
    """Hard negatives of one layer: their rows, in blocks (the gate takes their highest score),
    and their moments (the key takes their mean and covariance)."""

    blocks: list[Tensor]
    moments: Moments

    @classmethod
    def of(cls, *blocks: Tensor) -> Negatives:
        kept = [b.float() for b in blocks if b.shape[0]]
        moments = Moments.of(kept[0]) if kept else None
        for b in kept[1:]:
            moments = moments + Moments.of(b)
        if moments is None:
            raise ValueError("no negatives")
        return cls(kept, moments)

    def __add__(self, other: Negatives) -> Negatives:
        return Negatives(self.blocks + other.blocks, self.moments + other.moments)

    def plus(self, x: Tensor) -> Negatives:
        """These negatives and the rows `x` (a fact's own extras)."""
        return self + Negatives.of(x) if x.shape[0] else self

    @property
    def n(self) -> int:
        return self.moments.n

    def scores(self, w: Tensor) -> Tensor:
        return torch.cat([b.double() @ w for b in self.blocks])

    def top(self, w: Tensor, k: int) -> Tensor:
        """The `k` rows that score highest on `w` `[k, hidden]` (float64)."""
        s = self.scores(w)
        idx = torch.topk(s, min(k, s.shape[0])).indices
        ends = torch.tensor([b.shape[0] for b in self.blocks]).cumsum(0)
        which = torch.searchsorted(ends, idx, right=True)
        starts = ends - torch.tensor([b.shape[0] for b in self.blocks])
        return torch.stack([self.blocks[int(j)][int(i - starts[j])] for i, j in zip(idx, which)]).double()


def discriminant(
    pos: Tensor,
    neg: Tensor | Negatives,
    ridge: float = 0.05,
    pos_scatter: float = 1.0,
    hard: int = 0,
    rounds: int = 0,
) -> Tensor:
    """The unit key w `[hidden]` separating `pos` `[n+, hidden]` from the negatives (see the module
    docstring): with `rounds` of hard-negative weighting, each adding the scatter of the `hard`
    negatives that score highest on the current key; the plain mean difference when there are too
    few negatives for a covariance."""
    neg = neg if isinstance(neg, Negatives) else Negatives.of(neg)
    mu = neg.moments.mean()
    diff = pos.mean(0) - mu
    if neg.n < 2:
        return diff / diff.norm()
    cov = neg.moments.cov()
    eps = ridge * float(cov.trace()) / cov.shape[0] + 1e-12
    cov = cov + eps * torch.eye(cov.shape[0], dtype=cov.dtype)
    if pos_scatter > 0 and pos.shape[0] > 1:
        centred = pos - pos.mean(0)
        cov = cov + pos_scatter * centred.T @ centred / (pos.shape[0] - 1)
    w = torch.linalg.solve(cov, diff)
    for _ in range(rounds if hard > 0 else 0):
        top = neg.top(w / w.norm(), hard) - mu
        cov = cov + top.T @ top / top.shape[0]
        w = torch.linalg.solve(cov, diff)
    return w / w.norm()


@dataclass(frozen=True)
class Gate:
    """Where a slot's ramp lies on the key's scores: silent up to `threshold`, full at `saturation`."""

    threshold: float
    saturation: float
    neg_max: float
    pos_min: float
    separable: bool

    @property
    def slope(self) -> float:
        return 1.0 / (self.saturation - self.threshold)


def gate(pos_scores: Tensor, neg_scores: Tensor, low: float = 0.25, high: float = 0.9, overlap: str = "silent") -> Gate:
    """The ramp between the negatives' highest and the positives' lowest score (module docstring).
    Where the two overlap, `overlap="silent"` keeps the slot shut on every negative and gives up the
    training prompts below them; `"open"` saturates every training prompt and lets the negatives
    above a quarter of the positives' spread below their lowest score open it too."""
    lo = float(neg_scores.max()) if neg_scores.numel() else float(pos_scores.min()) - 1.0
    hi = float(pos_scores.min())
    if hi > lo:
        return Gate(lo + low * (hi - lo), lo + high * (hi - lo), lo, hi, True)
    if overlap == "open":
        spread = max(float(pos_scores.mean()) - hi, 1e-3 * max(abs(hi), 1.0))
        return Gate(hi - 0.25 * spread, hi, lo, hi, False)
    above = pos_scores[pos_scores > lo]  # the training prompts the slot can take without a negative
    spread = max(lo - float(neg_scores.mean()), 1e-3 * max(abs(lo), 1.0)) if neg_scores.numel() else 1.0
    saturation = float(above.mean()) if above.numel() else lo + 0.25 * spread
    return Gate(lo, max(saturation, lo + 1e-3 * spread), lo, hi, False)
