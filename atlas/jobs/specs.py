"""What an edit is asked to do, defined once for the job and its command (no torch: `--help` stays fast).

Each spec is a frozen dataclass whose fields carry their flags (`atlas.options.opt`); `check()`
refuses unknown or conflicting values before anything is read or loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas.errors import InputError
from atlas.options import opt

SELECTIONS = ("specific", "frequent")
FORMS = ("zero", "unk", "token:T", "damp:F", "project", "lsq")
PRESERVE = ("auto", "none", "nullspace", "covariance")  # erases and updates alike
N_PREFIXES = 8  # len(atlas.jobs.inject_prompts.PREFIXES), the most --value-prefixes (a unit test checks)


def resolved_preservation(preserve: str, least_squares: bool) -> str:
    """`auto` is MEMIT's covariance constraint where a form solves a least-squares change (it spared
    other facts best on the real SmolLM2: BENCHMARKS.md), and none for the forms that set slots."""
    if preserve not in PRESERVE:
        raise InputError(f"unknown preservation {preserve!r}: use {' or '.join(PRESERVE)}")
    if preserve == "auto":
        return "covariance" if least_squares else "none"
    return preserve


def preserve_weight_opt() -> Any:
    """`--preserve-weight`, the same for erases and updates."""
    return opt(
        100.0,
        metavar="W",
        help="covariance: how much a preserved activation direction weighs against the edit (per "
        "prompt, relative to one of the edited prompts); higher spares more and changes less.",
    )


def preserve_facts_opt() -> Any:
    """`--preserve-facts`, the same for erases and updates."""
    return opt(
        1000,
        minimum=1,
        metavar="N",
        help="Facts of other relations, from every run of the model, whose activations are preserved.",
    )


@dataclass(frozen=True)
class EraseSpec:
    """How to erase: which neurons (selection and its parameters), how (form), what to preserve.

    `lsq` is a whole-layer form: it edits the last layer and the `layers` - 1 others holding most of
    the relation's attribution (not chosen neurons), so the neuron options do not apply to it."""

    select: str = opt(
        "specific",
        choices=SELECTIONS,
        help="Which neurons: specific (used by the relation's facts, "
        "few of any other relation's) or frequent (in the most facts; the paper).",
    )
    top: int = opt(20, minimum=1, metavar="K", help="How many neurons.")
    min_facts: int | None = opt(
        None,
        minimum=1,
        metavar="M",
        help="frequent: every knowledge neuron in >= M facts "
        "instead of the top K (arXiv v1). specific: the least facts using a neuron [2].",
    )
    max_other_share: float = opt(
        0.05,
        metavar="S",
        help="specific: leave neurons that more than this share of any other relation's facts use (hub exclusion).",
    )
    min_layer: int | None = opt(
        None, minimum=0, help="Only layers >= this [neurons: 0; lsq: the lowest third of the layers left out]."
    )
    max_layer: int = opt(100_000, minimum=0, help="Only layers <= this.")
    form: str = opt(
        "lsq",
        metavar="FORM",
        help="What the slots become: zero | unk | token:T | damp:F (x F) | "
        "project (remove the relation's answer directions) | lsq (least-squares erase of whole layers).",
    )
    layers: int = opt(3, minimum=1, help="lsq: how many layers (see --last-layer).")
    last_layer: bool = opt(
        True,
        flag="--last-layer/--no-last-layer",
        help="lsq: always edit the last layer in range, then those with the most attribution (nothing after "
        "it can restore what the erase removes; attribution alone may leave it out, and the erase then fails).",
    )
    strength: float = opt(0.5, help="lsq: share of the answer-direction output removed on the relation's prompts.")
    ridge: float = opt(1e-3, help="project: ridge, relative to the answer directions' squared norm.")
    preserve: str = opt(
        "auto",
        choices=PRESERVE,
        help="What other relations keep: covariance (lsq only): weigh the change against the activations "
        "other relations' prompts produce at their answer position (MEMIT); nullspace: restrict each edited "
        "layer's change to the null space of other relations' activations at every position (AlphaEdit); "
        "auto: covariance for lsq, none otherwise. Both change every slot of the edited layers.",
    )
    energy: float = opt(
        0.9999,
        help="nullspace: share of the activations' energy kept out of the edit's way (a few massive "
        "activation dimensions hold most of it in some layers, so 0.99 may protect almost nothing).",
    )
    preserve_weight: float = preserve_weight_opt()
    preserve_facts: int = preserve_facts_opt()
    eval_facts: int = opt(50, minimum=1, help="Facts of the erased relation measured.")
    other_facts: int = opt(10, minimum=1, help="Facts of each other relation measured.")
    control: bool = opt(
        True, flag="--control/--no-control", help="Also measure the same form on as many layer-matched random neurons."
    )
    seed: int = opt(0, help="Seed of the evaluation sample and the control neurons.")

    @property
    def whole_layers(self) -> bool:
        return self.form == "lsq"

    @property
    def preservation(self) -> str:
        """The preservation that applies: `auto` resolved (covariance for lsq, none otherwise)."""
        return resolved_preservation(self.preserve, self.whole_layers)

    @property
    def preserving(self) -> bool:
        return self.preservation != "none"

    def layer_floor(self, n_layers: int) -> int:
        """The lowest layer an erase may edit: `min_layer`, else the model's lowest third is left out
        for `lsq` (the early layers hold the subjects' features, not the relation's answers)."""
        return self.min_layer if self.min_layer is not None else n_layers // 3

    def check(self) -> None:
        """Refuse unknown or conflicting options before anything is read or loaded."""
        default = EraseSpec()
        neuron_options = ("select", "top", "min_facts", "max_other_share")
        if self.whole_layers and (used := [o for o in neuron_options if getattr(self, o) != getattr(default, o)]):
            raise InputError(f"--{used[0].replace('_', '-')} chooses neurons; --form lsq edits whole layers (--layers)")
        layer_options = ("layers", "strength", "last_layer")
        if not self.whole_layers and any(getattr(self, o) != getattr(default, o) for o in layer_options):
            raise InputError("--layers, --strength and --no-last-layer go with --form lsq")
        if self.select not in SELECTIONS:
            raise InputError(f"unknown selection {self.select!r}: use {' or '.join(SELECTIONS)}")
        how = self.preservation  # resolving `auto` refuses an unknown value
        if self.select == "frequent" and self.max_other_share != EraseSpec.max_other_share:
            raise InputError("--max-other-share goes with --select specific (frequent neurons are not screened)")
        if how != "nullspace" and self.energy != default.energy:
            raise InputError("--energy goes with --preserve nullspace")
        if how != "covariance" and self.preserve_weight != default.preserve_weight:
            raise InputError("--preserve-weight goes with --preserve covariance")
        if how == "covariance" and not self.whole_layers:
            raise InputError("--preserve covariance goes with --form lsq (use nullspace for chosen neurons)")
        if self.preserve_weight < 0:
            raise InputError(f"--preserve-weight {self.preserve_weight}: give a weight >= 0")
        if self.form.startswith("damp:") and _factor(self.form) is None:
            raise InputError(f"bad --form {self.form!r}: damp:F needs a number F, e.g. damp:0.1")
        if not (self.form in ("zero", "unk", "project", "lsq") or self.form.startswith(("token:", "damp:"))):
            raise InputError(f"unknown --form {self.form!r}: use one of {', '.join(FORMS)}")
        if self.top < 1 or self.eval_facts < 1 or self.other_facts < 1:
            raise InputError("--top, --eval-facts and --other-facts must be >= 1")
        if not 0 < self.strength <= 1:
            raise InputError(f"--strength {self.strength}: give a share in (0, 1]")


