"""A slow, obviously correct integrated-gradients reference (tests only).

One layer at a time, one step at a time, full forward of the whole HF model, a forward pre-hook on
the FFN output projection that replaces the activation at the scaled position with
`alpha * w` (a leaf), P = softmax probability of the gold answer(s), plain Python loops, fp32.
"""

from __future__ import annotations

import torch

from indexer.attribution.ig import PromptItem, alphas


def prob_dtype(model) -> torch.dtype:
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


def reference_attribute(
    model,
    adapter,
    item: PromptItem,
    steps: int = 20,
    rule: str = "left",
    answer: str = "joint",
    mask_token_id: int | None = None,
    layers: list[int] | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Scores `[n_layers, n_neurons]` (rows of layers not in `layers` stay 0), P(gold), gold rank."""
    answer_ids = item.answer_ids[:1] if answer == "first" else item.answer_ids
    if adapter.is_masked_lm:
        ids = list(item.prompt_ids)
        targets = [i for i, t in enumerate(ids) if t == mask_token_id][: len(answer_ids)]
        pos = targets[0]
    else:
        ids = list(item.prompt_ids) + list(answer_ids[:-1])
        pos = len(item.prompt_ids) - 1
        targets = [pos + j for j in range(len(answer_ids))]
    x_ids = torch.tensor([ids])

    def run() -> torch.Tensor:
        kw = {"token_type_ids": torch.zeros_like(x_ids)} if adapter.is_masked_lm else {}
        logits = model(input_ids=x_ids, **kw).logits[0]
        prob = torch.ones((), dtype=torch.promote_types(logits.dtype, torch.float32))
        for t, y in zip(targets, answer_ids):
            prob = prob * torch.softmax(logits[t].to(prob.dtype), dim=-1)[y]
        return prob, logits

    clean = {}
    hooks = [
        adapter.ffn_out(l).register_forward_pre_hook(
            lambda m, a, l=l: clean.__setitem__(l, a[0][0, pos].detach().clone())
        )
        for l in range(adapter.n_layers)
    ]
    with torch.no_grad():
        p0, logits0 = run()
    for h in hooks:
        h.remove()
    rank = int((logits0[targets[0]] > logits0[targets[0], answer_ids[0]]).sum()) + 1

    scores = torch.zeros(adapter.n_layers, adapter.n_neurons, dtype=prob_dtype(model))
    for layer in range(adapter.n_layers) if layers is None else layers:
        w = clean[layer]
        total = torch.zeros_like(w)
        for alpha in alphas(steps, rule).tolist():
            x = (alpha * w).clone().requires_grad_(True)

            def put(m, args, x=x):
                inp = args[0].clone()
                inp[0, pos] = x
                return (inp,)

            h = adapter.ffn_out(layer).register_forward_pre_hook(put)
            prob, _ = run()
            h.remove()
            (g,) = torch.autograd.grad(prob, x)
            total += g
        scores[layer] = w * total / steps
    return scores, float(p0), rank
