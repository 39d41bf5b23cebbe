"""The feature registry: versioned group definitions, validated and pinned to a digest of their logic.

A group version, once published, is immutable: its digest is recorded in the lock file and a
definition whose logic no longer matches fails to load. Descriptions are not part of the digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from featureplane.pipelines.canonical import sha256_ref
from featureplane.pipelines.errors import TerminalError

Agg = Literal["count", "sum", "max", "mean", "count_distinct"]
AGGS: tuple[str, ...] = ("count", "sum", "max", "mean", "count_distinct")
NUMERIC_FIELDS = ("amount_minor",)
# Payload fields a contribution can carry; the online state stores exactly these columns.
CONTRIBUTION_FIELDS = ("amount_minor", "merchant_id", "card_id", "account_id", "channel")
WINDOW = re.compile(r"^(\d+)([smhd])$", re.ASCII)
UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
VERSION = re.compile(r"^\d+\.\d+$", re.ASCII)


class RegistryError(TerminalError):
    """A group definition is malformed, or changed under a published version."""


def window_micros(text: str) -> int:
    match = WINDOW.fullmatch(text)
    if not match or int(match.group(1)) <= 0:
        raise RegistryError("REGISTRY_INVALID", f"window {text!r} must look like 5m, 1h, 24h or 7d")
    return int(match.group(1)) * UNIT_US[match.group(2)]


@dataclass(frozen=True)
class Where:
    field: str
    op: Literal["equal", "not_equal"]
    value: str


@dataclass(frozen=True)
class FeatureDef:
    name: str
    agg: Agg
    window: str
    window_us: int
    field: str | None = None
    where: Where | None = None


@dataclass(frozen=True)
class DerivedDef:
    name: str
    op: Literal["ratio"]
    numerator: str
    denominator: str


@dataclass(frozen=True)
class GroupDef:
    group_name: str
    group_version: str
    key_type: str
    key_field: str
    ttl_seconds: int
    source_event_type: str
    features: tuple[FeatureDef, ...]
    derived: tuple[DerivedDef, ...]
    digest: str
    description: str = ""

    @property
    def ref(self) -> tuple[str, str]:
        return (self.group_name, self.group_version)

    @property
    def lookback_us(self) -> int:
        """L: the longest window; freshness and serving look back this far."""
        return max(f.window_us for f in self.features)

    @property
    def fields(self) -> tuple[str, ...]:
        """Contribution fields this group's features read."""
        used = {f.field for f in self.features if f.field} | {f.where.field for f in self.features if f.where}
        return tuple(c for c in CONTRIBUTION_FIELDS if c in used)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(sorted([f.name for f in self.features] + [d.name for d in self.derived]))


