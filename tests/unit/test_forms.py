"""Edit forms against plain references: direction removal, damping, the null-space projection,
the rank-one least-squares change and the logit gradient (checked by finite differences)."""

from __future__ import annotations

import torch

from atlas.model import forms
from atlas.model.adapters import adapter_for
from atlas.model.encode import PromptItem
from atlas.model.hooks import hooks
from tests.support.tiny_hf import tiny_model


def test_project_out_leaves_what_is_orthogonal_and_removes_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 16, generator=g)
    v = torch.randn(5, 16, generator=g, dtype=torch.float64)
    got = forms.project_out(v, u, ridge=0.0)
    basis, _ = torch.linalg.qr(u.double().T)  # the plain reference: v minus its projection on span(U)
    want = v - (v @ basis) @ basis.T
    assert torch.allclose(got, want, atol=1e-10)
    assert (got @ u.double().T).abs().max() < 1e-10
    ridged = forms.project_out(v, u, ridge=1e-3)  # a ridge removes a little less, never more
    assert ((v - ridged).norm(dim=1) <= (v - got).norm(dim=1) + 1e-12).all()


def test_damp_and_fill() -> None:
    v = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    assert torch.equal(forms.damp(v, 0.25), torch.tensor([[0.25, -0.5], [0.125, 1.0]]))
    assert torch.equal(forms.fill(v, torch.tensor([3.0, 4.0])), torch.tensor([[3.0, 4.0], [3.0, 4.0]]))


def test_nullspace_projection_leaves_preserved_inputs_unchanged() -> None:
    g = torch.Generator().manual_seed(1)
    k0 = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 32, generator=g, dtype=torch.float64)
    projector, rank = forms.nullspace_projector(k0.T @ k0, len(k0), energy=0.999999)
    assert rank == 6 and torch.allclose(projector @ projector, projector, atol=1e-10)
    delta = torch.randn(32, 8, generator=g, dtype=torch.float64)  # rows = slot changes
    dw = (projector @ delta).T  # the projected weight change [hidden, N]
    assert (dw @ k0.T).abs().max() < 1e-8  # outputs on the preserved activations do not move
    fresh = torch.randn(32, generator=g, dtype=torch.float64)
    assert (dw @ fresh).abs().max() > 1e-3  # other inputs still see the edit


def test_rank_one_change_is_the_ridge_least_squares_solution() -> None:
    a = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    step = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    for lam in (0.0, 0.3):
        dv = forms.rank_one_change(a, step, lam)
        assert torch.allclose((a[:, None] * dv).sum(0), step / (1 + lam))  # the activation-weighted sum
        # the minimum-norm solution among all dv with that sum: rows proportional to the activations
        assert torch.allclose(dv / a[:, None], (dv / a[:, None])[0].expand_as(dv))


def test_lsq_erase_is_the_ridge_solution_within_the_null_space() -> None:
    """Against the plain reference: the ridge least squares `min |X Kp - R|^2 + lam' |X|^2` solved as
    one stacked system by `lstsq`, with R = -s x (the part of W K1 in span(U)) built from a QR basis."""
    g = torch.Generator().manual_seed(2)
    hidden, n_neurons, n1, rank0 = 12, 24, 5, 8
    w = torch.randn(hidden, n_neurons, generator=g, dtype=torch.float64)
    k1 = torch.randn(n1, n_neurons, generator=g, dtype=torch.float64)
    k0 = torch.randn(100, rank0, generator=g, dtype=torch.float64) @ torch.randn(
        rank0, n_neurons, generator=g, dtype=torch.float64
    )
    u = torch.randn(3, hidden, generator=g, dtype=torch.float64)
    projector, _ = forms.nullspace_projector(k0.T @ k0, len(k0), energy=1 - 1e-12)
    dw = forms.lsq_erase(w, k1, u, 0.5, projector=projector, lam=1e-2, ridge=0.0)

    basis, _ = torch.linalg.qr(u.T)  # [hidden, 3]
    target = -0.5 * basis @ (basis.T @ (w @ k1.T))  # [hidden, n1]
    kp = projector @ k1.T  # [N, n1]
    lam = 1e-2 * float(k1.pow(2).sum(1).mean())  # relative to the unprojected keys [n, N]
    lhs = torch.cat([kp.T, lam**0.5 * torch.eye(n_neurons, dtype=torch.float64)])  # [n1 + N, N]
    rhs = torch.cat([target.T, torch.zeros(n_neurons, hidden, dtype=torch.float64)])
    want = torch.linalg.lstsq(lhs, rhs).solution.T  # [hidden, N]
    assert torch.allclose(dw, want, atol=1e-9)
    assert (dw @ k0.T).abs().max() < 1e-8  # the preserved activations' outputs do not move
    free = forms.lsq_erase(w, k1, u, 1.0, lam=1e-9, ridge=0.0)
    assert torch.allclose(free @ k1.T, -(basis @ (basis.T @ (w @ k1.T))), atol=1e-6)  # unconstrained: exact


