"""Knowledge injection: facts added to a model as new FFN key-value slots, with no training.

Kformer (Yao et al., arXiv 2201.05742) writes FFN(H) = W2 act(W1 H) + act(H phi_k^T) phi_v: extra
key rows of W1 and value columns of W2. Here the keys and values are computed, not learned, so a
fact <s, r, o'> becomes, in a chosen layer l, one pair of ordinary neurons whose output is

    clamp(a (w . x - b), 0, 1) * v        (x: the FFN input at layer l, post-norm)

* key w (`keys`): the Fisher discriminant direction (S- + lambda S+ + eps I)^-1 (mu+ - mu-),
  normalised, between the FFN inputs at the subject's last token of the fact's training prompts
  (by default; `--key-position answer`: at their answer position) (+, S+ their scatter: paraphrase
  directions are discounted) and hard negatives (-, S- and mu- their covariance and mean): every
  position of prompts of other facts of the same and other relations (a shared pool and one per
  injected relation), and general text. Read at the subject, a key recognises the subject however
  the question is worded (held-out paraphrases), and attention carries the value to the answer;
  read at the answer position, it must also recognise the wording, which a held-out template is not;
* gate b, a (`keys.gate`): silent up to b, set between the negatives' highest and the positives'
  lowest score w . x and never below the negatives' highest, saturated at b + 1/a;
* value v (`values`): u = the gradient of mean log P(o') - mean log P(o) at the answer position
  (o: the objects the atlas holds for the fact's subject and relation, which it replaces; none
  where the atlas has no such fact) with respect to the layer's FFN output where the key reads (the
  subject's last token, or the answer; or the closed form g * (E_o' - E_o), `--value embedding`),
  of length r * s with r the residual norm after
  layer l and s the smallest scale of a line search that makes o'
  the greedy answer on every training prompt the gate opens for, times 1.5 when that keeps them all,
  never above `--max-scale` S = 1.6; then (`--value-steps` N = 100) up to N Adam steps on v alone
  (never longer than S residual norms), minimising the mean hinge
  max(0, -log P(o' tokens) - log(1 / G)) on those prompts, until each is answered with
  probability G (`--value-goal` G = 0.99; with G = 0 only where no scale reaches every prompt,
  stopping once it does, and with G = 0.9 as the hinge's level). The prompts are the fact's
  training prompts and the same prompts read after `--value-prefixes` 4 neutral opening
  sentences ("I read this in a book. ..."; `atlas.jobs.inject_prompts.PREFIXES`), where a gate
  opens: fitted in several contexts and past the bare greedy win, the value carries to held-out
  wordings (BENCHMARKS.md: SmolLM2's held-out top-1 on PARAREL 79-87 % -> 90-95 %, on a
  user file 40 % -> 69 %); `--keep-weight` W (0 by default) adds,
  for subject keys, W x the mean KL divergence of the next-token distributions of prompts about the
  subject (generic ones, "[X] is", ..., and one template of every other relation of the atlas: the
  slot fires there too) from the model's without the fact, and runs the steps for every fact until
  `values.PATIENCE` steps bring no 1 % lower loss (`values.refine_values`, `values.Keep`);
  `--keep-gold` W_g (1 by default) adds W_g x the mean squared change of log P of the atlas's
  objects for the subject in other relations (facts outside the audited run) on those prompts
  (what a KL term misses: an object at P = 4e-7 that a value raises 1,000-fold), and runs the steps
  for every fact that has such objects;
* layer: a third of the depth for subject keys (`atlas.jobs.inject`);
* widening (`widen`): the clamp is the difference of two activations act(k t) - act(k (t - 1)),
  divided by k, in every supported family (LLaMA's gated MLP with mlp_bias=True, GPT-2, NeoX, BERT);
  every layer gets the same width, zero where it holds no pair, so the result is a standard
  Hugging Face model of a larger `intermediate_size`.
"""

from atlas.model.inject.widen import SlotPair, check_injectable, set_pair_value, widened, write_pair

__all__ = ["SlotPair", "check_injectable", "set_pair_value", "widened", "write_pair"]