def _factor(form: str) -> float | None:
    try:
        return float(form.split(":", 1)[1])
    except ValueError:
        return None


UPDATE_FORMS = ("ls", "paper")
TARGETS = ("swap", "new")


@dataclass(frozen=True)
class UpdateSpec:
    """How to rewrite a fact <h, r, t> -> <h, r, t'> through its own knowledge neurons."""

    form: str = opt(
        "ls",
        choices=UPDATE_FORMS,
        help="ls: the smallest change of the fact's slots that moves its "
        "output from t toward t' (ridge least squares, scaled until t' wins); paper: "
        "v <- v - l1 e_t + l2 e_t'.",
    )
    lam: float = opt(0.1, help="ls: ridge, relative to the squared norm of the slots' activations.")
    target: str = opt(
        "swap",
        choices=TARGETS,
        help="ls: move along d(t') - d(t) (swap) or d(t') alone (new); d = output embedding x final norm scale.",
    )
    max_scale: float = opt(64.0, help="ls: largest step tried, in units of the residual's norm at the answer.")
    preserve: str = opt(
        "auto",
        choices=PRESERVE,
        help="ls: covariance: the layers' least-squares change weighed against other facts' "
        "answer-position activations (MEMIT); nullspace: restrict each edited layer's change to the null "
        "space of other relations' activations; auto: covariance for ls, none for paper. Both change every "
        "slot of those layers.",
    )
    energy: float = opt(0.99, help="nullspace: share of the activations' energy kept out of the edit's way.")
    preserve_weight: float = preserve_weight_opt()
    preserve_facts: int = preserve_facts_opt()
    l1_scale: float = opt(1.0, flag="--l1", help="paper: scale of the e_t subtraction.")
    l2_scale: float = opt(8.0, flag="--l2", help="paper: scale of the e_t' addition.")
    max_share: float = opt(0.1, help="Leave neurons shared by more than this share of the relation's facts.")
    other_facts: int = opt(5, minimum=1, help="Facts of each relation measured for collateral damage.")
    seed: int = opt(0, help="Seed of the evaluation sample.")

    @property
    def preservation(self) -> str:
        """The preservation that applies: `auto` resolved (covariance for ls, none for the paper's rule)."""
        return resolved_preservation(self.preserve, self.form == "ls")

    def check(self) -> None:
        if self.form not in UPDATE_FORMS:
            raise InputError(f"unknown update form {self.form!r}: use {' or '.join(UPDATE_FORMS)}")
        if self.target not in TARGETS:
            raise InputError(f"unknown target {self.target!r}: use {' or '.join(TARGETS)}")
        how = self.preservation  # resolving `auto` refuses an unknown value
        if self.form == "paper" and (how != "none" or self.target != "swap"):
            raise InputError("--preserve and --target go with --form ls, not the paper's rule")
        if self.lam < 0 or self.max_scale <= 0:
            raise InputError("--lam must be >= 0 and --max-scale > 0")
        if how != "covariance" and self.preserve_weight != UpdateSpec.preserve_weight:
            raise InputError("--preserve-weight goes with --preserve covariance")


