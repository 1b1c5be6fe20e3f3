"""Gradient sketches: what an audit needs to predict a value-slot edit's effect on one prompt.

A change dV_l of layer l's value slots (the FFN output projection, `[hidden, neurons]`, one column
per neuron) changes the log-probability of a prompt's gold answer y, to first order, by

    d log P(y) = sum_l sum_t g_lt . (dV_l a_lt) = sum_l <dV_l, M_l>,      M_l = sum_t g_lt a_lt^T

with a_lt the layer's neuron activations at position t and g_lt the gradient of log P(y) (joint
over the answer tokens) on what the layer's FFN adds to the residual stream there. Every position
counts: an edit also moves the prompt's subject tokens, which the answer then reads. M_l is
`[hidden, neurons]` but of rank <= the prompt's positions, and a few singular directions carry
most of it, so the index keeps its top-r singular triplets:

    M_l ~ sum_k s_k u_k w_k^T        (u_k `[hidden]`, w_k `[neurons]`, unit vectors; s_k > 0)

r * (hidden + neurons + 1) numbers per layer and prompt instead of hidden * neurons. An audit then
predicts the change of any edit form (zeroing, damping, direction removal, least-squares steps)
from the atlas alone: d log P ~ sum_l sum_k s_k u_k^T dV_l w_k, over the edited columns only.
`IG` scores cannot do this: they see only the answer position and the slot's own direction.

The top-r SVD of G^T A (G `[T, hidden]`, A `[T, neurons]`, T positions) never forms the matrix: only
`[T, T]` Gram matrices are decomposed (`top_triplets`; exact, batched over prompts). Padded
positions have zero gradient, so they drop out by themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from atlas.model.encode import PromptItem
from atlas.model.hooks import hooks
from atlas.model.scoring import AnswerBatch, answer_batch, answer_logprobs

#: how a sketch travels to the database: a header (int32 r, hidden, neurons), then s (float32, r),
#: u (float16, r x hidden) and w (float16, r x neurons)
SKETCH_DTYPES = (np.float32, np.float16, np.float16)
HEADER = 12


@dataclass
class Sketches:
    """Per prompt and sketched layer, the top-r triplets of M_l: s `[n, L, r]`, u `[n, L, r, hidden]`,
    w `[n, L, r, neurons]` (fp32, on the model's device; `layers` names the L layers)."""

    layers: list[int]
    s: Tensor
    u: Tensor
    w: Tensor

    def packed(self) -> list[list[bytes]]:
        """Per prompt, its sketch of each layer packed (see `unpack`); one copy off the device."""
        s, u, w = self.s.cpu().numpy(), self.u.half().cpu().numpy(), self.w.half().cpu().numpy()
        return [[pack(s[i, j], u[i, j], w[i, j]) for j in range(len(self.layers))] for i in range(len(s))]


def pack(s: np.ndarray, u: np.ndarray, w: np.ndarray) -> bytes:
    """One layer's triplets as bytes (self-describing): s `[r]`, u `[r, hidden]`, w `[r, neurons]`."""
    head = np.array([len(s), u.shape[1], w.shape[1]], np.int32).tobytes()
    return head + b"".join(np.ascontiguousarray(x, dt).tobytes() for x, dt in zip((s, u, w), SKETCH_DTYPES))


def unpack(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s `[r]`, u `[r, hidden]`, w `[r, neurons]`) as float32 from `pack`'s bytes."""
    r, hidden, neurons = (int(x) for x in np.frombuffer(blob, np.int32, 3))
    s = np.frombuffer(blob, np.float32, r, HEADER)
    u = np.frombuffer(blob, np.float16, r * hidden, HEADER + 4 * r).reshape(r, hidden)
    w = np.frombuffer(blob, np.float16, r * neurons, HEADER + 4 * r + 2 * r * hidden).reshape(r, neurons)
    return s, u.astype(np.float32), w.astype(np.float32)


def top_triplets(g: Tensor, a: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-`rank` SVD of g^T a per row, without forming it: g `[B, T, hidden]`, a `[B, T, neurons]`
    -> s `[B, r]`, u `[B, r, hidden]`, w `[B, r, neurons]` (r = min(rank, T)).

    Only `[T, T]` matrices are decomposed (batched `eigh`, one call on a GPU, where a batched QR or
    SVD of the tall factors loops over the batch): with g g^T = V diag(sg^2) V^T, g^T a =
    (g^T V sg^-1) (sg V^T a), and the top eigenvectors z of (sg V^T a)(sg V^T a)^T give
    u = g^T V sg^-1 z, then w = a^T g u / s with s = |a^T g u|."""
    g, a = g.float(), a.float()
    eg, vg = torch.linalg.eigh((g @ g.transpose(1, 2)).double())  # [B, T], [B, T, T]
    sg = eg.clamp_min(0).sqrt()
    core = vg.transpose(1, 2) @ (a @ a.transpose(1, 2)).double() @ vg  # V^T a a^T V
    lam, z = torch.linalg.eigh(sg[:, :, None] * core * sg[:, None, :])  # ascending
    r = min(rank, lam.shape[1])
    z = z[:, :, -r:].flip(-1)  # [B, T, r], largest first
    inv = torch.where(sg > 1e-6 * sg.amax(-1, keepdim=True), 1 / sg.clamp_min(1e-300), 0.0)
    u = g.transpose(1, 2) @ (vg @ (inv[:, :, None] * z)).float()  # [B, hidden, r]
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    mtu = a.transpose(1, 2) @ (g @ u)  # M^T u [B, neurons, r]
    s = mtu.norm(dim=1)  # [B, r]
    return s, u.transpose(1, 2), (mtu / s[:, None, :].clamp_min(1e-30)).transpose(1, 2)


def _keep(store: dict[int, Tensor], layer: int):
    def fn(x: Tensor) -> None:
        store[layer] = x

    return fn


def gold_logprob(model: nn.Module, adapter, embeds: Tensor, b: AnswerBatch) -> Tensor:
    """log P(gold) of each row of `b`, joint over its answer tokens (teacher-forced): `[B]`, differentiable."""
    lp = answer_logprobs(model, adapter, b, inputs_embeds=embeds)  # [B, T, V]
    dev = lp.device
    return (lp.gather(-1, b.gold.to(dev)[..., None])[..., 0] * b.valid.to(dev)).sum(-1)


def sketch(model: nn.Module, adapter, items: Sequence[PromptItem], layers: Sequence[int], rank: int) -> Sketches:
    """The gradient sketches of `items` (one forward and one backward pass) on `layers`."""
    b = answer_batch(items, adapter.is_masked_lm, adapter.mask_token_id)
    dev = next(model.parameters()).device
    acts: dict[int, Tensor] = {}
    outs: dict[int, Tensor] = {}
    embeds = model.get_input_embeddings()(b.ids.to(dev)).detach().requires_grad_(True)  # so the FFNs get gradients
    with torch.enable_grad(), hooks(adapter, {layer: _keep(acts, layer) for layer in layers}):
        with hooks(adapter, {layer: _keep(outs, layer) for layer in layers}, site="output"):
            logp = gold_logprob(model, adapter, embeds, b).sum()  # rows are independent
            grads = torch.autograd.grad(logp, [outs[layer] for layer in layers])  # no parameter gradients
    trip = [top_triplets(g, acts[layer].detach(), rank) for g, layer in zip(grads, layers)]
    s, u, w = (torch.stack([t[i] for t in trip], 1) for i in range(3))
    return Sketches(list(layers), s, u, w)


def first_order(blobs: Sequence[bytes], cols: np.ndarray, dv: np.ndarray, rank: int | None = None) -> np.ndarray:
    """Each sketch's first-order change of log P(gold) under a change `dv` `[hidden, k]` of the
    value slots `cols` `[k]` of its layer: sum_k s_k u_k^T dv w_k[cols], `[n]` (float64); with
    `rank`, from its first `rank` triplets only (what a sketch of that rank would have given)."""
    out = np.zeros(len(blobs))
    by_size: dict[int, list[int]] = {}
    for i, b in enumerate(blobs):
        by_size.setdefault(len(b), []).append(i)
    for idx in by_size.values():  # one stack per rank (a prompt shorter than the rank keeps fewer triplets)
        parts = [tuple(x[:rank] for x in unpack(blobs[i])) for i in idx]
        s = np.stack([p[0] for p in parts]).astype(np.float64)  # [n, r]
        u = np.stack([p[1] for p in parts])  # [n, r, hidden]
        w = np.stack([p[2][:, cols] for p in parts])  # [n, r, k]
        out[idx] = np.einsum("nr,nrk,nrk->n", s, (u @ dv).astype(np.float64), w)
    return out
