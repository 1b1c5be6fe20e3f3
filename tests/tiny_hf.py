"""A tiny randomly initialised model saved as a Hugging Face directory, with a character-level
tokenizer, so `atlas index --model DIR` can run end to end in a test (subprocesses included).

The tokenizer knows ASCII letters, space and a little punctuation, but no digits or accents:
answers holding those cannot be tokenised and must come out as skipped prompts.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from atlas.model.loading import tiny_model

SPECIALS = ["[UNK]", "[MASK]", "[PAD]"]
CHARS = list(string.ascii_letters + " .,'-()")


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]", pad_token="[PAD]")


def save_tiny(path: Path, family: str = "llama", seed: int = 0) -> Path:
    """Write a tiny `family` model (3 layers x 48 neurons) and the char tokenizer to `path`."""
    model = tiny_model(family, seed=seed)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