def test_lsq_erase_with_a_preserved_moment_is_the_weighted_least_squares_solution() -> None:
    """MEMIT's soft form against a stacked `lstsq`: rows K1 (target R), sqrt(c) K0 (target 0) and the
    ridge, for `C = c K0^T K0`; a heavier weight moves the preserved outputs less, and weight 0 gives
    the unconstrained ridge solve (the projector path with no projector)."""
    g = torch.Generator().manual_seed(5)
    hidden, n_neurons, n1, n0 = 10, 20, 4, 60
    w = torch.randn(hidden, n_neurons, generator=g, dtype=torch.float64)
    k1 = torch.randn(n1, n_neurons, generator=g, dtype=torch.float64)
    k0 = torch.randn(n0, n_neurons, generator=g, dtype=torch.float64) + 0.5 * k1.mean(0)  # overlapping
    u = torch.randn(2, hidden, generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(u.T)
    target = -0.7 * basis @ (basis.T @ (w @ k1.T))  # [hidden, n1]
    lam = 1e-2 * float(k1.pow(2).sum(1).mean())
    moved = []
    for weight in (1.0, 10.0, 100.0):
        c = forms.preservation_moment(k0.T @ k0, n0, n1, weight)
        dw = forms.lsq_erase(w, k1, u, 0.7, preserved=c, lam=1e-2, ridge=0.0)
        root = (weight * n1 / n0) ** 0.5
        lhs = torch.cat([k1, root * k0, lam**0.5 * torch.eye(n_neurons, dtype=torch.float64)])
        rhs = torch.cat([target.T, torch.zeros(n0 + n_neurons, hidden, dtype=torch.float64)])
        assert torch.allclose(dw, torch.linalg.lstsq(lhs, rhs).solution.T, atol=1e-9)
        moved.append(float((dw @ k0.T).norm()))
    assert moved[0] > moved[1] > moved[2]
    zero = forms.preservation_moment(k0.T @ k0, n0, n1, 0.0)
    plain = forms.lsq_erase(w, k1, u, 0.7, lam=1e-2, ridge=0.0)
    assert torch.allclose(forms.lsq_erase(w, k1, u, 0.7, preserved=zero, lam=1e-2, ridge=0.0), plain, atol=1e-9)


def test_answer_keys_are_the_activations_at_the_answer_position() -> None:
    model = tiny_model("llama", seed=3)
    adapter = adapter_for(model)
    items = [PromptItem([5, 9, 2 + i][: 2 + i], [7]) for i in range(3)]  # different lengths: padding
    keys = forms.answer_keys(adapter, items, [0, 1], batch=2)
    for r, it in enumerate(items):  # one prompt at a time, its last position
        ids = torch.tensor([list(it.prompt_ids)])
        seen: dict[int, torch.Tensor] = {}

        def grab(x: torch.Tensor, seen: dict = seen) -> None:
            seen[1] = x[0, -1].double()

        with hooks(adapter, {1: grab}):
            model(input_ids=ids)
        assert torch.allclose(keys[1][r], seen[1], atol=1e-5)
    assert keys[0].shape == (3, adapter.n_neurons)


def test_logit_gradient_matches_finite_differences() -> None:
    model = tiny_model("llama", seed=4).double()
    ad = adapter_for(model)
    items = [PromptItem([5, 7, 9, 11], [3]), PromptItem([8, 2, 6], [3])]
    up, down, layer = 3, 12, 1
    unit = forms.logit_gradients(ad, items, [layer], up, down)[layer]
    assert abs(float(unit.norm()) - 1.0) < 1e-9

    def gain(direction: torch.Tensor, eps: float) -> float:
        """Mean logit(up) - logit(down) with eps x direction added to the layer's FFN output at the answer."""
        total = 0.0
        for it in items:
            ids = torch.tensor([it.prompt_ids])

            def add(out: torch.Tensor) -> torch.Tensor:
                out = out.clone()
                out[0, -1] += eps * direction.to(out.dtype)
                return out

            with forms.hooks(ad, {layer: add}, site="output"), torch.no_grad():
                logits = model(input_ids=ids).logits[0, -1]
            total += float(logits[up] - logits[down])
        return total / len(items)

    eps = 1e-3  # the rotary tables stay float32: finite differences need a step well above their rounding
    slope = (gain(unit, eps) - gain(unit, -eps)) / (2 * eps)
    other = torch.randn(unit.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    other = other - (other @ unit) * unit  # orthogonal to the gradient: no first-order gain
    across = (gain(other / other.norm(), eps) - gain(other / other.norm(), -eps)) / (2 * eps)
    assert slope > 0 and abs(across) < 1e-2 * slope
