"""Injection math against slow obvious references, on tiny models of every supported family:
widening by zero slots changes nothing; a widened model's logits are the original's plus each
pair's contribution computed by hand from the FFN input; the clamp is silent below its threshold
and saturated above; the model comes back bit-exactly; stock transformers loads the widened model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from atlas.errors import ModelError
from atlas.model.adapters import adapter_for
from atlas.model.encode import PromptItem
from atlas.model.inject import SlotPair, widened, write_pair
from atlas.model.inject.guards import guard_pair, ramp
from atlas.model.inject.keys import Negatives, discriminant, gate
from atlas.model.inject.values import ValueChoice, keep_of, refine_values, value_gradients
from atlas.model.inject.widen import set_pair_value
from atlas.model.loading import weights_sha256
from atlas.model.scoring import score
from tests.support.tiny_hf import tiny_model

FAMILIES = ("llama", "gpt2", "neox", "neox_seq", "bert")
IDS = torch.tensor([[5, 17, 3, 44, 9, 12, 30]])


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        extra = {"token_type_ids": torch.zeros_like(ids)} if model.config.architectures[0].endswith("MaskedLM") else {}
        return model(input_ids=ids, **extra).logits


def _pairs(adapter, n: int, seed: int = 0) -> list[SlotPair]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for j in range(n):
        w = torch.randn(adapter.hidden_size, generator=g, dtype=torch.float64)
        out.append(
            SlotPair(
                layer=j % adapter.n_layers,
                index=adapter.n_neurons + 2 * j,
                key=w / w.norm(),
                threshold=-0.3 + 0.2 * j,
                slope=2.0,
                value=torch.randn(adapter.hidden_size, generator=g, dtype=torch.float64),
                sharpness=64.0,
            )
        )
    return out


def _act(adapter):
    """The family's activation, named from its config (the reference does not ask the model)."""
    cfg = adapter.config
    name = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
    return {"silu": F.silu, "gelu": F.gelu, "gelu_new": lambda z: F.gelu(z, approximate="tanh")}[name]


