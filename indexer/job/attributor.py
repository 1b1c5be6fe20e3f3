"""The model side of indexing: a work item's prompt rows in, its outputs and kept scores out.

No database here: the loop (`indexer.job.loop`) reads the rows and writes the `BatchResult`; this
module encodes the prompts, runs the attribution engine and keeps, per prompt, its outputs and
the few scores worth storing, selected on the model's device (`indexer.attribution.sparse`).

On a GPU, `--precision bf16` (or fp16) loads the weights in that dtype and keeps no fp32 master
(an 8B model: 16 GB instead of 32 + 16); P(gold) and every softmax sum stay fp32. Those weights
are the run's model (their hash differs from the fp32 load's), recorded as `weights` in the run's
parameters so that edits and probes load the same bytes. The pass size is measured on the loaded
model (`indexer.attribution.memory`) and halved whenever a pass runs out of memory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from atlas.db.datasets import causal_prefix
from atlas.db.models import ModelInfo
from atlas.db.results import BatchResult, PromptOutput
from atlas.db.workqueue import WorkItem
from atlas.errors import InputError, ModelError
from atlas.model.adapters import model_class_name
from atlas.model.encode import PromptItem, encode_causal, encode_masked
from atlas.model.loading import WEIGHT_DTYPES, LoadedModel, load_model
from indexer.attribution import memory, refine
from indexer.attribution.ig import Attributions, IGConfig, attribute_stacked, default_batch_size
from indexer.attribution.sketch import sketch
from indexer.attribution.sparse import sparse_rows
from indexer.attribution.tensors import device as model_device
from indexer.job.options import IndexOptions

# IGConfig.dtype of each precision: None (the model's own) for fp32, else the scaled pass's dtype
DTYPES = {name: (None if dtype == torch.float32 else dtype) for name, dtype in WEIGHT_DTYPES.items()}
CODE_VERSION = "ig-1"
# the prompt of the trial passes that measure a GPU pass (a PARAREL-like prompt, a little long)
TRIAL_PROMPT = ("In the last years of the old century, the capital of the country north of Spain was [Y] .", "Paris")
log = logging.getLogger("atlas.index")

Rows = list[tuple[int, str, str]]  # (prompt_id, text, object) of an item's prompts


def weights_name(opts: IndexOptions) -> str:
    """The dtype the model loads in: bf16/fp16 weights on a GPU run at that precision, else fp32 (a
    CPU keeps fp32 weights and runs the scaled pass on a low-precision copy)."""
    return opts.precision if opts.on_gpu() else "fp32"


def weights_dtype(opts: IndexOptions) -> torch.dtype:
    return WEIGHT_DTYPES[weights_name(opts)]


def load_for_index(spec: str, device: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The model `spec` on `device`, or a `ModelError` saying in one line why it cannot be loaded."""
    if spec.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise ModelError(f"cannot load model {spec!r}: no such directory")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the indexer draws its own bar; a second one garbles it
    try:
        return load_model(spec, device=device, dtype=dtype)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/... with long texts
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {spec!r}: {reason}") from exc


def check_layers(layers: tuple[int, int] | None, info: ModelInfo) -> None:
    """Refuse a `--layers` range the model does not have, before any run is opened."""
    if layers is not None and layers[1] >= info.n_layers:
        raise InputError(f"--layers {layers[0]}:{layers[1]}: model {info.name} has layers 0:{info.n_layers - 1}")


def model_info(lm: LoadedModel) -> ModelInfo:
    """What the models table records of a loaded model."""
    return ModelInfo(
        lm.name, lm.source, model_class_name(lm.model), lm.adapter.n_layers, lm.adapter.n_neurons, lm.sha256
    )


def ig_config(opts: IndexOptions) -> IGConfig:
    """The attribution settings of a run (on a GPU the pass size is then measured, unless given)."""
    batch = opts.batch_size or default_batch_size(opts.device)
    return IGConfig(steps=opts.steps, batch_size=batch, dtype=DTYPES[opts.precision], layers=opts.layers)


def result_params(opts: IndexOptions) -> dict[str, Any]:
    """Every parameter that changes a run's results (they enter its params_key)."""
    cfg = IGConfig(steps=opts.steps)
    return {
        "method": "ig",
        "steps": cfg.steps,
        "rule": cfg.rule,
        "answer": cfg.answer,
        "precision": opts.precision,
        "coarse_t": refine.COARSE_T,
        "score_ratio": refine.SPARSE_RATIO,
        "score_cap": opts.score_cap,
        "min_prompts": refine.MIN_PROMPTS,
        "p_start": refine.P_START,
        "p_step": refine.P_STEP,
        **({"layers": list(opts.layers)} if opts.layers else {}),  # absent by default: older runs keep their keys
        **({"weights": weights_name(opts)} if weights_name(opts) != "fp32" else {}),
        **({"sketch_rank": opts.sketch_rank} if opts.sketch_rank else {}),
    }


def _max_len(lm: LoadedModel) -> int | None:
    cfg = lm.model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


