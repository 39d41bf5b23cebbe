"""Canonical JSON (RFC 8785, JCS) and the content hashes built on it."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import rfc8785

_NUMBER = re.compile(r'"\\u0000([^"\\]*)\\u0000"')  # a float's JCS text, smuggled through json.dumps
_ENCODE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def _mark_floats(value: Any) -> tuple[Any, bool]:
    """Floats -> NUL-delimited strings holding their RFC 8785 (ECMAScript) text; (value, any found)."""
    if isinstance(value, float):
        return "\x00" + rfc8785.dumps(value).decode() + "\x00", True
    if isinstance(value, dict):
        found = False
        out = {}
        for k, v in value.items():
            out[k], hit = _mark_floats(v)
            found = found or hit
        return out, found
    if isinstance(value, list | tuple):
        items = [_mark_floats(v) for v in value]
        return [v for v, _ in items], any(hit for _, hit in items)
    return value, False


def _fast_applies(value: Any) -> bool:
    """The fast path is exact for what snapshots hold: str keys that are ASCII (so code-point order is
    UTF-16 order), strings without NUL (validated at every boundary), ints within 2^53, floats."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) and k.isascii() for k in item):
                return False
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return False
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > 2**53 - 1:
                return False
        elif not isinstance(item, float):
            return False
    return True


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical bytes: sorted keys, no whitespace, ECMAScript number form, UTF-8.

    The common case runs on the C JSON encoder (same escapes and key order as RFC 8785 for ASCII
    keys; floats are formatted by `rfc8785` and spliced in); anything else, and every error, goes
    to `rfc8785` itself. A property test holds the two byte-identical."""
    if not _fast_applies(value):
        return rfc8785.dumps(value)
    marked, has_floats = _mark_floats(value)
    text = _ENCODE(marked)
    if has_floats:
        text = _NUMBER.sub(lambda m: m.group(1), text)
    return text.encode("utf-8")


def sha256_ref(value: Any) -> str:
    """`sha256:<hex>` of the JCS bytes; the form every content hash in featureplane takes."""
    return "sha256:" + hashlib.sha256(jcs(value)).hexdigest()
