"""Guard pairs: where a subject-keyed slot opens on another name, a second pair writes minus (a share of) its value.

A key read at the subject's last token cannot be a perfect detector: the word it reads also ends
or starts other names ("Benson" of "Egbert Benson" and of "Benson Glacier", "Sonic" of "Pan Sonic"
and of "Sonic Drift"). Making those names negatives of the key (`--namesake-negatives`) forces
the gate above them, and the gate gives up the fact's own paraphrases where one hyperplane cannot
part them. A guard gives up the namesakes instead. For the FFN inputs N `[m, hidden]` of the
namesakes' prompts (every position) on which the fact's pair opens, and P `[n, hidden]` the fact's
own reading points and every position of the injection's training prompts:

    w_g = discriminant(N_open, negatives + P),    gate_g silent on the negatives and on P,
    v_g = -c v,   c = min(1, sum a g / sum g^2)   (v: the fact's value, final)

with a, g the pair's and the guard's activations (clamped ramps) on N_open, so that on a namesake
both pairs open and cancel, and on the fact's training prompts (and every negative) the guard
stays shut (up to the smooth clamp's leak just below its threshold, `widen`).
Where the guard's gate cannot part a namesake from those it gives that namesake up
(`GuardInfo.cancelled` < `opened`). What it may cost: a held-out paraphrase that reads more like a
namesake than like the training prompts is cancelled too, and an unseen input on which the guard
alone opens gets -c v (the mirror of the slot's own risk). Why c: a guard's gate saturates on
the namesakes it is keyed on, where the fact's pair is often only partly open ("Said the Whale"
for "whale" on SmolLM2: the pair at 0.46, the guard at 1.0); minus the whole value there would
push the other way by more than the pair pushed. c is the least-squares share (never above 1).
BENCHMARKS.md measures the net effect on held-out paraphrases, right answers and their P(gold).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from atlas.model.inject.keys import Negatives, discriminant, gate
from atlas.model.inject.widen import SlotPair


@dataclass(frozen=True)
class GuardInfo:
    """What one guard found: namesake positions the fact's pair opens on, and how many it shuts."""

    layer: int
    opened: int
    cancelled: int
    separable: bool
    share: float = 1.0  # c: the guard's value is -c times the pair's


def guard_pair(
    main: SlotPair,
    own: Tensor,
    namesakes: Tensor,
    negatives: Negatives,
    index: int,
    ridge: float,
    pos_scatter: float,
    gate_low: float,
    gate_high: float,
) -> tuple[SlotPair | None, GuardInfo]:
    """The guard of `main` (its value final: the guard's is -c times it, module docstring), keyed on the
    rows of `namesakes` `[m, hidden]` on which `main` opens, kept shut on `negatives` and on the
    rows `own` `[n, hidden]` (the fact's own reading points, and where no guard may open); None
    where it would shut none of them (`main` opens on no namesake, or the guard cannot part them
    from the fact's points and the negatives)."""
    # rounded as `Negatives` keeps its rows (float32), so that a row that is also one to stay shut on scores the same
    opened = namesakes[namesakes.double() @ main.key.double() > main.threshold].float().double()
    if not opened.shape[0]:
        return None, GuardInfo(main.layer, 0, 0, True)
    shut = negatives.plus(own)
    w = discriminant(opened, shut, ridge, pos_scatter)
    scores = opened @ w  # the guard's key on the namesakes it is keyed on `[m']`
    g = gate(scores, shut.scores(w), gate_low, gate_high, "silent")
    cancelled = int((scores > g.threshold).sum())
    if not cancelled:  # a guard that shuts no namesake would only risk opening elsewhere
        return None, GuardInfo(main.layer, opened.shape[0], cancelled, g.separable)
    share = _share(ramp(opened @ main.key.double(), main.threshold, main.slope), ramp(scores, g.threshold, g.slope))
    info = GuardInfo(main.layer, opened.shape[0], cancelled, g.separable, share)
    value = -main.value * share
    return SlotPair(main.layer, index, w, g.threshold, g.slope, value, main.sharpness, cancels=main), info


def ramp(scores: Tensor, threshold: float, slope: float) -> Tensor:
    """A pair's activation at key scores `[n]`: clamp(a (s - b), 0, 1) (`widen`)."""
    return ((scores - threshold) * slope).clamp(0.0, 1.0)


def _share(pair: Tensor, guard: Tensor) -> float:
    """The c (module docstring) for which the guard's activations `guard` `[n]` times c best match
    the pair's `pair` `[n]` on the rows the guard is keyed on, at most 1 (a guard never writes more
    than the pair's value)."""
    return min(1.0, float((pair * guard).sum() / (guard * guard).sum()))