class Attributor:
    """Turns a work item's prompt rows into a `BatchResult`."""

    def __init__(self, lm: LoadedModel, opts: IndexOptions) -> None:
        self.lm = lm
        self.opts = opts
        self.cfg = ig_config(opts)
        self.causal = not lm.adapter.is_masked_lm
        self.max_len = _max_len(lm)
        if opts.batch_size is None and model_device(lm.model).type == "cuda":
            self.cfg = replace(self.cfg, batch_size=self.measured_pass())

    def measured_pass(self) -> int:
        """Prompts per pass that fit this GPU, from two trial passes on the loaded model."""
        trial = self.encode(*TRIAL_PROMPT)
        if isinstance(trial, str):  # a tokenizer that cannot read the trial: keep the default
            return self.cfg.batch_size
        try:
            return memory.measure(self.lm.model, self.lm.adapter, trial, self.cfg).prompts()
        except torch.OutOfMemoryError:  # not even the 4-prompt trial fits: start at one prompt a pass
            torch.cuda.empty_cache()
            return 1

    def encode(self, text: str, obj: str) -> PromptItem | str:
        tok = self.lm.tokenizer
        if self.causal:
            return encode_causal(tok, causal_prefix(text), obj, self.max_len)
        return encode_masked(tok, text, obj, self.max_len)

    def compute(self, item: WorkItem, rows: Rows) -> BatchResult:
        """Attribute the item's usable prompts; a prompt that cannot be encoded is recorded as skipped."""
        t0 = time.perf_counter()
        outputs: dict[int, PromptOutput] = {}
        todo: list[tuple[int, PromptItem]] = []
        for prompt_id, text, obj in rows:
            enc = self.encode(text, obj)
            if isinstance(enc, str):
                outputs[prompt_id] = PromptOutput(prompt_id, "skipped", enc)
            else:
                todo.append((prompt_id, enc))
        result = BatchResult(item=item, outputs=[])
        if todo:
            self._attribute(todo, outputs, result)
        result.outputs = [outputs[r[0]] for r in rows]
        result.model_s = time.perf_counter() - t0
        return result

    def _attribute(
        self, todo: list[tuple[int, PromptItem]], outputs: dict[int, PromptOutput], result: BatchResult
    ) -> None:
        """Reduced on the model's device: per prompt only its outputs and kept scores come back."""
        res = self._fitting([p for _, p in todo])
        finite = torch.isfinite(res.scores).flatten(1).all(1) & torch.isfinite(res.p_gold)
        pi, result.score_layer, result.score_neuron, result.score_value = sparse_rows(
            res.scores[finite], self.opts.score_cap
        )
        top = res.scores.flatten(1).amax(1).tolist()
        ok_ids: list[int] = []
        for (prompt_id, pitem), fin, p_gold, rank, mx in zip(
            todo, finite.tolist(), res.p_gold.tolist(), res.gold_rank.tolist(), top
        ):
            if fin:
                ok_ids.append(prompt_id)
                outputs[prompt_id] = PromptOutput(prompt_id, "ok", None, p_gold, int(rank), mx, len(pitem.answer_ids))
            else:
                outputs[prompt_id] = PromptOutput(
                    prompt_id, "skipped", "attribution is not finite (overflow)", n_answer_tokens=len(pitem.answer_ids)
                )
        result.score_prompt = np.array(ok_ids, np.int64)[pi]
        if self.opts.sketch_rank:
            ok = set(ok_ids)
            self._sketch([(i, p) for i, p in todo if i in ok], result)

    def _sketch(self, todo: list[tuple[int, PromptItem]], result: BatchResult) -> None:
        """The gradient sketches of the ok prompts (`indexer.attribution.sketch`), one pass at a time."""
        layers = list(self.cfg.layer_range(self.lm.adapter.n_layers))
        step = self.cfg.batch_size
        for start in range(0, len(todo), step):
            part = todo[start : start + step]
            sk = sketch(self.lm.model, self.lm.adapter, [p for _, p in part], layers, self.opts.sketch_rank)
            for (prompt_id, _), blobs in zip(part, sk.packed()):
                result.sketch_blob += blobs
                result.sketch_prompt += [prompt_id] * len(layers)
                result.sketch_layer += layers

    def _fitting(self, items: list[PromptItem]) -> Attributions:
        """`attribute_stacked`, halving the pass after an out-of-memory error until it fits (the
        scores do not depend on the pass size)."""
        while True:
            try:
                return attribute_stacked(self.lm.model, self.lm.adapter, items, self.cfg)
            except torch.OutOfMemoryError:
                if self.cfg.batch_size == 1:
                    raise ModelError(
                        f"model {self.lm.name}: one prompt per pass does not fit in the device's memory"
                    ) from None
            # outside the handler: its traceback holds the failed pass's tensors
            self.cfg = replace(self.cfg, batch_size=max(1, self.cfg.batch_size // 2))
            log.warning("out of memory: %d prompts per pass from now on", self.cfg.batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
