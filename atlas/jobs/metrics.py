"""Scores for interventions and audits: ROC AUC, precision@k, perplexity, relative change.

Pure math (stdlib only) so that the same definitions serve the probe, the edit metrics, the audit
and the report, and can be tested against brute-force references without a model or a database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a random positive outranks a random negative (ties count one half).

    Computed from average ranks (Mann-Whitney U) in O(n log n). Returns None when one class is
    empty: the AUC is undefined there, and reporting 0.5 would hide that.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = sum(r for r, y in zip(_ranks(scores), labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks, so ties are handled); None when
    either side is constant or there are fewer than 3 pairs."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def precision_at_k(scores: Sequence[float], labels: Sequence[bool], k: int) -> float | None:
    """Share of positives among the k highest scores (ties broken by input order, stable).

    None when k < 1 or there are no items; k larger than the list uses the whole list.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    k = min(k, len(scores))
    if k < 1:
        return None
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return sum(1 for i in top if labels[i]) / k


def perplexity(token_logprobs: Sequence[float]) -> float | None:
    """exp of the mean negative log-probability per token (natural log); None for no tokens.

    Pooled over tokens (not averaged per prompt) so that long answers weigh by their length, the
    usual definition of the perplexity of a set of gold continuations.
    """
    if not token_logprobs:
        return None
    return math.exp(-sum(token_logprobs) / len(token_logprobs))


def relative_change(before: Sequence[float], after: Sequence[float]) -> float | None:
    """(mean(after) - mean(before)) / mean(before): the paper's "mean delta p / mean p0"."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} values before but {len(after)} after")
    if not before:
        return None
    p0 = sum(before) / len(before)
    if p0 == 0:
        return None
    return (sum(after) / len(after) - p0) / p0


def ratio_change(before: float | None, after: float | None) -> float | None:
    """after / before - 1 (e.g. a perplexity rise of +0.35 = +35 %); None if undefined."""
    if before is None or after is None or before == 0:
        return None
    return after / before - 1
