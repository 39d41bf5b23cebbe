"""Validation and normalisation of one admitted event (SPEC §2-3), with stable reason codes.

The JSON Schemas in `contracts/` describe the same shapes for other programs; this module is the
fast path used at admission, and a test holds the two in agreement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from featureplane.pipelines.errors import RejectedEvent
from featureplane.pipelines.timefmt import (
    CANONICAL_COLUMN,
    CANONICAL_FORMAT,
    MAX_US,
    MIN_US,
    TimestampError,
    canonical,
    parse_rfc3339,
)

EVENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PIN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
KEY_TYPES = ("account", "card", "customer", "merchant", "device")
ENTITY_ID = {kt: re.compile(rf"^e_{kt}_[A-Za-z0-9]{{1,64}}$") for kt in KEY_TYPES}
PIN_FIELDS = ("scenario_id", "run_id", "manifest_fingerprint", "parameter_hash")
CHANNELS = ("card_present", "ecom", "mobile")
LABELS = ("fraud", "legit")
SCHEMA_VERSION = "v1"
MAX_SIGNED_64 = 2**63 - 1  # seed, arrival_seq: what a bigint column holds
MAX_EXACT_INT = 2**53 - 1  # amount_minor: what an IEEE double (and RFC 8785) carries exactly
FORBIDDEN_TEXT = re.compile(r"[\x00\ud800-\udfff]")  # NUL and unpaired surrogates: no store can hold them
# in JSON text, such characters can only come from these escapes (raw NUL is invalid JSON, and UTF-8
# cannot carry a surrogate): text without them parses to strings that need no scan
FORBIDDEN_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
ENVELOPE_FIELDS = (
    "event_id", "event_type", "schema_version", "ts_utc", "context_pins", "seed", "platform_run_id", "payload"
)

# payload field -> kind; kinds: flow (id charset), entity:<type>, entity?:<type> (nullable),
# seq (int >= 0), amount (int >= 0), currency, channel, label, time (RFC 3339)
PAYLOADS: dict[str, dict[str, str]] = {
    "transaction_event": {
        "flow_id": "flow", "merchant_id": "entity:merchant", "arrival_seq": "seq",
        "account_id": "entity:account", "card_id": "entity:card", "customer_id": "entity:customer",
        "device_id": "entity?:device", "amount_minor": "amount", "currency": "currency", "channel": "channel",
    },
    "arrival_event": {"merchant_id": "entity:merchant", "arrival_seq": "seq", "channel": "channel"},
    "arrival_entities": {
        "merchant_id": "entity:merchant", "arrival_seq": "seq", "account_id": "entity:account",
        "card_id": "entity:card", "customer_id": "entity:customer", "device_id": "entity?:device",
    },
    "flow_anchor": {"flow_id": "flow", "merchant_id": "entity:merchant", "arrival_seq": "seq"},
    "label_assertion": {
        "flow_id": "flow", "label": "label", "effective_time": "time", "observed_time": "time",
    },
}


def _reject(code: str, detail: str) -> RejectedEvent:
    return RejectedEvent(code, detail)


def is_pin(value: object) -> bool:
    return isinstance(value, str) and value not in (".", "..") and PIN.fullmatch(value) is not None


def is_entity_id(key_type: str, value: object) -> bool:
    pattern = ENTITY_ID.get(key_type)
    return pattern is not None and isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_count(value: object, limit: int = MAX_SIGNED_64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and count_in_range(value, limit)


def count_in_range(value: int, limit: int) -> bool:
    """The range rule of every integer field: 0..limit (seed, arrival_seq: 2^63-1; amount: 2^53-1)."""
    return 0 <= value <= limit


def kind_limit(kind: str) -> int:
    return MAX_EXACT_INT if kind == "amount" else MAX_SIGNED_64


def check_text(value: object) -> None:
    """Reject NUL and unpaired surrogates in any string (keys included) of a parsed JSON value."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if FORBIDDEN_TEXT.search(item):
                raise _reject("INVALID_CHARACTER", "strings may not hold NUL or unpaired surrogates")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def validate_pins(pins: object) -> dict[str, str]:
    if not isinstance(pins, dict):
        raise _reject("INVALID_PINS", "context_pins must be an object")
    for name in PIN_FIELDS:
        if name not in pins:
            raise _reject("INVALID_PINS", f"context_pins.{name} is missing")
        if not is_pin(pins[name]):
            raise _reject("INVALID_PINS", f"context_pins.{name} must be 1-128 chars of [A-Za-z0-9._-]")
    extra = set(pins) - set(PIN_FIELDS)
    if extra:
        raise _reject("INVALID_PINS", f"unknown context_pins fields {sorted(extra)}")
    return {name: pins[name] for name in PIN_FIELDS}


