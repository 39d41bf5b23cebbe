"""Canonical JSON (RFC 8785, JCS) and the content hashes built on it."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical bytes: sorted keys, no whitespace, ECMAScript number form, UTF-8."""
    return rfc8785.dumps(value)


def sha256_ref(value: Any) -> str:
    """`sha256:<hex>` of the JCS bytes; the form every content hash in featureplane takes."""
    return "sha256:" + hashlib.sha256(jcs(value)).hexdigest()
