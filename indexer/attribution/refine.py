"""From per-prompt attribution scores to knowledge neurons (pure functions: numpy + stdlib).

Follows the official protocol of Dai et al. (their analysis script), including its quirks:
- coarse neurons of a prompt: score >= t * (max score of that prompt over all layers and
  neurons), t = 0.2 (`>=`, as in the official filter). Deviation: when a prompt's max score
  is <= 0 it has NO coarse neurons (the official code would then keep every neuron scoring above
  a negative threshold, which is meaningless).
- refining over a fact's n prompts: keep neurons that are coarse in >= max(n * p, 3) prompts.
  Consequences kept on purpose: a fact with fewer than 3 prompts never has knowledge neurons;
  p is accumulated by repeated +-0.05 and the threshold compared in floating point, exactly
  like the official code (0.7 - 2 * 0.05 is 0.5999999999999999, so 6 of 10 prompts suffice).
- relation-adaptive p: start at 0.7; evaluate; if the mean number of neurons per fact (over all
  facts of the relation, empty ones included) is < 2, p -= 0.05; if > 5, p += 0.05; stop when it
  lies in [2, 5]; at most 6 evaluations. The returned p is the one that produced the returned
  neurons (the official loop also mutates p after its 6th evaluation; that last change is unused).
- relation-level neurons: neurons present in >= 10% of the relation's facts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Neuron = tuple[int, int]  # (layer, neuron index)

COARSE_T = 0.2
SPARSE_RATIO = 0.1
P_START = 0.7
P_STEP = 0.05
P_MAX_EVALS = 6
MIN_PROMPTS = 3
TARGET = (2.0, 5.0)
RELATION_RATIO = 0.1


@dataclass(frozen=True)
class RefinedNeuron:
    """A knowledge neuron of one fact: mean score over the prompts where it is coarse, and their count."""

    layer: int
    neuron: int
    mean_score: float
    n_prompts: int


@dataclass(frozen=True)
class RelationRefinement:
    """Result of relation-adaptive refining: the p used, neurons per fact (input order), stats."""

    p: float
    facts: list[list[RefinedNeuron]]
    mean_neurons: float
    evaluations: int


def coarse_neurons(scores: np.ndarray, t: float = COARSE_T) -> dict[Neuron, float]:
    """Coarse neurons of one prompt from its dense `[n_layers, n_neurons]` scores."""
    s = np.asarray(scores, dtype=np.float64)
    top = float(s.max()) if s.size else 0.0
    if top <= 0:
        return {}
    layers, neurons = np.nonzero(s >= t * top)
    return {(int(l), int(n)): float(s[l, n]) for l, n in zip(layers, neurons)}


@dataclass(frozen=True)
class FactTally:
    """How often each neuron is coarse among a fact's prompts, and its summed score (column-shaped):
    all that refining needs, whatever p. Tallied once per fact, it serves every p the relation
    tries; `atlas.db.runs.relation_tallies` has the database make it."""

    n_prompts: int
    layers: np.ndarray
    neurons: np.ndarray
    counts: np.ndarray
    sums: np.ndarray


def tally(prompts: Sequence[Mapping[Neuron, float]]) -> FactTally:
    counts: Counter[Neuron] = Counter()
    sums: dict[Neuron, float] = {}
    for coarse in prompts:
        for key, sc in coarse.items():
            counts[key] += 1
            sums[key] = sums.get(key, 0.0) + sc
    keys = list(counts)
    return FactTally(
        len(prompts),
        np.array([k[0] for k in keys], np.int64),
        np.array([k[1] for k in keys], np.int64),
        np.array([counts[k] for k in keys], np.int64),
        np.array([sums[k] for k in keys], np.float64),
    )


def select(t: FactTally, p: float, min_prompts: int = MIN_PROMPTS) -> list[RefinedNeuron]:
    """The fact's knowledge neurons at share p, sorted by (-n_prompts, -mean_score, layer, neuron)
    so that output order is deterministic."""
    need = max(t.n_prompts * p, min_prompts)  # float, as in the official code
    out = [
        RefinedNeuron(int(t.layers[i]), int(t.neurons[i]), float(t.sums[i]) / int(t.counts[i]), int(t.counts[i]))
        for i in np.flatnonzero(t.counts >= need)
    ]
    return sorted(out, key=lambda r: (-r.n_prompts, -r.mean_score, r.layer, r.neuron))


def refine_tallies(
    tallies: Sequence[FactTally],
    p0: float = P_START,
    step: float = P_STEP,
    max_evals: int = P_MAX_EVALS,
    target: tuple[float, float] = TARGET,
    min_prompts: int = MIN_PROMPTS,
) -> RelationRefinement:
    """Relation-adaptive refining: adjust p until the mean neurons per fact lies in `target`, from
    the facts' tallies (one per fact, in order).

    Example:
        >>> three = {(0, 1): 1.0, (1, 7): 0.6, (2, 5): 0.5}
        >>> r = refine_tallies([tally([three] * 3), tally([{(0, 1): 1.0, (2, 5): 0.5}] * 4)])
        >>> r.p, [len(f) for f in r.facts], r.mean_neurons
        (0.7, [3, 2], 2.5)
    """
    if not tallies:
        return RelationRefinement(p0, [], 0.0, 0)
    p = p0
    lo, hi = target
    for evals in range(1, max_evals + 1):
        refined = [select(t, p, min_prompts) for t in tallies]
        mean = sum(len(r) for r in refined) / len(refined)
        if lo <= mean <= hi or evals == max_evals:
            return RelationRefinement(p, refined, mean, evals)
        p = p - step if mean < lo else p + step
    raise AssertionError("unreachable")
