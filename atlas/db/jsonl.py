"""Reading JSONL files line by line, refusing what a database would choke on, with ``FILE:LINE``.

Both backends must accept exactly the same facts, so what one of them would refuse halfway through
a load (PostgreSQL: a NUL character, a key longer than a b-tree index row; either: text that is not
Unicode) is refused here, before any transaction starts, the same way for both:

* bytes that are not UTF-8 (a byte-order mark at the start of the file is accepted and skipped);
* a NUL character or a lone surrogate (``"\\ud800"``) in any string;
* JSON nested deeper than `MAX_DEPTH` levels;
* text fields longer than their limit (`LIMITS`, in characters): 4 bytes per character at most
  keeps every indexed key, ``(fact_id, template)`` included, under PostgreSQL's 2,704-byte limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atlas.errors import InputError

MAX_DEPTH = 32
ID_MAX = 200  # fact ids, relation ids, dataset names
TEXT_MAX = 200  # subjects, objects, relation labels
TEMPLATE_MAX = 400  # templates and ready prompts
LIMITS = {"id": ID_MAX, "relation": ID_MAX, "template": TEMPLATE_MAX, "prompt": TEMPLATE_MAX}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, object) for every non-blank line; anything malformed is an `InputError`."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            line = _decode(raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw, where)
            if not line.strip():
                continue
            _check_depth(line, where)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise InputError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{where}: not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line "
            "(save the file as UTF-8)"
        ) from None


def _check_depth(line: str, where: str) -> None:
    """Nesting deeper than `MAX_DEPTH` is refused before the parser recurses into it."""
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", line)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            raise InputError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)")


def check_text(value: str, key: str, where: str, limit: int | None = None) -> str:
    """``value`` if a database can store and index it: Unicode without NUL, at most ``limit``
    characters (default: the field's limit in `LIMITS`, else `TEXT_MAX`)."""
    limit = limit or LIMITS.get(key, TEXT_MAX)
    shown = value[:40] + ("..." if len(value) > 40 else "")
    if "\x00" in value:
        raise InputError(f"{where}: field {key!r} contains a NUL character (\\u0000): {shown!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{where}: field {key!r} contains a lone surrogate (\\u{ord(value[exc.start]):04x}), not Unicode text"
        ) from None
    if len(value) > limit:
        raise InputError(f"{where}: field {key!r} is {len(value):,} characters long; the limit is {limit}: {shown!r}")
    return value


def text_field(obj: dict[str, Any], key: str, where: str) -> str:
    """A required non-empty string field, checked by `check_text`."""
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            f"{where}: missing field {key!r} (a non-empty string)"
            if value is None
            else f"{where}: field {key!r} must be a non-empty string, got {_short(value)}"
        )
    return check_text(value, key, where)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