def _layers(value: str | None) -> tuple[int, ...] | None:
    """`--layers 24` or `--layers 23,24`: the layers that hold the slots (None: from the atlas)."""
    if value is None or isinstance(value, tuple):
        return value
    try:
        out = tuple(int(x) for x in str(value).split(",") if x.strip())
    except ValueError:
        raise InputError(f"bad --layers {value!r}: give layer numbers, e.g. 24 or 23,24") from None
    if not out:
        raise InputError("--layers names no layer")
    return out


@dataclass(frozen=True)
class InjectSpec:
    """How to inject facts as new FFN slot pairs (formulas: `atlas.model.inject`)."""

    layers: tuple[int, ...] | None = opt(
        None,
        metavar="L[,L...]",
        parse=_layers,
        help="Layers that hold each fact's slot pair [default: a third of the depth for keys read at "
        "the subject; for keys read at the answer, the weighted median layer of the relation's "
        "knowledge neurons in the run, of all its neurons when the relation has none, else 80% of the depth].",
    )
    heldout: int = opt(
        2, minimum=0, metavar="K", help="Prompts per fact held out of the slot for generalisation (>= 2 kept)."
    )
    key_position: str = opt(
        "subject",
        choices=("answer", "subject"),
        help="Where the key reads a prompt: its answer position, or the subject's last token (the slot "
        "then fires wherever the subject is read, and attention carries its value to the answer).",
    )
    ridge: float = opt(0.05, help="Key: ridge of the negatives' covariance, relative to its mean eigenvalue.")
    pos_scatter: float = opt(
        1.0,
        help="Key: weight of the training prompts' own scatter in the covariance (pooled within-class: "
        "directions in which a fact's paraphrases differ are discounted; 0: the negatives' only).",
    )
    hard_negatives: int = opt(
        0,
        minimum=0,
        help="Key: the negatives that score highest on the key, whose scatter is added to the "
        "covariance and the key solved again, --hard-rounds times (0: none; 200 generalises better "
        "but opens on unseen general text, BENCHMARKS.md).",
    )
    hard_rounds: int = opt(3, minimum=0, help="Key: rounds of hard-negative weighting.")
    gate_low: float = opt(0.25, help="Gate: the slot starts at this share of the gap from negatives' max score.")
    gate_high: float = opt(0.9, help="Gate: the slot saturates at this share of the gap.")
    gate_overlap: str = opt(
        "silent",
        choices=("silent", "open"),
        help="Gate, where some negatives score above a training prompt: stay shut on every negative "
        "and give up those prompts (silent), or open on every training prompt and those negatives.",
    )
    sharpness: float = opt(64.0, help="Gate: k in act(k t) / k ~ relu(t) (larger: closer to an exact clamp).")
    margin: float = opt(1.5, help="Value: scale x the smallest line-search scale that makes the new object win.")
    max_scale: float = opt(
        1.6,
        help="Value: its greatest length, in residual norms after the layer, for the line search and the "
        "Adam steps alike: a key that opens on text it was never shown (a namesake, a like word) adds "
        "at most this much (0: no limit; BENCHMARKS.md).",
    )
    value: str = opt(
        "gradient",
        choices=("gradient", "embedding"),
        help="Value direction: gradient of log P(new object) at the layer's FFN output, "
        "or the closed form final-norm scale x (E_new - E_old).",
    )
    value_steps: int = opt(
        100,
        minimum=0,
        help="Value: where no line-search scale makes the new object win on every training prompt its "
        "gates open for (and, with --value-goal or --keep-weight above 0, for every fact), at most this "
        "many Adam steps on the fact's values alone (0: none).",
    )
    value_goal: float = opt(
        0.99,
        help="Value: run the Adam steps for every fact, past the line search, until each prompt its gate "
        "opens for answers the new object with at least this probability (0: only where the line search "
        "leaves a prompt unanswered, stopping once it is answered; BENCHMARKS.md).",
    )
    value_prefixes: int = opt(
        4,
        minimum=0,
        help="Value: also fit it on each training prompt read after this many neutral opening sentences "
        "('I read this in a book. The capital of ...'; atlas.jobs.inject_prompts.PREFIXES), so that it "
        "works in contexts it was not built in (0: none; BENCHMARKS.md).",
    )
    keep_weight: float = opt(
        0.0,
        help="Value, for subject keys: weight of the mean KL divergence of prompts about the subject "
        "(generic ones, '[X] is', ..., and one template of each other relation of the atlas: their "
        "next-token distributions left alone) against the training prompts' mean answer hinge, in up to "
        "--value-steps steps, run for every fact until 10 steps bring no 1% lower loss (0: none; "
        "BENCHMARKS.md).",
    )
    keep_gold: float = opt(
        1.0,
        help="Value, for subject keys: weight of the mean squared change of log P(object) of the atlas's "
        "facts about the subject outside the run (the run is what the audit measures), each read on its "
        "relation's keep prompt; the Adam steps then run for every such fact as with --keep-weight "
        "(0: none; BENCHMARKS.md).",
    )
    negatives: int = opt(
        1000,
        minimum=1,
        help="Hard negatives, shared pool: prompts of other facts of the atlas (half of the injected "
        "relations, half of the others), every position.",
    )
    relation_negatives: int = opt(
        300,
        minimum=0,
        help="Hard negatives, per injected relation: prompts of its other facts (its templates, other "
        "subjects), every position.",
    )
    namesake_negatives: int = opt(
        0,
        minimum=0,
        help="Hard negatives, per injected subject: prompts of its namesakes, facts whose subject contains "
        "its last word in any case ('University of Chile' for 'Chile', 'Trollhunter' for 'patent troll'), every "
        "position (0: none; they keep those facts' answers but cost efficacy and held-out paraphrases: "
        "BENCHMARKS.md).",
    )
    namesake_guards: int = opt(
        100,
        minimum=0,
        help="Guard pairs, per injected subject: of this many prompts of its namesakes (as for "
        "--namesake-negatives), the positions its slot opens on key a second pair that writes minus the "
        "slot's value there (the share matching how far the slot is open) and stays shut on the fact's "
        "own prompts and the negatives (0: none; "
        "atlas.model.inject.guards, BENCHMARKS.md).",
    )
    audit_facts: int = opt(200, minimum=1, help="Other facts of the run measured for specificity (all when fewer).")
    audit_unseen: bool = opt(
        True,
        flag="--audit-unseen/--audit-seen",
        help="Leave the audited facts' prompts out of the negatives, so that specificity is measured on "
        "prompts the keys and gates never saw (--audit-seen: a small atlas keeps them as negatives).",
    )
    fill_negatives: bool = opt(
        True,
        flag="--fill-negatives/--no-fill-negatives",
        help="Where the atlas holds fewer prompts than a pool of negatives takes (an atlas of your own "
        "facts only), fill the pool from the bundled kn-paper facts (atlas.jobs.inject_pools).",
    )
    seed: int = opt(0, help="Seed of the negative and audit samples.")

    def check(self) -> None:
        if not 0.0 <= self.gate_low < self.gate_high <= 1.0:
            raise InputError("need 0 <= --gate-low < --gate-high <= 1")
        for flag, weight in (("--keep-weight", self.keep_weight), ("--keep-gold", self.keep_gold)):
            if weight < 0:
                raise InputError(f"{flag} must be >= 0, got {weight}")
        if not 0.0 <= self.value_goal < 1.0:
            raise InputError(f"--value-goal must be in [0, 1), got {self.value_goal}")
        if self.value_prefixes > N_PREFIXES:
            raise InputError(f"--value-prefixes must be <= {N_PREFIXES}, got {self.value_prefixes}")
        if self.ridge <= 0 or self.sharpness <= 0 or self.margin < 1.0 or self.pos_scatter < 0 or self.max_scale < 0:
            raise InputError(
                "--ridge and --sharpness must be > 0, --pos-scatter and --max-scale >= 0 and --margin >= 1"
            )