def _by_hand(adapter, p: SlotPair, x: torch.Tensor) -> torch.Tensor:
    """What the pair adds to the FFN output at FFN input x `[..., hidden]`: (act(k t) - act(k (t-1))) / k v."""
    act, k = _act(adapter), p.sharpness
    t = p.slope * (x.double() @ p.key - p.threshold)
    return ((act(k * t) - act(k * (t - 1))) / k)[..., None] * p.value


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_slots_change_nothing_and_the_model_comes_back(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    sha, want, n = weights_sha256(model), _logits(model), adapter.n_neurons
    with widened(adapter, [], adapter.n_neurons + 6):
        assert adapter.n_neurons == getattr(adapter.config, adapter.width_config) == adapter.value_slots(2).shape[0]
        # zero rows, biases and columns add nothing; only the summation order of a wider matmul
        # (and a bias add) can move the last bits
        assert torch.allclose(_logits(model), want, rtol=0, atol=1e-5)
    assert weights_sha256(model) == sha and adapter.n_neurons == n


@pytest.mark.parametrize("family", FAMILIES)
def test_widened_logits_are_the_original_plus_each_pair_by_hand(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    pairs = _pairs(adapter, 4)
    seen: dict[int, torch.Tensor] = {}

    def add_by_hand(layer):
        def hook(_m, args, out):
            x = seen[layer]
            extra = sum((_by_hand(adapter, p, x) for p in pairs if p.layer == layer), torch.zeros(()))
            return out + extra.to(out.dtype)

        return hook

    handles = []
    for layer in range(adapter.n_layers):
        record = lambda _m, a, lay=layer: seen.__setitem__(lay, a[0])  # noqa: E731
        handles.append(adapter.ffn_in(layer).register_forward_pre_hook(record))
        handles.append(adapter.ffn_out(layer).register_forward_hook(add_by_hand(layer)))
    try:
        want = _logits(model)
    finally:
        for h in handles:
            h.remove()
    with widened(adapter, pairs, adapter.n_neurons + 8):
        got = _logits(model)
    assert not torch.allclose(want, _logits(model), atol=1e-4)  # the pairs do something here
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_pair_is_silent_below_its_threshold_and_saturated_above(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    p = _pairs(adapter, 1)[0]
    x = torch.stack([p.key * s for s in (-5.0, p.threshold - 0.2, p.threshold + 0.6, 8.0)])
    out = _by_hand(adapter, p, x)
    assert out[0].abs().max() < 1e-12 and out[1].abs().max() < 1e-4 * p.value.abs().max()
    assert torch.allclose(out[2:], p.value.expand(2, -1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox", "bert"])
def test_stock_transformers_loads_the_widened_model_with_equal_logits(family: str, tmp_path) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    pairs = _pairs(adapter, 3, seed=1)
    with widened(adapter, [], adapter.n_neurons + 6):  # widen empty, then write pairs in place
        for p in pairs:
            write_pair(adapter, p)
        want, sha = _logits(model), weights_sha256(model)
        model.save_pretrained(tmp_path)
    with widened(adapter, pairs, adapter.n_neurons + 6):
        assert torch.equal(_logits(model), want)  # in place = built whole
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path, attn_implementation="eager").eval()  # as tiny_model runs
    assert weights_sha256(loaded) == sha
    assert torch.equal(_logits(loaded), want)


def test_a_gated_family_without_biases_is_refused() -> None:
    adapter = adapter_for(tiny_model("qwen2"))
    with pytest.raises(ModelError, match="without biases"), widened(adapter, [], adapter.n_neurons + 2):
        pass


def test_discriminant_separates_what_the_mean_does_not() -> None:
    """Positives and negatives share a large common direction (the template): the mean of the
    positives fires on the negatives, the discriminant direction does not."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(16, generator=g, dtype=torch.float64) * 5
    neg = common + torch.randn(200, 16, generator=g, dtype=torch.float64)
    pos = common + torch.randn(6, 16, generator=g, dtype=torch.float64) * 0.1
    pos[:, 3] += 6.0
    mean = pos.mean(0) / pos.mean(0).norm()
    assert (neg @ mean).max() > (pos @ mean).min()
    w = discriminant(pos, neg)
    gt = gate(pos @ w, neg @ w)
    assert gt.separable and (neg @ w).max() < gt.threshold < gt.saturation <= (pos @ w).min()


def _namesakes_of_a_word() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negatives `[400, 16]`, a fact's own reading points `[5, 16]` (the word: e0) and its
    namesakes' `[7, 16]` (the word and more: e0 + e2)."""
    g = torch.Generator().manual_seed(4)
    neg = torch.randn(400, 16, generator=g, dtype=torch.float64)
    own = torch.randn(5, 16, generator=g, dtype=torch.float64) * 0.2
    own[:, 0] += 6.0
    names = torch.randn(7, 16, generator=g, dtype=torch.float64) * 0.2
    names[:, 0] += 6.0
    names[:, 2] += 3.0
    return neg, own, names


def test_a_guard_shuts_a_slot_on_namesakes_and_never_on_the_facts_own_prompts() -> None:
    """A slot keyed on a word (e0) also opens on other names with that word (e0 + e2): the guard is
    keyed on those, stays shut on the fact's own points and on the negatives, and writes minus the
    slot's value; a namesake the slot stays shut on gets no guard at all."""
    neg, own, names = _namesakes_of_a_word()
    main = SlotPair(5, 100, torch.eye(16, dtype=torch.float64)[0], 3.0, 0.5, torch.ones(16, dtype=torch.float64))
    assert bool(((names @ main.key) > main.threshold).all())
    guard, info = guard_pair(main, own, names, Negatives.of(neg), 102, 0.05, 1.0, 0.25, 0.9)
    assert guard is not None and guard.cancels is main and guard.index == 102 and guard.layer == 5 == info.layer
    assert torch.equal(guard.value, -main.value)
    assert info.opened == 7 and info.cancelled == 7 and info.separable
    assert bool(((names @ guard.key) > guard.threshold).all())
    assert bool(((own @ guard.key) < guard.threshold).all()) and bool(((neg @ guard.key) < guard.threshold).all())
    none, info = guard_pair(
        main,
        own,
        names * torch.tensor([0.0] + [1.0] * 15, dtype=torch.float64),
        Negatives.of(neg),
        102,
        0.05,
        1.0,
        0.25,
        0.9,
    )
    assert none is None and info.opened == 0
    # where the guard must also stay shut on the namesakes themselves (a training prompt there), none
    none, info = guard_pair(main, torch.cat([own, names]), names, Negatives.of(neg), 102, 0.05, 1.0, 0.25, 0.9)
    assert none is None and info.opened == 7 and info.cancelled == 0


def test_a_guard_on_namesakes_where_the_slot_is_partly_open_writes_that_share_of_its_value() -> None:
    """Where the fact's pair is only half open on the namesakes (their scores midway up its ramp),
    a guard writing minus the whole value would push the other way by half the value: its value is
    the least-squares share of the pair's activation there, so that both together leave ~0."""
    neg, own, names = _namesakes_of_a_word()
    main = SlotPair(5, 100, torch.eye(16, dtype=torch.float64)[0], 5.5, 1.0, torch.ones(16, dtype=torch.float64))
    pair = ramp(names @ main.key, main.threshold, main.slope)
    assert bool((pair > 0.1).all()) and bool((pair < 0.9).all())
    guard, info = guard_pair(main, own, names, Negatives.of(neg), 102, 0.05, 1.0, 0.25, 0.9)
    assert guard is not None and info.cancelled == 7
    mine = ramp(names @ guard.key, guard.threshold, guard.slope)
    assert 0.1 < info.share < 0.9 and torch.equal(guard.value, -main.value * info.share)
    left = (pair - info.share * mine).abs().mean()  # what the pair and its guard add together, in v
    assert left < 0.2 < (pair - mine).abs().mean()


def test_moments_of_parts_add_up_to_the_whole() -> None:
    """The key's negatives come in pools whose moments are added: the same mean and covariance as
    the rows stacked, and the gate sees every row."""
    g = torch.Generator().manual_seed(1)
    parts = [torch.randn(n, 8, generator=g, dtype=torch.float64) + j for j, n in enumerate((30, 5, 12))]
    whole = torch.cat(parts)
    neg = Negatives.of(parts[0]) + Negatives.of(parts[1])
    neg = neg.plus(parts[2])
    assert neg.n == 47 and torch.allclose(neg.moments.mean(), whole.mean(0))
    assert torch.allclose(neg.moments.cov(), torch.cov(whole.T), atol=1e-5)
    w = torch.randn(8, generator=g, dtype=torch.float64)
    assert torch.allclose(neg.scores(w), whole.float().double() @ w)
    assert torch.allclose(discriminant(whole[:3], neg), discriminant(whole[:3], whole), atol=1e-5)


def test_pooled_scatter_keeps_a_held_out_paraphrase_above_the_gate() -> None:
    """A fact's training prompts agree on its own direction (e0) and differ along a template
    direction (e1) on which they also sit apart from the negatives: the negatives-only key leans on
    e1 and a paraphrase with another template value falls below the gate; with the positives'
    scatter pooled in (pos_scatter=1) the key keeps to e0 and the paraphrase passes."""
    g = torch.Generator().manual_seed(2)
    neg = torch.randn(500, 16, generator=g, dtype=torch.float64)
    pos = torch.zeros(3, 16, dtype=torch.float64)
    pos[:, 0], pos[:, 1] = 5.0, torch.tensor([2.0, 6.0, 10.0])
    held = torch.zeros(16, dtype=torch.float64)
    held[0], held[1] = 5.0, -2.0
    opened = []
    for lam in (0.0, 1.0):
        w = discriminant(pos, neg, pos_scatter=lam)
        gt = gate(pos @ w, neg @ w)
        assert gt.separable and (neg @ w).max() < gt.threshold
        opened.append(float(held @ w) > gt.threshold)
    assert opened == [False, True]


def test_the_gate_never_opens_on_a_negative() -> None:
    """Sides that overlap: the slot starts at the negatives' highest score and gives up the
    training prompts below it (the old gate opened below the positives' lowest score)."""
    pos = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    neg = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    gt = gate(pos, neg)
    assert not gt.separable and gt.threshold == 1.0 and gt.saturation == 2.5
    opened = gate(pos, neg, overlap="open")  # every training prompt saturated, the top negative opens it
    assert opened.saturation == 0.5 and opened.threshold < 0.5 < 1.0
    sep = gate(pos + 1.0, neg, low=0.25, high=0.9)
    assert sep.separable and sep.threshold == 1.0 + 0.25 * 0.5 and sep.saturation == 1.0 + 0.9 * 0.5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_pair_far_below_its_threshold_outputs_exactly_zero(family: str) -> None:
    """SiLU and GELU are not zero below 0, but in fp32 they are once k t < -89 (SiLU) or -10 (GELU):
    the pair's two neurons then feed exactly 0 to the value projection, whatever v is."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    p = _pairs(adapter, 1)[0]
    p.threshold, p.slope = 1e3, 1.0  # every input lies far below
    seen = {}
    hook = adapter.ffn_out(p.layer).register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))
    try:
        with widened(adapter, [p], adapter.n_neurons + 2):
            _logits(model)
    finally:
        hook.remove()
    assert seen["a"].dtype == torch.float32
    assert torch.equal(seen["a"][..., p.index : p.index + 2], torch.zeros_like(seen["a"][..., :2]))


def _open_pairs(adapter, layers, seed: int = 3) -> list[SlotPair]:
    """Pairs whose threshold no input reaches from below: open everywhere, so v matters everywhere."""
    return [
        SlotPair(p.layer, p.index, p.key, -1e3, p.slope, p.value * 0.05, p.sharpness)
        for p in _pairs(adapter, layers, seed)
    ]


ITEMS = [PromptItem([5, 17, 3, 44], [9]), PromptItem([12, 30, 7], [9, 21]), PromptItem([8, 2, 40, 11, 6], [9])]


KEEP = [PromptItem([3, 44, 2], [1]), PromptItem([17, 9], [1])]


GOLDS = [(0, 7), (0, 30), (1, 2)]  # (keep prompt, token) held by --keep-gold


@pytest.mark.parametrize(
    ("family", "keep"), [("llama", None), ("gpt2", None), ("neox", None), ("llama", (2.0, 0.0)), ("llama", (0.0, 3.0))]
)
def test_value_gradients_are_the_finite_differences_of_the_loss(family: str, keep: tuple | None) -> None:
    model = tiny_model(family).double()
    adapter = adapter_for(model)
    with_keep = keep is not None
    pairs = _open_pairs(adapter, 3) if with_keep else _pairs(adapter, 3)
    d = [
        torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        for i in range(3)
    ]
    with widened(adapter, pairs, adapter.n_neurons + 6):
        if keep is not None:
            keep = keep_of(model, adapter, ITEMS, KEEP, pairs, keep[0], GOLDS, keep[1])
        _, _, grads = value_gradients(model, adapter, ITEMS, pairs, keep)
        base, eps, losses = [p.value.clone() for p in pairs], 3e-3, []  # the loss is fp32 (answer_logprobs)
        for sign in (1, -1):
            for p, v, dv in zip(pairs, base, d):
                set_pair_value(adapter, p, v + sign * eps * dv)
            losses.append(value_gradients(model, adapter, ITEMS, pairs, keep)[0])
    want = (losses[0] - losses[1]) / (2 * eps)
    got = sum(float(g @ dv) for g, dv in zip(grads, d))
    assert abs(want) > 1e-2 and got == pytest.approx(want, rel=2e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_refine_values_lowers_the_loss_within_its_steps_and_keeps_the_best(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    pairs = _open_pairs(adapter, 2)
    with widened(adapter, pairs, adapter.n_neurons + 4):
        start_loss = value_gradients(model, adapter, ITEMS, pairs)[0]
        start = sum(s.greedy for s in score(model, adapter, ITEMS))
        none = refine_values(model, adapter, ITEMS, pairs, 0, ValueChoice(1.0, False, start))
        assert none.steps == 0 and value_gradients(model, adapter, ITEMS, pairs)[0] == start_loss
        got = refine_values(model, adapter, ITEMS, pairs, 40, ValueChoice(1.0, False, start))
        loss = value_gradients(model, adapter, ITEMS, pairs)[0]
        hits = sum(s.greedy for s in score(model, adapter, ITEMS))
    assert 1 <= got.steps <= 40 and got.hits == hits >= start and got.reached == (hits == len(ITEMS))
    assert loss < start_loss


def test_refined_values_stay_within_the_longest_allowed() -> None:
    """Adam steps of a large size lengthen the values past where they started; with `max_norm` no
    value written after a step, nor the one kept, is longer than it."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    start = max(float(p.value.norm()) for p in _open_pairs(adapter, 2))
    lengths = {}
    for cap in (None, start):
        pairs = _open_pairs(adapter, 2)  # set_pair_value rewrites a pair's value: fresh ones each time
        with widened(adapter, pairs, adapter.n_neurons + 4):
            refine_values(model, adapter, ITEMS, pairs, 8, ValueChoice(1.0, False, 0), lr=2.0, max_norm=cap)
            lengths[cap] = max(float(p.value.norm()) for p in pairs)
    assert lengths[None] > 1.5 * start
    assert lengths[start] <= start * (1 + 1e-6)


def test_keep_prompts_start_at_zero_divergence_and_refinement_trades_it_off() -> None:
    """The keep reference is the model without the pairs: with zero values the divergence is 0 (the
    loss is the answers' alone); the refinement with keep prompts, its prompts never all answered,
    runs every step and ends with a lower total loss than it started from."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    pairs = _open_pairs(adapter, 2)
    with widened(adapter, pairs, adapter.n_neurons + 4):
        keep = keep_of(model, adapter, ITEMS, KEEP, pairs, 1.0)
        values = [p.value for p in pairs]
        for p in pairs:
            set_pair_value(adapter, p, torch.zeros_like(p.value))
        assert value_gradients(model, adapter, ITEMS, pairs, keep)[0] == pytest.approx(
            value_gradients(model, adapter, ITEMS, pairs)[0], abs=1e-4
        )
        for p, v in zip(pairs, values):
            set_pair_value(adapter, p, v)
        start = value_gradients(model, adapter, ITEMS, pairs, keep)[0]
        got = refine_values(model, adapter, ITEMS, pairs, 15, ValueChoice(1.0, False, 0), keep=keep)
        assert got.steps == 15 and value_gradients(model, adapter, ITEMS, pairs, keep)[0] < start


def test_a_prompt_at_its_goal_pulls_no_further() -> None:
    """The answers' part of the loss is a hinge: with a goal every prompt already reaches (P >= 1e-9)
    it is 0 with zero gradients, and with keep prompts only their divergence is left: the loss is
    then W x the mean KL, half of it at W = 1 what it is at W = 2."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    pairs = _open_pairs(adapter, 2)
    with widened(adapter, pairs, adapter.n_neurons + 4):
        loss, _, grads = value_gradients(model, adapter, ITEMS, pairs, goal=1e-9)
        assert loss == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads)
        assert value_gradients(model, adapter, ITEMS, pairs)[0] > 0  # P = 0.9 is far off in a random model
        halves = [
            value_gradients(model, adapter, ITEMS, pairs, keep_of(model, adapter, ITEMS, KEEP, pairs, w), goal=1e-9)[0]
            for w in (1.0, 2.0)
        ]
    assert halves[0] > 0 and halves[1] == pytest.approx(2 * halves[0], rel=1e-5)


def test_the_gold_term_is_the_mean_squared_change_of_the_held_log_probabilities() -> None:
    """The keep part with golds alone, against a hand computation: with a goal every prompt reaches
    (the hinge is 0), the loss is W_g x the mean over the held (prompt, token) of (log P now - log P
    without the pairs)^2, read from each keep prompt's own forward pass; 0 with the values zeroed."""
    model = tiny_model("llama").double()
    adapter = adapter_for(model)
    pairs = _open_pairs(adapter, 2)

    def logp() -> torch.Tensor:  # [len(KEEP), vocab]: each keep prompt alone, its next token
        with torch.no_grad():
            return torch.stack(
                [torch.log_softmax(model(input_ids=torch.tensor([k.prompt_ids])).logits[0, -1], -1) for k in KEEP]
            )

    with widened(adapter, pairs, adapter.n_neurons + 4):
        keep = keep_of(model, adapter, ITEMS, KEEP, pairs, 0.0, GOLDS, 3.0)
        assert keep is not None and keep.weight == 0.0
        # without the KL term only the prompts that carry golds are read, their rows renumbered
        only = keep_of(model, adapter, ITEMS, KEEP, pairs, 0.0, [(1, 2)], 3.0)
        assert only is not None and list(only.items) == [KEEP[1]] and only.golds.tolist() == [[0, 2]]
        values = [p.value for p in pairs]
        for p in pairs:
            set_pair_value(adapter, p, torch.zeros_like(p.value))
        before = logp()
        assert value_gradients(model, adapter, ITEMS, pairs, keep, goal=1e-9)[0] == pytest.approx(0.0, abs=1e-9)
        for p, v in zip(pairs, values):
            set_pair_value(adapter, p, v)
        now = logp()
        got = value_gradients(model, adapter, ITEMS, pairs, keep, goal=1e-9)[0]
    want = 3.0 * sum(float(now[r, t] - before[r, t]) ** 2 for r, t in GOLDS) / len(GOLDS)
    assert want > 1e-6 and got == pytest.approx(want, rel=1e-3)
    assert keep_of(model, adapter, ITEMS, KEEP, pairs, 0.0, [], 3.0) is None  # nothing to weigh


def test_refinement_with_keep_prompts_stops_once_answered_and_stale() -> None:
    """Prompts answered already (their gold is the model's own greedy token) and a zero step size:
    without keep prompts the refinement stops at once; with them it waits `PATIENCE` steps without
    a 1 % lower loss, and stops there, not at its step limit."""
    from atlas.model.inject.values import PATIENCE

    model = tiny_model("llama")
    adapter = adapter_for(model)
    pairs = _open_pairs(adapter, 2)
    with widened(adapter, pairs, adapter.n_neurons + 4):
        tops = [s.top1 for s in score(model, adapter, ITEMS)]
        own = [PromptItem(it.prompt_ids, [t]) for it, t in zip(ITEMS, tops)]
        keep = keep_of(model, adapter, own, KEEP, pairs, 1.0)
        plain = refine_values(model, adapter, own, pairs, 50, ValueChoice(1.0, True, 3), lr=0.0)
        kept = refine_values(model, adapter, own, pairs, 50, ValueChoice(1.0, True, 3), lr=0.0, keep=keep)
    assert plain.steps == 0 and plain.reached
    assert kept.steps == PATIENCE and kept.reached


def test_subject_position_is_the_subjects_last_token() -> None:
    from atlas.model.encode import encode_causal, encode_masked, subject_position
    from tests.support.tiny_hf import char_tokenizer

    tok = char_tokenizer()
    item = encode_causal(tok, "The capital of France is", "Lyon")
    at = subject_position(tok, item, "The capital of France is [Y].", "France")
    assert at == len("The capital of France") - 1
    assert tok.convert_ids_to_tokens(item.prompt_ids[at - 5 : at + 1]) == list("France")
    masked = encode_masked(tok, "France has its capital in [Y].", "Lyon")
    assert subject_position(tok, masked, "France has its capital in [Y].", "France") == len("France") - 1
    assert subject_position(tok, item, "The capital of France is [Y].", "Spain") is None


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("against", [(), (7, 11)])
def test_inputs_and_value_directions_at_other_positions(family: str, against: tuple[int, ...]) -> None:
    """`at` reads the FFN input where a causal prompt cut after that position ends, and the value
    direction there is the gradient of mean log P(new) (minus mean log P of the replaced objects'
    tokens `against`) with respect to an offset added to the layer's FFN output at exactly that
    position (an independent hook, by hand)."""
    from atlas.model.inject.keys import answer_inputs
    from atlas.model.inject.values import logprob_directions

    model = tiny_model(family, seed=4)
    adapter = adapter_for(model)
    items = [PromptItem([5, 17, 3, 44, 9, 12], [30]), PromptItem([8, 2, 61, 7, 19], [30])]
    at, layer = [2, 3], 1
    got = answer_inputs(model, adapter, items, [layer], at=at)[layer]
    cut = [PromptItem(it.prompt_ids[: a + 1], [0]) for it, a in zip(items, at)]
    assert torch.allclose(got, answer_inputs(model, adapter, cut, [layer])[layer], atol=1e-5)

    u = logprob_directions(adapter, items, [layer], 30, at, against)[layer]
    delta = torch.zeros(len(items), adapter.hidden_size, requires_grad=True)

    def shift(_m, _args, out):
        out = out.clone()
        out[torch.arange(len(items)), torch.tensor(at)] += delta
        return out

    handle = adapter.ffn_out(layer).register_forward_hook(shift)
    try:
        ids = torch.zeros(len(items), 6, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, it in enumerate(items):
            ids[r, : len(it.prompt_ids)], attn[r, : len(it.prompt_ids)] = torch.tensor(it.prompt_ids), 1
        logits = model(input_ids=ids, attention_mask=attn).logits
        last = torch.tensor([len(it.prompt_ids) - 1 for it in items])
        logp = torch.log_softmax(logits[torch.arange(len(items)), last], -1)
        gain = logp[:, 30].mean() - sum(logp[r, a] for r in range(len(items)) for a in against) / max(
            1, len(items) * len(against)
        )
        (g,) = torch.autograd.grad(gain, [delta])
    finally:
        handle.remove()
    ref = g.double().mean(0)
    assert torch.allclose(u, ref / ref.norm(), atol=1e-4)


def test_keep_prompts_are_the_generic_ones_and_every_other_relations_template(tmp_path) -> None:
    """A fact's keep prompts: `KEEP_TEMPLATES` and one template of each other relation, filled with
    its subject; never a template of its own relation (that answer is meant to change)."""
    from atlas.jobs.inject import NewFact
    from atlas.jobs.inject_prompts import KEEP_TEMPLATES, keep_items
    from atlas.model.loading import load_model
    from atlas.model.scoring import encode
    from tests.support.kn_world import save_model

    lm = load_model(str(save_model(tmp_path / "tiny", 0, "llama")))
    f = NewFact("f", "P36", "France", "Berlin", ["The capital of France is [Y]."])
    templates = {"P36": "The capital of [X] is [Y].", "P30": "[X] is located in [Y].", "P1": "[X] speaks [Y]."}
    got, golds = keep_items(lm, f, templates)
    texts = [t.replace("[X]", "France") for t in (*KEEP_TEMPLATES, "[X] speaks [Y].", "[X] is located in [Y].")]
    want = [encode(lm.tokenizer, t, "a", False) for t in texts]
    assert [(g.prompt_ids, g.answer_ids) for g in got] == [(w.prompt_ids, w.answer_ids) for w in want]
    assert golds == []


def test_keep_golds_are_the_subjects_objects_on_their_relations_prompt(tmp_path) -> None:
    """With the atlas's objects for the subject, each is held on its relation's keep prompt by its
    first token; never those of the fact's own relation, nor one the caller names as not held, nor
    one the tokenizer cannot read ("French" is not in the tiny vocabulary)."""
    from atlas.jobs.inject import NewFact
    from atlas.jobs.inject_prompts import KEEP_TEMPLATES, keep_items
    from atlas.model.loading import load_model
    from atlas.model.scoring import encode
    from tests.support.kn_world import save_model

    lm = load_model(str(save_model(tmp_path / "tiny", 0, "llama")))
    f = NewFact("f", "P36", "France", "Berlin", ["The capital of France is [Y]."])
    templates = {"P36": "The capital of [X] is [Y].", "P30": "[X] is located in [Y].", "P1": "[X] speaks [Y]."}
    objects = {"P36": ["Paris"], "P30": ["Europe", "Asia"], "P1": ["French", "Paris"]}
    items, golds = keep_items(lm, f, templates, objects, not_held={"Asia"})
    first = lambda text, o: encode(lm.tokenizer, text, o, False).answer_ids[0]  # noqa: E731
    n = len(KEEP_TEMPLATES)
    assert golds == [(n, first("France speaks [Y].", "Paris")), (n + 1, first("France is located in [Y].", "Europe"))]
    assert len(items) == n + 2


def test_prefixed_prompts_read_the_subject_after_the_prefix(tmp_path) -> None:
    """A fact's training prompts after `--value-prefixes` opening sentences: each is the prompt
    after one of `PREFIXES` and its key reads the subject's last token there; a prefix holding the
    subject's text ("book" in "I read this in a book.") is skipped, not read in its place."""
    from atlas.jobs.inject import NewFact
    from atlas.jobs.inject_prompts import PREFIXES, prefixed_items
    from atlas.jobs.specs import InjectSpec
    from atlas.model.encode import subject_position
    from atlas.model.loading import load_model
    from atlas.model.scoring import encode
    from tests.support.kn_world import save_model

    lm = load_model(str(save_model(tmp_path / "tiny", 0, "llama")))
    text = "The capital of France is [Y]."
    for subject, skipped in (("France", 0), ("book", 1)):
        f = NewFact("f", "P36", subject, "Berlin", [text.replace("France", subject)])
        items, at = prefixed_items(lm, f, f.prompts, InjectSpec(value_prefixes=3))
        kept = [p for p in PREFIXES[:3] if subject not in p]
        assert len(kept) == 3 - skipped
        want = [encode(lm.tokenizer, p + " " + f.prompts[0], "Berlin", False) for p in kept]
        assert [it.prompt_ids for it in items] == [w.prompt_ids for w in want]
        assert at == [subject_position(lm.tokenizer, w, p + " " + f.prompts[0], subject) for w, p in zip(want, kept)]
        assert all(a is not None and a > len(lm.tokenizer(p).input_ids) - 1 for a, p in zip(at, kept))


def test_a_facts_guard_is_written_after_its_pair_and_leaves_its_own_prompts_alone() -> None:
    """`build_fact` with namesakes (FFN inputs near the fact's own reading points, shifted along
    one direction) adds a guard after the fact's pair: minus its value, at the next index; the
    training prompts score the same with the guard's value zeroed (it stays shut there, up to the
    smooth clamp's leak just below a threshold: act(k t) / k is not exactly 0 for small t < 0)."""
    from atlas.model.inject.build import BuildParams, build_fact
    from atlas.model.inject.keys import answer_inputs

    model = tiny_model("llama", seed=5)
    adapter = adapter_for(model)
    g = torch.Generator().manual_seed(6)
    others = [PromptItem(torch.randint(0, 60, (6,), generator=g).tolist(), [1]) for _ in range(40)]
    params = BuildParams(
        0.05, 1.0, 0, 0, 0.25, 0.9, "open", 64.0, 1.5, 0.0, "gradient", 0, 0.0, 0.0, 0.0
    )  # no cap/goal
    with widened(adapter, [], adapter.n_neurons + 4):
        base = adapter.n_neurons - 4
        negs = {1: Negatives.of(answer_inputs(model, adapter, others, [1], every_position=True)[1].float())}
        own = answer_inputs(model, adapter, ITEMS, [1])[1]
        shift = torch.zeros_like(own)
        shift[:, 0] = 0.1 * own.norm(dim=1)
        nowhere = torch.zeros(0, own.shape[1], dtype=own.dtype)
        out = build_fact(model, adapter, ITEMS, negs, [1], base, params, guard_inputs={1: (own + shift, nowhere)})
        (info, guard) = out.guards[0]
        assert guard is not None and out.pairs == [out.pairs[0], guard] and guard.cancels is out.pairs[0]
        assert guard.index == base + 2 and torch.equal(guard.value, -out.pairs[0].value * info.share)
        assert info.opened == len(ITEMS) and info.cancelled == len(ITEMS)
        with_guard = [s.p_gold for s in score(model, adapter, ITEMS)]
        set_pair_value(adapter, guard, torch.zeros_like(guard.value))
        without = [s.p_gold for s in score(model, adapter, ITEMS)]
    assert with_guard == pytest.approx(without, rel=1e-2)


def test_a_value_is_fitted_on_the_extra_prompts_its_gate_opens_for() -> None:
    """`build_fact` with `extra` prompts (the training prompts in other contexts, `--value-prefixes`):
    the value is line-searched and refined on them too wherever the fact's gate opens, so the new
    object becomes the greedy answer there, which the training prompts alone did not make it."""
    from atlas.model.inject.build import BuildParams, build_fact
    from atlas.model.inject.keys import answer_inputs

    model = tiny_model("llama", seed=5)
    adapter = adapter_for(model)
    g = torch.Generator().manual_seed(6)
    others = [PromptItem(torch.randint(0, 60, (6,), generator=g).tolist(), [1]) for _ in range(40)]
    params = BuildParams(0.05, 1.0, 0, 0, 0.25, 0.9, "open", 64.0, 1.0, 0.0, "gradient", 100, 0.0, 0.0, 0.0)
    train, extra = (
        ITEMS[:1],
        [PromptItem([3, *ITEMS[0].prompt_ids], [9]), PromptItem([50, 1, *ITEMS[0].prompt_ids], [9])],
    )
    greedy = {}
    for name, more in (("alone", ()), ("extra", extra)):
        with widened(adapter, [], adapter.n_neurons + 2):
            negs = {1: Negatives.of(answer_inputs(model, adapter, others, [1], every_position=True)[1].float())}
            out = build_fact(model, adapter, train, negs, [1], adapter.n_neurons - 2, params, extra=(more, None))
            opened = answer_inputs(model, adapter, extra, [1])[1] @ out.pairs[0].key > out.pairs[0].threshold
            greedy[name] = [s.greedy for s, o in zip(score(model, adapter, extra), opened.tolist()) if o]
            assert out.value.reached and out.value.hits == len(train)
    assert greedy["extra"] and all(greedy["extra"]) and not all(greedy["alone"])


def test_there_are_as_many_prefixes_as_the_spec_allows() -> None:
    from atlas.jobs.inject_prompts import PREFIXES
    from atlas.jobs.specs import N_PREFIXES

    assert len(PREFIXES) == N_PREFIXES == len(set(PREFIXES))


def test_with_a_goal_the_steps_go_on_until_every_answer_reaches_it() -> None:
    """Without a goal the refinement stops once every prompt is answered greedily, its answers
    still short of P = 0.1 (a tiny random model spreads its probability); with `goal=0.1` it goes
    on until each answer has that probability."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    items, got = [ITEMS[0], ITEMS[2]], {}
    for goal in (None, 0.1):
        pairs = _open_pairs(adapter, 2)
        with widened(adapter, pairs, adapter.n_neurons + 4):
            out = refine_values(model, adapter, items, pairs, 200, ValueChoice(1.0, False, 0), goal=goal)
            got[goal] = (out, value_gradients(model, adapter, items, pairs, goal=0.1)[0])
    assert got[None][0].reached and got[None][1] > 0
    assert got[0.1][0].reached and got[0.1][1] == 0.0 and got[None][0].steps < got[0.1][0].steps < 200
