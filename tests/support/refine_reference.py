"""Slow, obviously correct references for the refining rules (`indexer.attribution.refine`) and the
sparse score selection (`indexer.attribution.sparse`): per prompt, per fact, in plain Python and
numpy, as the official analysis script does it. The fast paths are checked against these."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from indexer.attribution.refine import COARSE_T, MIN_PROMPTS, RELATION_RATIO, SPARSE_RATIO, Neuron, RefinedNeuron


def sparse_scores(
    scores: np.ndarray, ratio: float = SPARSE_RATIO, cap: int | None = 512
) -> list[tuple[int, int, float]]:
    """Scores worth storing: >= ratio * prompt max (official: 0.1), at most `cap`, best first.

    Storing these instead of all n_layers * n_neurons scores keeps the database ~1000x smaller
    while still containing every coarse neuron (t = 0.2 > 0.1) unless the cap bites.
    """
    s = np.asarray(scores, dtype=np.float64)
    top = float(s.max()) if s.size else 0.0
    if top <= 0:
        return []
    layers, neurons = np.nonzero(s >= ratio * top)
    vals = s[layers, neurons]
    order = np.argsort(-vals, kind="stable")
    if cap is not None:
        order = order[:cap]
    return [(int(layers[i]), int(neurons[i]), float(vals[i])) for i in order]


def coarse_from_triplets(triplets: Iterable[tuple[int, int, float]], t: float = COARSE_T) -> dict[Neuron, float]:
    """Coarse neurons from stored sparse scores; the max must be among them (it always is)."""
    trip = list(triplets)
    if not trip:
        return {}
    top = max(sc for _, _, sc in trip)
    if top <= 0:
        return {}
    return {(int(l), int(n)): float(sc) for l, n, sc in trip if sc >= t * top}


def refine_fact(
    prompts: Sequence[Mapping[Neuron, float]], p: float, min_prompts: int = MIN_PROMPTS
) -> list[RefinedNeuron]:
    """Knowledge neurons of one fact from the coarse neurons of each of its prompts: those coarse in
    at least max(n * p, min_prompts) prompts, mean score over those prompts, deterministic order."""
    need = refine_threshold(len(prompts), p, min_prompts)
    seen: dict[Neuron, list[float]] = {}
    for coarse in prompts:
        for key, score in coarse.items():
            seen.setdefault(key, []).append(score)
    out = [RefinedNeuron(k[0], k[1], sum(v) / len(v), len(v)) for k, v in seen.items() if len(v) >= need]
    return sorted(out, key=lambda r: (-r.n_prompts, -r.mean_score, r.layer, r.neuron))


def relation_neurons(
    fact_neurons: Sequence[Iterable[Neuron]], ratio: float = RELATION_RATIO
) -> list[tuple[Neuron, int]]:
    """Neurons present in >= ratio of the facts (official: 10%), with their fact counts, most common first."""
    counts: Counter[Neuron] = Counter()
    for neurons in fact_neurons:
        counts.update(set(neurons))
    need = len(fact_neurons) * ratio
    return sorted(((k, c) for k, c in counts.items() if c >= need), key=lambda kc: (-kc[1], kc[0]))


def refine_threshold(n_prompts: int, p: float, min_prompts: int = MIN_PROMPTS) -> float:
    """Prompts a neuron must be coarse in: max(n * p, min_prompts), float as in the official code."""
    return max(n_prompts * p, min_prompts)
