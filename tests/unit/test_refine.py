"""Coarse selection, refining and relation-adaptive p, against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.attribution.refine import RefinedNeuron, coarse_neurons, refine_tallies, select, tally
from tests.support.refine_reference import (
    coarse_from_triplets,
    refine_fact,
    refine_threshold,
    relation_neurons,
    sparse_scores,
)


def test_coarse_is_relative_to_prompt_max_over_all_layers() -> None:
    s = np.zeros((3, 4))
    s[0, 1], s[2, 3], s[1, 0], s[1, 2] = 1.0, 0.2, 0.19, -5.0
    assert coarse_neurons(s) == {(0, 1): 1.0, (2, 3): 0.2}  # 0.2 * max is included (official >=)


def test_coarse_empty_when_no_positive_score() -> None:
    assert coarse_neurons(-np.ones((2, 2))) == {}
    assert coarse_from_triplets([]) == {}


def test_coarse_from_triplets_matches_dense() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 16))
    assert coarse_from_triplets(sparse_scores(s, cap=None)) == coarse_neurons(s)


def test_sparse_scores_filter_and_cap() -> None:
    s = np.array([[1.0, 0.5, 0.09], [0.1, -1.0, 0.3]])
    assert sparse_scores(s, cap=None) == [(0, 0, 1.0), (0, 1, 0.5), (1, 2, 0.3), (1, 0, 0.1)]
    assert sparse_scores(s, cap=2) == [(0, 0, 1.0), (0, 1, 0.5)]


def test_refine_needs_three_prompts_at_least() -> None:
    one = {(0, 1): 1.0}
    assert refine_fact([one, one], p=0.1) == []  # n < 3: max(n p, 3) = 3 > n, never a neuron
    assert refine_fact([one] * 3, p=0.1) == [RefinedNeuron(0, 1, 1.0, 3)]


def test_refine_threshold_boundaries() -> None:
    assert refine_threshold(10, 0.7) == 7.0 and refine_threshold(4, 0.7) == 3
    a, b = {(0, 0): 2.0}, {}
    assert refine_fact([a] * 6 + [b] * 4, p=0.7) == []
    assert refine_fact([a] * 7 + [b] * 3, p=0.7) == [RefinedNeuron(0, 0, 2.0, 7)]
    assert refine_fact([a] * 3 + [b] * 1, p=0.7) == [RefinedNeuron(0, 0, 2.0, 3)]  # max(2.8, 3) = 3


def test_refine_mean_score_over_prompts_where_coarse() -> None:
    prompts = [{(1, 2): 1.0}, {(1, 2): 3.0}, {(1, 2): 2.0, (0, 0): 9.0}, {}]
    assert refine_fact(prompts, p=0.7) == [RefinedNeuron(1, 2, 2.0, 3)]


def _fact(n_neurons: int, n_prompts: int, in_prompts: int) -> list[dict]:
    """n_prompts prompts; neuron k is coarse in `in_prompts` of them."""
    return [{(0, k): 1.0 for k in range(n_neurons)} if i < in_prompts else {} for i in range(n_prompts)]


def test_adaptive_p_lowers_until_in_range() -> None:
    # every neuron is coarse in 6 of 10 prompts: p=0.7 -> 0, 0.65 -> 0 (6.5), 0.6 -> 3 neurons? 6 >= 6.0 -> yes
    facts = [_fact(3, 10, 6)] * 4
    r = refine_tallies([tally(f) for f in facts])
    assert r.evaluations == 3 and abs(r.p - 0.6) < 1e-9 and r.mean_neurons == 3.0


def test_adaptive_p_raises_when_too_many() -> None:
    facts = [_fact(8, 10, 8)] * 2 + [_fact(8, 10, 10)] * 2
    r = refine_tallies(
        [tally(f) for f in facts]
    )  # 8 per fact at p <= 0.8; from p = 0.85 only the last two facts keep 8
    assert r.mean_neurons == 4.0 and r.p == pytest.approx(0.85) and r.evaluations == 4


def test_adaptive_p_gives_up_after_six_evaluations() -> None:
    r = refine_tallies([tally(_fact(1, 3, 3))] * 5)  # always 1 neuron per fact: never reaches [2, 5]
    assert r.evaluations == 6 and r.mean_neurons == 1.0
    assert r.p == pytest.approx(0.7 - 5 * 0.05)


def test_relation_neurons_ten_percent() -> None:
    facts = [[(0, 1)]] * 2 + [[(2, 2)]] * 17 + [[(0, 1), (2, 2)]]
    assert relation_neurons(facts) == [((2, 2), 18), ((0, 1), 3)]
    assert relation_neurons(facts, ratio=0.5) == [((2, 2), 18)]


def test_fast_refining_equals_the_reference_on_random_facts() -> None:
    """`select(tally(...))` (what finalising uses) against the per-neuron reference, over many p."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        prompts = [
            {(int(rng.integers(0, 3)), int(rng.integers(0, 6))): float(rng.random()) for _ in range(rng.integers(0, 8))}
            for _ in range(n)
        ]
        for p in (0.5, 0.55, 0.7, 0.85):
            assert select(tally(prompts), p) == refine_fact(prompts, p)
    facts = [[{(0, 1): 1.0, (1, 2): 0.5}] * 4, [{(0, 1): 0.8}] * 3]
    assert refine_tallies([tally(f) for f in facts]).facts == [refine_fact(f, 0.7) for f in facts]
