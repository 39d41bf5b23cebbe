"""BuildIntent: validation with stable reason codes, the normalized body, and dataset identity.

The normalized body (canonical timestamps, sorted groups and partitions) is what idempotency
compares: the same `request_id` with a different normalized body is `REQUEST_ID_CONFLICT`.
The dataset fingerprint hashes only the dataset's identity (pins, basis, group refs with their
definition digests, label as-of and label basis, scope), so two intents that ask for the same
data get the same fingerprint and the same manifest id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featureplane.pipelines.canonical import sha256_ref
from featureplane.pipelines.errors import RejectedEvent, TerminalError
from featureplane.pipelines.positions import OffsetStyle, offset_json, parse_offset
from featureplane.pipelines.registry import GroupDef, Registry
from featureplane.pipelines.timefmt import TimestampError, format_ts, parse_rfc3339
from featureplane.schemas.envelope import PIN, validate_pins
from featureplane.schemas.streams import LABELS, TRAFFIC

INTENT_KINDS = ("dataset_build", "parity_rebuild", "forensic_rebuild")
INTENT_FIELDS = {"request_id", "intent_kind", "context_pins", "replay_basis", "feature_groups", "label_as_of_utc",
                 "observation_scope", "label_basis", "kind", "contract_version"}
# v2: offsets are decimal strings (Kinesis sequence numbers exceed int64); v3: one file per time chunk
DATASET_FORMAT = "fp_dataset_v3"


class IntentRejected(TerminalError):
    """An inadmissible BuildIntent; `reason_code` is stable."""


@dataclass(frozen=True)
class BuildIntent:
    request_id: str
    intent_kind: str
    context_pins: dict[str, str]
    replay_basis: dict[str, Any]
    groups: tuple[GroupDef, ...]
    label_as_of_us: int | None
    scope_from_us: int | None
    scope_to_us: int | None
    label_basis: dict[str, Any] | None
    offset_style: OffsetStyle = OffsetStyle.INTEGER  # the bus's notation for offsets in a basis

    def body(self) -> dict[str, Any]:
        """The normalized intent (what idempotency compares and the ledger stores)."""
        body: dict[str, Any] = {
            "request_id": self.request_id, "intent_kind": self.intent_kind, "context_pins": self.context_pins,
            "replay_basis": self.replay_basis,
            "feature_groups": [{"group_name": g.group_name, "group_version": g.group_version} for g in self.groups],
        }
        if self.label_as_of_us is not None:
            body["label_as_of_utc"] = format_ts(self.label_as_of_us)
        if self.scope_from_us is not None and self.scope_to_us is not None:
            body["observation_scope"] = {"ts_from_utc": format_ts(self.scope_from_us),
                                         "ts_to_utc": format_ts(self.scope_to_us)}
        if self.label_basis is not None:
            body["label_basis"] = self.label_basis
        return body

    def body_digest(self) -> str:
        return sha256_ref(self.body())


def _basis(raw: object, what: str, stream: str, style: OffsetStyle) -> dict[str, Any]:
    """The basis in the bus's own notation (integers, or decimal strings for Kinesis), so the same
    basis written either way names the same run and fingerprint."""
    if not isinstance(raw, dict) or set(raw) != {"stream_name", "watermark_basis"}:
        raise IntentRejected("INVALID_BASIS", f"{what} is exactly {{stream_name, watermark_basis}}")
    if raw["stream_name"] != stream:
        raise IntentRejected("INVALID_BASIS", f"{what}.stream_name must be {stream}")
    marks = raw["watermark_basis"]
    if not isinstance(marks, dict) or not marks:
        raise IntentRejected("INVALID_BASIS", f"{what}.watermark_basis maps partitions to offsets")
    normalized: dict[int, int] = {}
    for partition, offset in marks.items():
        if not (isinstance(partition, str) and partition.isdigit() and len(partition) <= 4):
            raise IntentRejected("INVALID_BASIS", f"{what}: partition ids are decimal strings")
        try:
            normalized[int(partition)] = offset_json(parse_offset(offset), style)
        except ValueError:
            raise IntentRejected("INVALID_BASIS", f"{what}: offsets are integers >= 0, or their decimal strings "
                                                  "(Kinesis sequence numbers)") from None
    return {"stream_name": stream, "watermark_basis": {str(p): normalized[p] for p in sorted(normalized)}}


def _time(raw: object, what: str) -> int:
    try:
        return parse_rfc3339(raw)  # type: ignore[arg-type]
    except (TimestampError, TypeError):
        raise IntentRejected("INVALID_TIMESTAMP", f"{what} must be an RFC 3339 timestamp with offset") from None


def parse_intent(raw: object, registry: Registry, style: OffsetStyle = OffsetStyle.INTEGER) -> BuildIntent:
    if not isinstance(raw, dict):
        raise IntentRejected("INTENT_MALFORMED", "a BuildIntent is a JSON object")
    unknown = set(raw) - INTENT_FIELDS
    if unknown:
        raise IntentRejected("INTENT_MALFORMED", f"unknown intent fields {sorted(unknown)}")
    request_id = raw.get("request_id")
    if not isinstance(request_id, str) or not PIN.fullmatch(request_id) or request_id in (".", ".."):
        raise IntentRejected("INVALID_REQUEST_ID", "request_id is 1-128 chars of [A-Za-z0-9._-]")
    kind = raw.get("intent_kind")
    if kind not in INTENT_KINDS:
        raise IntentRejected("UNKNOWN_INTENT_KIND", f"intent_kind must be one of {list(INTENT_KINDS)}")
    try:
        pins = validate_pins(raw.get("context_pins"))
    except RejectedEvent as exc:
        raise IntentRejected("INVALID_PINS", exc.message) from None
    if "replay_basis" not in raw:
        raise IntentRejected("MISSING_REPLAY_BASIS", "replay_basis is required; nothing is ever 'latest'")
    basis = _basis(raw["replay_basis"], "replay_basis", TRAFFIC, style)
    groups_raw = raw.get("feature_groups")
    if not isinstance(groups_raw, list) or not 1 <= len(groups_raw) <= 20:
        raise IntentRejected("INVALID_GROUPS", "feature_groups is a list of 1-20 {group_name, group_version}")
    groups: dict[tuple[str, str], GroupDef] = {}
    for item in groups_raw:
        if not isinstance(item, dict) or set(item) != {"group_name", "group_version"}:
            raise IntentRejected("INVALID_GROUPS", "each feature group is exactly {group_name, group_version}")
        group = registry.get(str(item["group_name"]), str(item["group_version"]))
        if group is None:
            raise IntentRejected("UNKNOWN_GROUP", f"unknown feature group {str(item['group_name'])[:64]}@"
                                                  f"{str(item['group_version'])[:16]}")
        if group.ref in groups:
            raise IntentRejected("INVALID_GROUPS", f"feature group {group.group_name}@{group.group_version} twice")
        groups[group.ref] = group
    label_as_of = scope_from = scope_to = None
    label_basis = None
    if kind == "dataset_build":
        if "label_as_of_utc" not in raw:
            raise IntentRejected("MISSING_LABEL_AS_OF", "a dataset_build needs label_as_of_utc")
        label_as_of = _time(raw["label_as_of_utc"], "label_as_of_utc")
        scope = raw.get("observation_scope")
        if not isinstance(scope, dict) or set(scope) != {"ts_from_utc", "ts_to_utc"}:
            raise IntentRejected("INVALID_SCOPE", "observation_scope is exactly {ts_from_utc, ts_to_utc}")
        scope_from = _time(scope["ts_from_utc"], "observation_scope.ts_from_utc")
        scope_to = _time(scope["ts_to_utc"], "observation_scope.ts_to_utc")
        if scope_from >= scope_to:
            raise IntentRejected("INVALID_SCOPE", "observation_scope.ts_from_utc must be before ts_to_utc")
        if "label_basis" in raw:
            label_basis = _basis(raw["label_basis"], "label_basis", LABELS, style)
    return BuildIntent(request_id, kind, pins, basis, tuple(groups[k] for k in sorted(groups)), label_as_of,
                       scope_from, scope_to, label_basis, style)


def dataset_identity(intent: BuildIntent, label_basis: dict[str, Any]) -> dict[str, Any]:
    assert intent.label_as_of_us is not None and intent.scope_from_us is not None and intent.scope_to_us is not None
    return {
        "dataset_format": DATASET_FORMAT,
        "context_pins": intent.context_pins,
        "replay_basis": intent.replay_basis,
        "label_basis": label_basis,
        "feature_groups": [{"group_name": g.group_name, "group_version": g.group_version, "digest": g.digest}
                           for g in intent.groups],
        "label_as_of_utc": format_ts(intent.label_as_of_us),
        "observation_scope": {"ts_from_utc": format_ts(intent.scope_from_us),
                              "ts_to_utc": format_ts(intent.scope_to_us)},
    }


def dataset_fingerprint(identity: dict[str, Any]) -> str:
    return sha256_ref(identity)


def manifest_id(fingerprint: str) -> str:
    return "dsm_" + fingerprint.removeprefix("sha256:")[:32]
