"""Parity: rebuild served snapshots from the archive at their recorded basis and compare hashes.

Snapshots that share a basis and pins share one replay: the archive's typed columns are scanned
once (polars, streaming: only the requested keys' events and the columns their groups read), each
group's contributions are derived once, and every (key, as_of) the snapshots asked for is
evaluated in one `point_features` call. Each snapshot is then assembled as the server assembles
it and its hash recomputed: once, when the rebuilt payload is the stored one exactly (the stored
body's hash is needed anyway, to tell an altered body from a wrong rebuild).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa

from featureplane.lake.delta import DeltaLake
from featureplane.lake.object_store import ObjectStore
from featureplane.offline.replay import transaction_scan, warm_archive
from featureplane.online.snapshot_store import load_snapshot, stored_refs
from featureplane.pipelines.canonical import same_document
from featureplane.pipelines.errors import FpError
from featureplane.pipelines.features import AS_OF, KEY, TS, contributions, point_features
from featureplane.pipelines.registry import GroupDef, Registry
from featureplane.pipelines.requests import CONTRACT_VERSION, FeatureRequest
from featureplane.pipelines.snapshot import assemble_unsealed, hashed_payload, seal, snapshot_hash
from featureplane.runtime.postgres import Database
from featureplane.schemas.frames import TRANSACTION_SCHEMA
from featureplane.schemas.records import POSITIONED_IDENTITY, first_positions
from featureplane.schemas.requests import parse_request

PARITY_TABLE = "audit/parity_results"


@dataclass(frozen=True)
class ParityOutcome:
    snapshot_hash: str
    recomputed_hash: str | None
    matched: bool
    first_difference: str | None
    reason_code: str | None


def first_difference(stored: Any, rebuilt: Any, path: str = "") -> str | None:
    """The path of the first field (in hashed-field order, then list order, then key order) that differs."""
    if isinstance(stored, dict) and isinstance(rebuilt, dict):
        keys = list(stored) if not path else sorted(set(stored) | set(rebuilt))
        keys += [k for k in rebuilt if k not in keys]
        for key in keys:
            where = f"{path}.{key}" if path else key
            if key not in stored or key not in rebuilt:
                return where
            found = first_difference(stored[key], rebuilt[key], where)
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(rebuilt, list):
        for index, (a, b) in enumerate(zip(stored, rebuilt, strict=False)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None if len(stored) == len(rebuilt) else f"{path}[{min(len(stored), len(rebuilt))}]"
    same = stored == rebuilt and type(stored) is type(rebuilt)
    return None if same else path


def _request_of(stored: dict[str, Any], registry: Registry) -> FeatureRequest:
    requested = stored["provenance"]["requested"]
    return parse_request({
        "kind": "get_features_request", "contract_version": CONTRACT_VERSION,
        "context_pins": stored["provenance"]["context_pins"], **requested,
        **({"request_id": stored["request_id"]} if "request_id" in stored else {}),
    }, registry)


def rebuild_batch(lake: DeltaLake, basis: dict[str, Any], pins: dict[str, str],
                  requests: list[FeatureRequest]) -> list[dict[str, Any]]:
    """Rebuild the responses for requests that share one basis and one set of pins, unsealed (no hash
    yet: `check_snapshots` hashes what it must). Only the archived events of the requested keys are
    kept, and only the columns their groups read (filtered as the archive is scanned, by polars'
    streaming engine): memory follows the requests, not the history."""
    queries: dict[tuple[str, str], set[tuple[str, int]]] = defaultdict(set)
    keys: dict[str, set[str]] = defaultdict(set)
    groups: dict[tuple[str, str], GroupDef] = {}
    for request in requests:
        for group in request.groups:
            groups[group.ref] = group
            for key_type, key_id in request.keys:
                if key_type == group.key_type:
                    queries[group.ref].add((key_id, request.as_of_us))
                    keys[group.key_field].add(key_id)
    read = {TS, *keys, *(f for ref in queries for f in groups[ref].fields)}  # and the position, always
    columns = [c for c in TRANSACTION_SCHEMA if c in read and c not in ("partition", "offset")]
    scan = transaction_scan(lake, basis, pins, columns,
                            {f: pl.Series(f, sorted(ids), pl.String()) for f, ids in keys.items()})
    if scan is None:
        frame = pl.DataFrame(schema={c: TRANSACTION_SCHEMA[c] for c in ("partition", "offset", *columns)})
    else:
        frame = without_later_copies(lake, basis, scan)
    # every (group, key, as-of) asked in the batch, evaluated in one vectorised pass per group
    found: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for ref, wanted in queries.items():
        group = groups[ref]
        query_frame = pl.DataFrame(sorted(wanted), schema={KEY: pl.String(), AS_OF: pl.Int64()}, orient="row")
        contribs = contributions(frame, group).filter(pl.col(KEY).is_in(query_frame[KEY].unique().implode()))
        for row in point_features(contribs, query_frame, group).iter_rows(named=True):
            found[(*ref, row[KEY], row[AS_OF])] = row
    return [
        assemble_unsealed(request, {(g.group_name, g.group_version, key_id): found[(*g.ref, key_id, request.as_of_us)]
                                    for g in request.groups for key_type, key_id in request.keys
                                    if key_type == g.key_type}, basis)
        for request in requests
    ]


def without_later_copies(lake: DeltaLake, basis: dict[str, Any], scan: pl.LazyFrame) -> pl.DataFrame:
    """`scan` collected, less every copy of an event (same run and event id) after its first position,
    decided across the whole basis, every run (a second scan, of the identities only, run alongside
    the first): a later copy is skipped online even when its keys or pins differ from the first
    copy's, so a filter by key alone could not decide it. The identities are compared by a 64-bit
    hash first, so only the few whose hash repeats (the bus carried an event twice, or a collision)
    are read whole and decided exactly."""
    identities = transaction_scan(lake, basis, {}, ["platform_run_id", "event_id"])
    assert identities is not None  # the basis is not empty: `scan` exists
    hashes = pl.col("_identity")  # sorted, a repeated hash is its neighbour's: twice as fast as is_duplicated here
    repeated_scan = identities.select(_identity_hash().sort()).filter(hashes == hashes.shift(1)).unique()
    frame, repeated = pl.collect_all([scan, repeated_scan], engine="streaming")
    if frame.is_empty() or repeated.is_empty():  # the common case: no event reached the bus twice
        return frame
    wanted = repeated.to_series().implode()
    copies = (identities.filter(_identity_hash().is_in(wanted)).select(POSITIONED_IDENTITY)
              .collect(engine="streaming"))
    later = copies.join(first_positions(copies), on=list(POSITIONED_IDENTITY), how="anti")
    return frame.join(later, on=["partition", "offset"], how="anti")  # a position is one record


def _identity_hash() -> pl.Expr:
    """A 64-bit hash of (platform_run_id, event_id), fixed within one process."""
    return pl.struct("platform_run_id", "event_id").hash(seed=0x70617269).alias("_identity")


def check_snapshots(lake: DeltaLake, registry: Registry, stored: list[dict[str, Any]],
                    checked: Callable[[int], None] = lambda _: None) -> list[ParityOutcome]:
    """Rebuild every stored response and compare; grouped by (basis, pins) to share replays."""
    outcomes: dict[str, ParityOutcome] = {}
    batches: dict[str, list[tuple[dict[str, Any], FeatureRequest]]] = defaultdict(list)
    for response in stored:
        digest = response["snapshot"]["feature_snapshot_hash"]
        digests = response["provenance"].get("definition_digests", {})
        changed = [ref for ref, d in sorted(digests.items())
                   if (g := registry.get(*ref.split("@", 1))) is None or g.digest != d]
        if changed:
            outcomes[digest] = ParityOutcome(digest, None, False, f"provenance.definition_digests.{changed[0]}",
                                             "DEFINITION_CHANGED")
            continue
        try:
            request = _request_of(response, registry)
        except FpError as exc:
            outcomes[digest] = ParityOutcome(digest, None, False, "provenance.requested", exc.reason_code)
            continue
        key = json.dumps([response["provenance"]["input_basis"], request.context_pins], sort_keys=True)
        batches[key].append((response, request))
    if batches:
        warm_archive(lake)  # each batch scans the keys of every archived transaction
    for key, items in batches.items():
        basis, pins = json.loads(key)
        try:
            rebuilt = rebuild_batch(lake, basis, pins, [r for _, r in items])
        except FpError as exc:
            for response, _ in items:
                digest = response["snapshot"]["feature_snapshot_hash"]
                outcomes[digest] = ParityOutcome(digest, None, False, "provenance.input_basis", exc.reason_code)
            continue
        for (response, _), fresh in zip(items, rebuilt, strict=True):
            digest = response["snapshot"]["feature_snapshot_hash"]
            stored_hash = snapshot_hash(response)
            # a rebuilt payload identical to the stored one (types included) has its hash: one hash, not two
            same = same_document(hashed_payload(response), hashed_payload(fresh))
            recomputed = seal(fresh, stored_hash if same else None)["snapshot"]["feature_snapshot_hash"]
            body_intact = stored_hash == digest
            if recomputed == digest and body_intact:
                outcomes[digest] = ParityOutcome(digest, recomputed, True, None, None)
                continue
            diff = first_difference(hashed_payload(response), hashed_payload(fresh)) or "feature_snapshot_hash"
            outcomes[digest] = ParityOutcome(digest, recomputed, False, diff,
                                             "HASH_MISMATCH" if body_intact else "STORED_SNAPSHOT_ALTERED")
        checked(len(items))
    return [outcomes[r["snapshot"]["feature_snapshot_hash"]] for r in stored]


def load_stored(db: Database, store: ObjectStore, *, run_id: str | None = None, sample: int | None = None,
                seed: int = 0) -> list[dict[str, Any]]:
    """Stored responses from the object store, listed by the Postgres index (all, or a seeded sample)."""
    refs = stored_refs(db, run_id)
    if sample is not None and sample < len(refs):
        refs = sorted(random.Random(seed).sample(refs, sample))
    return [load_snapshot(store, digest, pins) for digest, pins in refs]


def run_parity(db: Database, store: ObjectStore, lake: DeltaLake, registry: Registry, *,
               run_id: str | None = None, sample: int | None = None, seed: int = 0,
               on_loaded: Callable[[int], None] | None = None,
               checked: Callable[[int], None] = lambda _: None) -> dict[str, Any]:
    """Check stored snapshots, append the results to the audit lake, return the summary."""
    stored = load_stored(db, store, run_id=run_id, sample=sample, seed=seed)
    if on_loaded:
        on_loaded(len(stored))
    outcomes = check_snapshots(lake, registry, stored, checked)
    parity_run_id = f"parity_{uuid.uuid4().hex}"
    checked_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if outcomes:
        lake.append(PARITY_TABLE, pa.table({
            "parity_run_id": [parity_run_id] * len(outcomes),
            "checked_at_utc": [checked_at] * len(outcomes),
            "snapshot_hash": [o.snapshot_hash for o in outcomes],
            "recomputed_hash": [o.recomputed_hash for o in outcomes],
            "matched": [o.matched for o in outcomes],
            "reason_code": [o.reason_code for o in outcomes],
            "first_difference": [o.first_difference for o in outcomes],
            "run_id": [r["snapshot"]["context_pins"]["run_id"] for r in stored],
            "as_of_time_utc": [r["snapshot"]["as_of_time_utc"] for r in stored],
        }, schema=pa.schema([("parity_run_id", pa.string()), ("checked_at_utc", pa.string()),
                             ("snapshot_hash", pa.string()), ("recomputed_hash", pa.string()),
                             ("matched", pa.bool_()), ("reason_code", pa.string()),
                             ("first_difference", pa.string()), ("run_id", pa.string()),
                             ("as_of_time_utc", pa.string())])))
    mismatches = [o for o in outcomes if not o.matched]
    return {
        "parity_run_id": parity_run_id,
        "checked": len(outcomes),
        "matched": len(outcomes) - len(mismatches),
        "mismatched": len(mismatches),
        "mismatches": [{"snapshot_hash": o.snapshot_hash, "reason_code": o.reason_code,
                        "first_difference": o.first_difference, "recomputed_hash": o.recomputed_hash}
                       for o in mismatches[:20]],
    }
