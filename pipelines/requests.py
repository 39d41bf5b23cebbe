"""The domain type of a validated get_features request (validation itself lives in schemas)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featureplane.pipelines.registry import GroupDef
from featureplane.pipelines.timefmt import format_ts

CONTRACT_VERSION = "ofp_public_contracts_v0"


@dataclass(frozen=True)
class FeatureRequest:
    context_pins: dict[str, str]
    as_of_us: int
    keys: tuple[tuple[str, str], ...]  # sorted (key_type, key_id)
    groups: tuple[GroupDef, ...]  # sorted by (group_name, group_version)
    request_id: str | None = None

    @property
    def as_of_time_utc(self) -> str:
        return format_ts(self.as_of_us)

    def requested(self) -> dict[str, Any]:
        return {
            "as_of_time_utc": self.as_of_time_utc,
            "feature_keys": [{"key_type": t, "key_id": i} for t, i in self.keys],
            "feature_groups": [{"group_name": g.group_name, "group_version": g.group_version} for g in self.groups],
        }
