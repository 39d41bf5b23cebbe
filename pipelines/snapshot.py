"""Assembling a get_features response from computed group frames, and its pinned hash.

Pure: given the request, the per-group feature frames and the input basis, the response is
fully determined. The online server and the offline parity rebuild both call `assemble`.
"""

from __future__ import annotations

from typing import Any

from featureplane.pipelines.algebra import out_of_range
from featureplane.pipelines.canonical import sha256_ref
from featureplane.pipelines.features import LAST_UPDATE
from featureplane.pipelines.requests import CONTRACT_VERSION, FeatureRequest
from featureplane.pipelines.timefmt import US_PER_SECOND, format_ts

HASHED_FIELDS = ("context_pins", "as_of_time_utc", "feature_keys", "feature_groups", "by_key", "freshness",
                 "graph_version", "input_basis", "warnings")


def hashed_payload(response: dict[str, Any]) -> dict[str, Any]:
    """The object P of SPEC §5 that the snapshot hash covers, taken from a response."""
    provenance, snapshot = response["provenance"], response["snapshot"]
    requested = provenance["requested"]
    return {
        "context_pins": provenance["context_pins"],
        "as_of_time_utc": requested["as_of_time_utc"],
        "feature_keys": requested["feature_keys"],
        "feature_groups": requested["feature_groups"],
        "by_key": snapshot["by_key"],
        "freshness": provenance["freshness"],
        "graph_version": provenance["graph_version"],
        "input_basis": provenance["input_basis"],
        "warnings": provenance["warnings"],
    }


def snapshot_hash(response: dict[str, Any]) -> str:
    """Recompute `feature_snapshot_hash` from a stored get_features_response (SPEC §5)."""
    return sha256_ref(hashed_payload(response))


GroupValues = dict[tuple[str, str, str], dict[str, Any]]  # (group, version, key_id) -> features + last_update_us


def assemble(
    request: FeatureRequest,
    rows: GroupValues,
    basis: dict[str, Any],
    extra_provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the success response from the finished values of every requested (group, key)."""
    return seal(assemble_unsealed(request, rows, basis, extra_provenance))


def assemble_unsealed(
    request: FeatureRequest,
    rows: GroupValues,
    basis: dict[str, Any],
    extra_provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`assemble` without the hash (`seal` adds it): for a caller that can tell it from another's."""
    as_of = request.as_of_us
    by_key: list[dict[str, Any]] = []
    freshness: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    for key_type, key_id in request.keys:
        by_group = []
        for group in request.groups:
            if group.key_type != key_type:
                continue
            row = rows[(group.group_name, group.group_version, key_id)]
            features = {name: row[name] for name in group.feature_names}
            if any(out_of_range(v) for v in features.values()):  # SPEC §4: null, with a warning
                features = {name: None if out_of_range(v) else v for name, v in features.items()}
                warnings.append({"code": "VALUE_OUT_OF_RANGE", "key_type": key_type, "key_id": key_id,
                                 "group_name": group.group_name, "group_version": group.group_version})
            by_group.append({
                "group": {"group_name": group.group_name, "group_version": group.group_version},
                "features": features,
            })
            last = row[LAST_UPDATE]
            if last is None:
                age, stale, code = None, True, "NO_DATA"
            else:
                delta = as_of - last
                age, stale = delta // US_PER_SECOND, delta > group.ttl_seconds * US_PER_SECOND
                code = "STALE_GROUP" if stale else None
            freshness.append({
                "key_type": key_type, "key_id": key_id, "group_name": group.group_name,
                "group_version": group.group_version, "ttl_seconds": group.ttl_seconds,
                "last_update_event_time": None if last is None else format_ts(last),
                "age_seconds": age, "stale": stale,
            })
            if code:
                warnings.append({"code": code, "key_type": key_type, "key_id": key_id,
                                 "group_name": group.group_name, "group_version": group.group_version})
        by_key.append({"feature_key": {"key_type": key_type, "key_id": key_id}, "by_group": by_group})
    warnings.sort(key=lambda w: (w["key_type"], w["key_id"], w["group_name"], w["group_version"], w["code"]))
    requested = request.requested()
    provenance: dict[str, Any] = {
        "kind": "feature_provenance",
        "contract_version": CONTRACT_VERSION,
        "context_pins": request.context_pins,
        "feature_snapshot_hash": "",
        "requested": requested,
        "group_versions_used": requested["feature_groups"],
        "freshness": freshness,
        "graph_version": None,
        "input_basis": basis,
        "warnings": warnings,
        "definition_digests": {f"{g.group_name}@{g.group_version}": g.digest for g in request.groups},
        **(extra_provenance or {}),
    }
    response: dict[str, Any] = {
        "kind": "get_features_response",
        "contract_version": CONTRACT_VERSION,
        "snapshot": {
            "kind": "feature_snapshot",
            "contract_version": CONTRACT_VERSION,
            "context_pins": request.context_pins,
            "as_of_time_utc": request.as_of_time_utc,
            "feature_snapshot_hash": "",
            "by_key": by_key,
        },
        "provenance": provenance,
    }
    if request.request_id is not None:
        response["request_id"] = request.request_id
    return response


def seal(response: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    """Write the snapshot hash into an unsealed response: `digest` when the caller already knows it
    (the hash of a payload proven identical), else computed here."""
    digest = snapshot_hash(response) if digest is None else digest
    response["snapshot"]["feature_snapshot_hash"] = digest
    response["provenance"]["feature_snapshot_hash"] = digest
    return response


def error_response(code: str, message: str, retryable: bool, pins: dict[str, str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "error_response", "contract_version": CONTRACT_VERSION,
                            "error_code": code, "message": message, "retryable": retryable}
    if pins is not None:
        body["context_pins"] = pins
    return body