def logic_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The part of a definition that determines values: everything but prose."""
    return {k: v for k, v in raw.items() if k != "description"}


def parse_group(raw: dict[str, Any]) -> GroupDef:
    def need(key: str) -> Any:
        if key not in raw:
            raise RegistryError("REGISTRY_INVALID", f"group definition is missing {key!r}")
        return raw[key]

    name, version = need("group_name"), str(need("group_version"))
    label = f"{name}@{version}"
    if not isinstance(name, str) or not NAME.fullmatch(name) or not VERSION.fullmatch(version):
        raise RegistryError("REGISTRY_INVALID", f"bad group name or version: {label}")
    key_type = need("key_type")
    if key_type not in ("account", "card", "customer", "merchant", "device"):
        raise RegistryError("REGISTRY_INVALID", f"{label}: unknown key_type {key_type!r}")
    if need("source_event_type") != "transaction_event":
        raise RegistryError("REGISTRY_INVALID", f"{label}: v0 groups read transaction_event only")
    if need("key_field") != f"{key_type}_id":  # the payload field, and the state column serving reads
        raise RegistryError("REGISTRY_INVALID", f"{label}: key_field must be {key_type}_id")
    ttl = need("ttl_seconds")
    if not isinstance(ttl, int) or ttl <= 0:
        raise RegistryError("REGISTRY_INVALID", f"{label}: ttl_seconds must be a positive integer")
    features: list[FeatureDef] = []
    for item in need("features"):
        fname, agg = item.get("name"), item.get("agg")
        if not isinstance(fname, str) or not NAME.fullmatch(fname) or agg not in AGGS:
            raise RegistryError("REGISTRY_INVALID", f"{label}: bad feature {item!r}")
        field = item.get("field")
        if agg in ("sum", "max", "mean") and field not in NUMERIC_FIELDS:
            raise RegistryError("REGISTRY_INVALID", f"{label}.{fname}: {agg} needs a numeric field")
        if agg == "count_distinct" and field not in CONTRIBUTION_FIELDS:
            raise RegistryError("REGISTRY_INVALID", f"{label}.{fname}: unknown field {field!r}")
        if agg == "count" and field is not None:
            raise RegistryError("REGISTRY_INVALID", f"{label}.{fname}: count takes no field")
        where = None
        if item.get("where"):
            w = item["where"]
            ops = [op for op in ("equal", "not_equal") if op in w]
            if w.get("field") not in CONTRIBUTION_FIELDS or len(ops) != 1:
                raise RegistryError("REGISTRY_INVALID", f"{label}.{fname}: bad where {w!r}")
            where = Where(w["field"], ops[0], str(w[ops[0]]))  # type: ignore[arg-type]
        features.append(FeatureDef(fname, agg, item["window"], window_micros(item["window"]), field, where))
    derived: list[DerivedDef] = []
    known = {f.name for f in features}
    for item in raw.get("derived") or []:
        if item.get("op") != "ratio" or item.get("numerator") not in known or item.get("denominator") not in known:
            raise RegistryError("REGISTRY_INVALID", f"{label}: bad derived feature {item!r}")
        derived.append(DerivedDef(item["name"], "ratio", item["numerator"], item["denominator"]))
    names = [f.name for f in features] + [d.name for d in derived]
    if len(set(names)) != len(names) or not features:
        raise RegistryError("REGISTRY_INVALID", f"{label}: feature names must be unique and non-empty")
    return GroupDef(
        group_name=name, group_version=version, key_type=key_type, key_field=need("key_field"),
        ttl_seconds=ttl, source_event_type="transaction_event", features=tuple(features),
        derived=tuple(derived), digest=sha256_ref(logic_of(raw)), description=raw.get("description", ""),
    )


@dataclass(frozen=True)
class Registry:
    groups: dict[tuple[str, str], GroupDef]

    def get(self, name: str, version: str) -> GroupDef | None:
        return self.groups.get((name, version))

    def all(self) -> list[GroupDef]:
        return [self.groups[k] for k in sorted(self.groups)]

    @property
    def digest(self) -> str:
        """One digest over every group's digest: the registry revision carried in provenance."""
        return sha256_ref({f"{n}@{v}": g.digest for (n, v), g in sorted(self.groups.items())})


def build_registry(raws: list[dict[str, Any]], lock: dict[str, str]) -> Registry:
    """Parse definitions and hold each published version to its locked digest."""
    groups: dict[tuple[str, str], GroupDef] = {}
    for raw in raws:
        group = parse_group(raw)
        label = f"{group.group_name}@{group.group_version}"
        if group.ref in groups:
            raise RegistryError("REGISTRY_INVALID", f"{label} is defined twice")
        locked = lock.get(label)
        if locked is None:
            raise RegistryError("REGISTRY_UNLOCKED", f"{label} is not in the registry lock; publish it first")
        if locked != group.digest:
            raise RegistryError(
                "REGISTRY_DIGEST_MISMATCH",
                f"{label} changed after publication (locked {locked}, now {group.digest}); "
                "publish the change under a new group_version",
            )
        groups[group.ref] = group
    return Registry(groups)