def _check_payload_field(event_type: str, name: str, kind: str, value: Any) -> Any:
    where = f"payload.{name}"
    if kind == "flow":
        if not isinstance(value, str) or not EVENT_ID.fullmatch(value):
            raise _reject("INVALID_PAYLOAD", f"{where} must be 1-128 chars of [A-Za-z0-9._:-]")
    elif kind.startswith("entity"):
        key_type = kind.split(":", 1)[1]
        if value is None and kind.startswith("entity?"):
            return None
        if not is_entity_id(key_type, value):
            raise _reject("NON_CANONICAL_ENTITY_ID", f"{where} must look like e_{key_type}_<1-64 alphanumerics>")
    elif kind == "seq":
        if not _is_count(value):
            raise _reject("INTEGER_OUT_OF_RANGE", f"{where} must be an integer in 0..2^63-1")
    elif kind == "amount":
        if not _is_count(value, MAX_EXACT_INT):
            raise _reject("AMOUNT_OUT_OF_RANGE", f"{where} must be an integer in 0..2^53-1")
    elif kind == "currency":
        if not isinstance(value, str) or not CURRENCY.fullmatch(value):
            raise _reject("INVALID_PAYLOAD", f"{where} must be 3 upper-case letters")
    elif kind == "channel":
        if value not in CHANNELS:
            raise _reject("INVALID_PAYLOAD", f"{where} must be one of {list(CHANNELS)}")
    elif kind == "label":
        if value not in LABELS:
            raise _reject("INVALID_PAYLOAD", f"{where} must be one of {list(LABELS)}")
    elif kind == "time":
        try:
            return canonical(value)
        except TimestampError as exc:
            raise _reject("INVALID_TIMESTAMP", f"{where}: {exc}") from None
    return value


@dataclass(frozen=True)
class VectorCheck:
    ok: pl.Expr  # the rule holds (never null)
    micros: pl.Expr  # for time kinds, the value in microseconds (null otherwise)


def vector_check(kind: str, column: str) -> VectorCheck:
    """The rule of one field kind over a column (the vectorised decoder), with the same patterns,
    sets and bounds as the per-record checks above. Kinds as in PAYLOADS, plus `pin`,
    `schema_version` and `time?` (a nullable time) for envelope fields. A check may be stricter than
    its per-record twin (the record then takes the per-record path), never looser."""
    col = pl.col(column)
    none = pl.lit(None, pl.Int64)
    if kind in ("time", "time?"):
        micros = col.str.strptime(pl.Datetime("us"), CANONICAL_FORMAT, strict=False).dt.epoch("us")
        # canonical text only: every digit there (no sign, no offset), no leap second (chrono would
        # read :60 as the next minute), a real date (else null), in the years 0001-9999
        ok = col.str.contains(CANONICAL_COLUMN) & micros.is_between(MIN_US, MAX_US)
        ok = ok.fill_null(False)
        return VectorCheck(col.is_null() | ok if kind == "time?" else ok, micros)
    if kind == "pin":
        ok = col.str.contains(PIN.pattern) & ~col.is_in([".", ".."])
    elif kind == "flow":
        ok = col.str.contains(EVENT_ID.pattern)
    elif kind == "schema_version":
        ok = col == SCHEMA_VERSION
    elif kind.startswith("entity"):
        matches = col.str.contains(ENTITY_ID[kind.split(":", 1)[1]].pattern)
        ok = col.is_null() | matches if kind.startswith("entity?") else matches
    elif kind == "currency":
        ok = col.str.contains(CURRENCY.pattern)
    elif kind == "channel":
        ok = col.is_in(list(CHANNELS))
    elif kind == "label":
        ok = col.is_in(list(LABELS))
    elif kind in ("seq", "amount"):
        ok = col.is_between(0, kind_limit(kind))
    else:
        raise ValueError(f"no vectorised rule for kind {kind!r}")
    return VectorCheck(ok.fill_null(False), none)


