"""Edit forms: how chosen value slots change (pure torch; the edit jobs pick the slots and record them).

A value slot `v` (`[hidden]`) is what neuron i writes into the residual stream, scaled by its
activation. The forms, each from the current slots `V` (`[k, hidden]`) to the new ones:

* `fill`: every slot becomes one vector (zero: the paper's erase; an embedding: its arXiv v1 form);
* `damp`: `V <- c V` (Selective Synaptic Dampening's idea: shrink rather than remove);
* `project`: remove the slots' components along answer directions `U` (`[m, hidden]`, e.g. the
  output embeddings of a relation's objects, scaled by the final norm):
  `V <- V - V U^T (U U^T + delta I)^-1 U`, with a small ridge `delta` (relative to U's scale) so that
  near-parallel directions do not blow up. What the neurons write about anything else is kept.

* `lsq_erase` (a whole-layer form): the least-squares change of a layer's output projection that
  removes part of what the layer writes along the answer directions on the erased relation's
  prompts, within the null space below or weighed against other prompts' activations (MEMIT).

Preservation (`nullspace_projector`, AlphaEdit's projection): a weight change `dW` of a layer's
output projection (`[hidden, N]`, slot i = column i) changes the layer's output on an input with
activations `k` (`[N]`) by `dW k`. Restricting `dW <- dW P`, `P` the projector on the null space
of `K0^T K0` (`K0`: activations that inputs to preserve produce at that layer), leaves their
outputs unchanged. It spreads the change over every slot of the layer, not only the chosen ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated

import torch
from torch import Tensor

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.hooks import hooks

Slots = Annotated[Tensor, "k hidden"]


def fill(v: Slots, vector: Tensor) -> Slots:
    """Every slot becomes `vector` (`[hidden]`)."""
    return vector.to(v.dtype).expand_as(v).clone()


def damp(v: Slots, factor: float) -> Slots:
    """Every slot scaled by `factor` (0: zeroed; 1: unchanged)."""
    return (v.double() * factor).to(v.dtype)


def project_out(v: Slots, directions: Annotated[Tensor, "m hidden"], ridge: float = 1e-3) -> Slots:
    """`v` without its components along `directions` (ridge-regularised least squares, float64).

    `ridge` is relative: delta = ridge x the mean squared norm of the directions."""
    u = directions.double()
    gram = u @ u.T
    delta = ridge * float(gram.diagonal().mean()) if len(u) else 0.0
    coef = torch.linalg.solve(gram + delta * torch.eye(len(u), dtype=u.dtype), u @ v.double().T)  # [m, k]
    return (v.double() - coef.T @ u).to(v.dtype)


# --- preservation ----------------------------------------------------------------------------------


@torch.no_grad()
def activation_moments(
    adapter: Adapter, items: Sequence[PromptItem], layers: Iterable[int], answer_only: bool = False, batch: int = 16
) -> dict[int, tuple[Tensor, int]]:
    """Per layer, `K0^T K0` (`[N, N]`, float64, on the model's device) and the row count, over the
    neuron activations that `items` produce (every position of each prompt, or its answer position)."""
    layers = sorted(set(layers))
    dev = next(adapter.model.parameters()).device
    out = {
        layer: [torch.zeros(adapter.n_neurons, adapter.n_neurons, dtype=torch.float64, device=dev), 0]
        for layer in layers
    }
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        seqs = [list(it.prompt_ids) for it in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        attn = torch.zeros(len(seqs), width, dtype=torch.long)
        keep = torch.zeros(len(seqs), width, dtype=torch.bool)  # the positions whose activations count
        for r, s in enumerate(seqs):
            ids[r, : len(s)], attn[r, : len(s)] = torch.tensor(s), 1
            keep[r, len(s) - 1 if answer_only else 0 : len(s)] = True

        def grab(layer: int, keep: Tensor = keep):
            def fn(x: Tensor) -> None:
                rows = x[keep.to(x.device)].double()
                out[layer][0] += rows.T @ rows
                out[layer][1] += rows.shape[0]

            return fn

        with hooks(adapter, {layer: grab(layer) for layer in layers}):
            adapter.model(input_ids=ids.to(dev), attention_mask=attn.to(dev))
    return {layer: (m, int(n)) for layer, (m, n) in out.items()}


def nullspace_projector(moment: Tensor, n_rows: int, energy: float = 0.99) -> tuple[Tensor, int]:
    """`P = I - Q Q^T` (`[N, N]`, float64), Q = the top eigenvectors of `K0^T K0 / n` that hold
    `energy` of its trace: directions the preserved inputs' activations (almost) never take are
    left free. Returns P and the rank removed."""
    n = moment.shape[0]
    if n_rows == 0:
        return torch.eye(n, dtype=torch.float64), 0
    values, vectors = torch.linalg.eigh(moment / n_rows)  # on the moment's device; the projector comes back
    values, vectors = values.cpu(), vectors.cpu()
    values = values.flip(0).clamp(min=0)
    vectors = vectors.flip(1)
    cum = values.cumsum(0) / values.sum().clamp(min=1e-300)
    rank = int((cum < energy).sum()) + 1
    q = vectors[:, :rank]
    return torch.eye(n, dtype=torch.float64) - q @ q.T, rank


# --- least-squares updates -------------------------------------------------------------------------


def answer_positions(adapter: Adapter, items: Sequence[PromptItem]) -> tuple[Tensor, Tensor, Tensor]:
    """ids, attention mask `[B, S]` and the position interventions act at `[B]` (the last prompt
    token for decoders, the first mask for masked LMs), prompts only."""
    width = max(len(it.prompt_ids) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    attn = torch.zeros(len(items), width, dtype=torch.long)
    pos = torch.zeros(len(items), dtype=torch.long)
    for r, it in enumerate(items):
        ids[r, : len(it.prompt_ids)], attn[r, : len(it.prompt_ids)] = torch.tensor(it.prompt_ids), 1
        masks = [i for i, t in enumerate(it.prompt_ids) if t == adapter.mask_token_id] if adapter.is_masked_lm else []
        pos[r] = masks[0] if masks else len(it.prompt_ids) - 1
    return ids, attn, pos


@torch.no_grad()
def answer_activations(
    adapter: Adapter, items: Sequence[PromptItem], neurons: Sequence[tuple[int, int]]
) -> tuple[Tensor, float]:
    """Mean activation of each of `neurons` at the answer position over `items` (`[k]`, float64),
    and the mean RMS of the residual stream entering the last layer there (the scale of a step)."""
    ids, attn, pos = answer_positions(adapter, items)
    rows = torch.arange(len(items))
    seen: dict[int, Tensor] = {}

    def grab(layer: int):
        def fn(x: Tensor) -> None:
            seen[layer] = x[rows.to(x.device), pos.to(x.device)].double().cpu()

        return fn

    dev = next(adapter.model.parameters()).device
    with hooks(adapter, {layer: grab(layer) for layer in {n[0] for n in neurons}}):
        out = adapter.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), output_hidden_states=True)
    acts = torch.stack([seen[layer][:, n].mean() for layer, n in neurons])
    h = out.hidden_states[-2][rows.to(dev), pos.to(dev)].double()
    return acts, float((h.pow(2).mean(-1).sqrt()).mean())


@torch.no_grad()
def answer_keys(
    adapter: Adapter, items: Sequence[PromptItem], layers: Iterable[int], batch: int = 32
) -> dict[int, Annotated[Tensor, "n N"]]:
    """Per layer, the neuron activations (the keys a layer's value slots are weighted by) at the
    answer position of each of `items` (float64, CPU)."""
    layers = sorted(set(layers))
    dev = next(adapter.model.parameters()).device
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(items), batch):
        ids, attn, pos = answer_positions(adapter, items[start : start + batch])
        rows = torch.arange(len(pos))

        def grab(layer: int, rows: Tensor = rows, pos: Tensor = pos):
            def fn(x: Tensor) -> None:
                out[layer].append(x[rows.to(x.device), pos.to(x.device)].double().cpu())

            return fn

        with hooks(adapter, {layer: grab(layer) for layer in layers}):
            adapter.model(input_ids=ids.to(dev), attention_mask=attn.to(dev))
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def lsq_erase(
    w: Annotated[Tensor, "hidden N"],
    keys: Annotated[Tensor, "n N"],
    directions: Annotated[Tensor, "m hidden"],
    strength: float,
    projector: Annotated[Tensor, "N N"] | None = None,
    preserved: Annotated[Tensor, "N N"] | None = None,
    lam: float = 1e-2,
    ridge: float = 1e-3,
) -> Annotated[Tensor, "hidden N"]:
    """A layer's least-squares erase (float64): the change `dW` of its output projection `w` that
    takes away `strength` of the answer-direction part of the layer's output on the erased
    relation's `keys`, `dW K1 ~ R = -strength Pi_U W K1` (`Pi_U` is `project_out`'s complement),
    while other inputs' outputs barely move. Two ways to spare them:

    * `projector` (AlphaEdit's hard constraint): `dW` in the range of the null-space projector `P`,
      `dW = R (Kp^T Kp + lam' I)^-1 Kp^T`, `Kp = P K1`. The ridge is measured against the
      UNprojected keys: where the null space keeps little of them the change stays small (a weak
      erase) instead of growing like 1/|Kp| (a wrecked layer);
    * `preserved` (MEMIT's soft constraint): `C` (`[N, N]`, e.g. a weighted second moment of other
      prompts' activations), minimising `|dW K1 - R|^2 + tr(dW C dW^T) + lam' |dW|^2`:
      `dW = R K1^T (K1 K1^T + C + lam' I)^-1`. Unlike the null space, it weighs each direction by
      how much the preserved inputs use it, so it still applies where their activations span
      every direction (answer positions of thousands of prompts do).

    `lam'` = `lam` x the mean of diag(K1^T K1). With neither, both are the plain ridge solve."""
    out = w.double() @ keys.double().T  # [hidden, n]: the layer's output on the erased relation's prompts
    target = -strength * (out - project_out(out.T, directions, ridge).double().T)
    return lsq_change(keys, target, projector, preserved, lam)


def lsq_change(
    keys: Annotated[Tensor, "n N"],
    target: Annotated[Tensor, "hidden n"],
    projector: Annotated[Tensor, "N N"] | None = None,
    preserved: Annotated[Tensor, "N N"] | None = None,
    lam: float = 1e-2,
) -> Annotated[Tensor, "hidden N"]:
    """The ridge least-squares change `dW` of a layer's output projection with `dW K1 ~ target` on
    the inputs `keys` (`K1^T`), sparing other inputs by `projector` or `preserved` (see
    `lsq_erase`); `lam` is relative to the mean of diag(K1^T K1)."""
    k1 = keys.double().T  # [N, n]
    scale = lam * float(k1.pow(2).sum(0).mean())
    if preserved is not None:
        system = k1 @ k1.T + preserved.double().cpu() + scale * torch.eye(len(k1), dtype=torch.float64)
        return torch.linalg.solve(system, k1 @ target.double().T).T  # system is symmetric
    kp = k1 if projector is None else projector.double() @ k1
    gram = kp.T @ kp
    return target.double() @ torch.linalg.solve(gram + scale * torch.eye(len(gram), dtype=gram.dtype), kp.T)


def preservation_moment(moment: Tensor, n_rows: int, n_keys: int, weight: float) -> Annotated[Tensor, "N N"]:
    """MEMIT's `C` for `lsq_erase`: the preserved activations' mean second moment `K0^T K0 / n0`,
    scaled to `n_keys` rows (so `weight` 1 counts a preserved direction as much as one erased
    prompt counts per row) and by `weight`."""
    return moment.double().cpu() * (weight * n_keys / max(n_rows, 1))


def rank_one_change(acts: Tensor, step: Tensor, lam: float) -> Annotated[Tensor, "k hidden"]:
    """The smallest slot changes whose activation-weighted sum is `step` (ridge least squares):
    minimise |sum_i a_i dv_i - step|^2 + lam |a|^2 sum_i |dv_i|^2  ->  dv_i = a_i step / (|a|^2 (1 + lam))."""
    a = acts.double()
    return a[:, None] * step.double()[None, :] / (float(a @ a) * (1.0 + lam))


def logit_gradients(
    adapter: Adapter, items: Sequence[PromptItem], layers: Iterable[int], up: int, down: int | None
) -> dict[int, Tensor]:
    """Per layer, the unit direction in which a change of the FFN's output at the answer position
    raises logit(up) - logit(down) most (first order): the gradient there, averaged over `items`.
    Through whatever the model does above the layer and in its head (norms, BERT's head transform)."""
    ids, attn, pos = answer_positions(adapter, items)
    rows = torch.arange(len(items))
    leaves: dict[int, Tensor] = {}

    def leaf(layer: int):
        def fn(out: Tensor) -> Tensor:
            leaves[layer] = out.detach().requires_grad_(True)
            return leaves[layer]

        return fn

    dev = next(adapter.model.parameters()).device
    layers = sorted(set(layers))
    with torch.enable_grad(), hooks(adapter, {layer: leaf(layer) for layer in layers}, site="output"):
        logits = adapter.model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits[rows.to(dev), pos.to(dev)]
        gain = logits[:, up] - (logits[:, down] if down is not None else 0.0)
        grads = torch.autograd.grad(gain.sum(), [leaves[layer] for layer in layers])
    out = {}
    for layer, g in zip(layers, grads):
        d = g[rows.to(g.device), pos.to(g.device)].double().mean(0).cpu()
        out[layer] = d / d.norm().clamp(min=1e-30)
    return out
