"""BERT / RoBERTa masked LMs: activations are the output of `intermediate` (after GELU), i.e. the
input of `output.dense` (Linear: value slot = column i). The IG engine re-runs these models whole
(no prefix trick: every position attends to the [MASK] position), so only sites are needed here.
"""

from __future__ import annotations

from atlas.model.adapters.base import Adapter


class BertAdapter(Adapter):
    family = "bert"
    is_masked_lm = True
    ffn_out_template = "bert.encoder.layer.{layer}.output.dense"
    ffn_in_template = "bert.encoder.layer.{layer}.intermediate"
    ffn_key_templates = ("bert.encoder.layer.{layer}.intermediate.dense",)


class RobertaAdapter(BertAdapter):
    family = "roberta"
    ffn_out_template = "roberta.encoder.layer.{layer}.output.dense"
    ffn_in_template = "roberta.encoder.layer.{layer}.intermediate"
    ffn_key_templates = ("roberta.encoder.layer.{layer}.intermediate.dense",)