def may_hold_forbidden_text(json_text: str | bytes) -> bool:
    """False when JSON text cannot parse to a string holding NUL or a surrogate (see FORBIDDEN_ESCAPE)."""
    if isinstance(json_text, bytes):
        return b"\\u" in json_text and FORBIDDEN_ESCAPE.search(json_text.decode("utf-8", "replace")) is not None
    return "\\u" in json_text and FORBIDDEN_ESCAPE.search(json_text) is not None


def normalize_event(raw: object, *, text_checked: bool = False) -> dict[str, Any]:
    """Validate one envelope and return it normalised (canonical UTC timestamps).

    Raises `RejectedEvent` with a stable reason code. Unknown payload fields are kept.
    `text_checked`: the caller parsed it from JSON text that `may_hold_forbidden_text` cleared.
    """
    if not isinstance(raw, dict):
        raise _reject("NOT_AN_OBJECT", "an event must be a JSON object")
    if not text_checked:
        check_text(raw)
    for name in ENVELOPE_FIELDS:
        if name not in raw:
            raise _reject("MISSING_FIELD", f"{name} is missing")
    event_type = raw["event_type"]
    if not isinstance(event_type, str) or event_type not in PAYLOADS:
        raise _reject("UNKNOWN_EVENT_TYPE", f"event_type must be one of {sorted(PAYLOADS)}")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise _reject("UNKNOWN_SCHEMA_VERSION", f"schema_version must be {SCHEMA_VERSION!r}")
    if not isinstance(raw["event_id"], str) or not EVENT_ID.fullmatch(raw["event_id"]):
        raise _reject("INVALID_EVENT_ID", "event_id must be 1-128 chars of [A-Za-z0-9._:-]")
    if not is_pin(raw["platform_run_id"]):
        raise _reject("INVALID_PINS", "platform_run_id must be 1-128 chars of [A-Za-z0-9._-]")
    pins = validate_pins(raw["context_pins"])
    if not _is_count(raw["seed"]):
        raise _reject("INTEGER_OUT_OF_RANGE", "seed must be an integer in 0..2^63-1")
    try:
        ts_utc = canonical(raw["ts_utc"])
        emitted = canonical(raw["emitted_at_utc"]) if raw.get("emitted_at_utc") is not None else None
    except TimestampError as exc:
        raise _reject("INVALID_TIMESTAMP", str(exc)) from None
    payload = raw["payload"]
    if not isinstance(payload, dict):
        raise _reject("INVALID_PAYLOAD", "payload must be an object")
    normalized_payload = dict(payload)
    for name, kind in PAYLOADS[event_type].items():
        if name not in payload:
            raise _reject("MISSING_FIELD", f"payload.{name} is missing")
        normalized_payload[name] = _check_payload_field(event_type, name, kind, payload[name])
    if event_type == "label_assertion" and normalized_payload["observed_time"] != ts_utc:
        raise _reject("INVALID_PAYLOAD", "label_assertion ts_utc must equal payload.observed_time")
    extra = set(raw) - set(ENVELOPE_FIELDS) - {"emitted_at_utc"}
    if extra:
        raise _reject("INVALID_FIELD", f"unknown envelope fields {sorted(extra)}")
    event: dict[str, Any] = {
        "event_id": raw["event_id"],
        "event_type": event_type,
        "schema_version": SCHEMA_VERSION,
        "ts_utc": ts_utc,
        "context_pins": pins,
        "seed": raw["seed"],
        "platform_run_id": raw["platform_run_id"],
        "payload": normalized_payload,
    }
    if emitted is not None:
        event["emitted_at_utc"] = emitted
    return event


def ts_micros(event: dict[str, Any]) -> int:
    return parse_rfc3339(event["ts_utc"])
