"""Canonical JSON (RFC 8785, JCS) and the content hashes built on it."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
import rfc8785

_NUMBER = re.compile(r'"\\u0000([^"\\]*)\\u0000"')  # a float's JCS text, smuggled through the encoder

def _encode(value: Any) -> str:
    """Compact JSON with keys sorted, non-ASCII kept, control characters escaped as RFC 8785 does
    (orjson: the same escapes as the C encoder of `json`, about four times faster)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class _General(Exception):
    """The value holds something the fast path does not cover: `rfc8785` decides."""


def _float_text(value: float) -> str:
    """ECMAScript Number::toString of a float (RFC 8785 §3.2.2.3). Python's repr is the same shortest
    round-trip digits; integral values differ (no ".0"; exact below 2^53, where every integer is a
    float, while above it ECMAScript pads the shortest digits with zeros), and so do the exponent
    forms, which repr uses outside [1e-4, 1e16): those go to `rfc8785`, which also refuses NaN and
    infinities."""
    magnitude = abs(value)
    if magnitude < 2**53 and value.is_integer():
        return str(int(value))
    if 1e-4 <= magnitude < 1e16 and not value.is_integer():  # where repr writes no exponent either
        return repr(value)
    return rfc8785.dumps(value).decode()


def _marked(value: Any) -> Any:
    """One walk: floats -> NUL-delimited strings holding their JCS text, everything else checked to be
    what the fast path is exact for (ASCII str keys, so code-point order is UTF-16 order; strings and
    keys without NUL, which would look like a float's mark; ints within 2^53); otherwise `_General`."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise _General
        return value
    if kind is dict:
        for key in value:
            if type(key) is not str or not key.isascii() or "\x00" in key:
                raise _General
        return {k: _marked(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_marked(v) for v in value]
    if kind is int:
        if -(2**53 - 1) <= value <= 2**53 - 1:
            return value
        raise _General
    if kind is float:
        return "\x00" + _float_text(value) + "\x00"
    if value is None or kind is bool:
        return value
    raise _General


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical bytes: sorted keys, no whitespace, ECMAScript number form, UTF-8.

    The common case runs on orjson (same escapes and key order as RFC 8785 for ASCII keys; floats
    are formatted by `_float_text` and spliced in); anything else, and every error, goes
    to `rfc8785` itself. A property test holds the two byte-identical."""
    try:
        marked = _marked(value)
    except _General:
        return rfc8785.dumps(value)
    try:
        text = _encode(marked)
    except orjson.JSONEncodeError:  # e.g. an unpaired surrogate: the reference decides (and refuses)
        return rfc8785.dumps(value)
    if "\\u0000" in text:  # a float's mark (strings hold no NUL, so nothing else looks like one)
        text = _NUMBER.sub(lambda m: m.group(1), text)
    return text.encode("utf-8")


def same_document(a: Any, b: Any) -> bool:
    """True only when `a` and `b` are the same JSON document, types included (so their canonical bytes
    are equal); False when they differ or when that cannot be told cheaply. Four times cheaper than
    canonicalising either. Neither holds NaN or infinities (orjson writes them as null)."""
    try:
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return False


def sha256_ref(value: Any) -> str:
    """`sha256:<hex>` of the JCS bytes; the form every content hash in featureplane takes."""
    return "sha256:" + hashlib.sha256(jcs(value)).hexdigest()
