"""GetFeaturesRequest validation (SPEC §5): every malformed field is an INVALID_REQUEST."""

from __future__ import annotations

from featureplane.pipelines.errors import RejectedEvent, TerminalError
from featureplane.pipelines.registry import GroupDef, Registry
from featureplane.pipelines.requests import CONTRACT_VERSION, FeatureRequest
from featureplane.pipelines.timefmt import TimestampError, parse_rfc3339
from featureplane.schemas.envelope import EVENT_ID, KEY_TYPES, is_entity_id, validate_pins

MAX_KEYS = 100
MAX_GROUPS = 20
REQUEST_FIELDS = {"kind", "contract_version", "context_pins", "as_of_time_utc", "feature_keys",
                  "feature_groups", "request_id"}


class InvalidRequest(TerminalError):
    def __init__(self, message: str) -> None:
        super().__init__("INVALID_REQUEST", message)


def parse_request(raw: object, registry: Registry) -> FeatureRequest:
    if not isinstance(raw, dict):
        raise InvalidRequest("request must be a JSON object")
    unknown = set(raw) - REQUEST_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown request fields {sorted(unknown)}")
    if raw.get("kind") != "get_features_request":
        raise InvalidRequest("kind must be 'get_features_request'")
    if raw.get("contract_version") != CONTRACT_VERSION:
        raise InvalidRequest(f"contract_version must be {CONTRACT_VERSION!r}")
    try:
        pins = validate_pins(raw.get("context_pins"))
    except RejectedEvent as exc:
        raise InvalidRequest(exc.message) from None
    if "as_of_time_utc" not in raw:
        raise InvalidRequest("as_of_time_utc is required (it is never defaulted to now)")
    try:
        as_of = parse_rfc3339(raw["as_of_time_utc"])
    except TimestampError as exc:
        raise InvalidRequest(f"as_of_time_utc: {exc}") from None
    request_id = raw.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not EVENT_ID.fullmatch(request_id)):
        raise InvalidRequest("request_id must be 1-128 chars of [A-Za-z0-9._:-]")

    keys_raw = raw.get("feature_keys")
    if not isinstance(keys_raw, list) or not 1 <= len(keys_raw) <= MAX_KEYS:
        raise InvalidRequest(f"feature_keys must be a list of 1-{MAX_KEYS} keys")
    keys: set[tuple[str, str]] = set()
    for item in keys_raw:
        if not isinstance(item, dict) or set(item) != {"key_type", "key_id"}:
            raise InvalidRequest("each feature key is exactly {key_type, key_id}")
        key_type, key_id = item["key_type"], item["key_id"]
        if key_type not in KEY_TYPES:
            raise InvalidRequest(f"key_type must be one of {list(KEY_TYPES)}")
        if not is_entity_id(key_type, key_id):
            raise InvalidRequest(f"key_id for {key_type} is not a canonical entity id (e_{key_type}_...)")
        if (key_type, key_id) in keys:
            raise InvalidRequest(f"feature key {key_type}/{key_id} is requested twice")
        keys.add((key_type, key_id))

    groups_raw = raw.get("feature_groups")
    if not isinstance(groups_raw, list) or not 1 <= len(groups_raw) <= MAX_GROUPS:
        raise InvalidRequest(f"feature_groups must be a list of 1-{MAX_GROUPS} group refs")
    groups: dict[tuple[str, str], GroupDef] = {}
    for item in groups_raw:
        if not isinstance(item, dict) or set(item) != {"group_name", "group_version"}:
            raise InvalidRequest("each feature group is exactly {group_name, group_version} (version required)")
        name, version = item["group_name"], item["group_version"]
        if not isinstance(name, str) or not isinstance(version, str):
            raise InvalidRequest("group_name and group_version are strings")
        group = registry.get(name, version)
        if group is None:
            raise InvalidRequest(f"unknown feature group {name[:64]}@{version[:16]}")
        if group.ref in groups:
            raise InvalidRequest(f"feature group {name}@{version} is requested twice")
        if not any(kt == group.key_type for kt, _ in keys):
            raise InvalidRequest(f"feature group {name}@{version} needs a {group.key_type} key; none requested")
        groups[group.ref] = group
    return FeatureRequest(
        context_pins=pins, as_of_us=as_of, keys=tuple(sorted(keys)),
        groups=tuple(groups[k] for k in sorted(groups)), request_id=request_id,
    )
