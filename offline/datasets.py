"""Point-in-time training datasets from the archive, with a DatasetManifest.

A row is one transaction_event (deduplicated by position, same rule as online) inside the
observation scope and the replay basis. Its features are the registry's definitions evaluated
as of its own ts_utc over the archived events inside the replay basis (`rolling_features`,
the same compiled expressions the online path uses). Its label is the assertion for its flow
with the greatest (observed_time, position) among those observed at or before
`label_as_of_utc`, read from the labels archive at an explicit label basis.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from featureplane.lake.archive import archive_progress
from featureplane.lake.delta import DeltaLake
from featureplane.lake.object_store import ObjectStore
from featureplane.offline.intents import BuildIntent, dataset_fingerprint, dataset_identity, manifest_id
from featureplane.offline.replay import labels_at, transactions_at, with_pins
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.features import LAST_UPDATE, TS, contributions, in_range_expr, rolling_features
from featureplane.pipelines.positions import basis_json, order_keys
from featureplane.pipelines.registry import GroupDef
from featureplane.pipelines.timefmt import format_ts_expr
from featureplane.schemas.streams import LABELS

ROW_ID = "row_id"
BASE_COLUMNS = ("partition", "offset", "platform_run_id", "event_id", "flow_id", "ts_utc", "account_id", "card_id",
                "customer_id", "merchant_id", "device_id", "amount_minor", "channel")


def feature_column(group: GroupDef, feature: str) -> str:
    """Dataset column of one feature: `<group>__v<version with _>__<feature>`, unique across versions."""
    return f"{group.group_name}__v{group.group_version.replace('.', '_')}__{feature}"


def resolve_label_basis(lake: DeltaLake, intent: BuildIntent) -> dict[str, Any]:
    """The intent's label basis, or the labels archive's complete extent now (recorded in the manifest)."""
    if intent.label_basis is not None:
        return intent.label_basis
    progress = archive_progress(lake, LABELS)
    return basis_json(LABELS, progress, intent.offset_style)


def latest_labels(labels: pl.DataFrame, label_as_of_us: int) -> pl.DataFrame:
    """Per flow: the assertion with the greatest (observed_time, position) observed by the cut-off."""
    return (
        labels.filter(pl.col("observed_us") <= label_as_of_us)
        .sort("observed_us", "partition", *order_keys(frame=labels))
        .group_by("platform_run_id", "flow_id", maintain_order=True)
        .last()
        .select("platform_run_id", "flow_id", "label", pl.col("observed_us").alias("label_observed_us"))
    )


Step = Callable[[str], None]  # told each step's name as it finishes (a progress bar)


def build_steps(intent: BuildIntent) -> int:
    """How many steps `compute_dataset` reports: the read, one per group, the labels."""
    return len(intent.groups) + 2


def compute_dataset(lake: DeltaLake, intent: BuildIntent, label_basis: dict[str, Any],
                    step: Step = lambda _: None) -> pl.DataFrame:
    assert intent.scope_from_us is not None and intent.scope_to_us is not None
    assert intent.label_as_of_us is not None
    events = transactions_at(lake, intent.replay_basis)
    step(f"read {events.height} transactions")
    events = with_pins(events, intent.context_pins)
    events = events.sort(TS, "partition", *order_keys(frame=events)).with_row_index(ROW_ID)
    rows = events.filter((pl.col(TS) >= intent.scope_from_us) & (pl.col(TS) < intent.scope_to_us))
    for group in intent.groups:
        contribs = contributions(events, group, carry=(ROW_ID,))
        values = rolling_features(contribs, group, ROW_ID).drop(LAST_UPDATE)
        values = values.with_columns([in_range_expr(f, values.schema[f]) for f in group.feature_names])
        values = values.rename({f: feature_column(group, f) for f in group.feature_names})
        rows = rows.join(values, on=ROW_ID, how="left")
        step(f"{group.group_name}@{group.group_version}")
    labels = latest_labels(with_pins(labels_at(lake, label_basis), intent.context_pins), intent.label_as_of_us)
    rows = rows.join(labels, on=["platform_run_id", "flow_id"], how="left")
    step("labels")
    rows = rows.with_columns(format_ts_expr(pl.col(TS)).alias("ts_utc"),
                             format_ts_expr(pl.col("label_observed_us")).alias("label_observed_time_utc"))
    features = [feature_column(g, f) for g in intent.groups for f in g.feature_names]
    # ROW_ID numbers the events in (time, position) order
    return rows.sort(ROW_ID).select(*BASE_COLUMNS, *features, "label", "label_observed_time_utc")


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """Deterministic Parquet: fixed compression and statistics, one row group order."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", compression_level=3, statistics=True, row_group_size=250_000)
    return buffer.getvalue()


@dataclass(frozen=True)
class BuiltDataset:
    manifest: dict[str, Any]
    data: bytes


def build_dataset(lake: DeltaLake, intent: BuildIntent, step: Step = lambda _: None) -> BuiltDataset:
    """Compute the dataset and its manifest (not yet published)."""
    label_basis = resolve_label_basis(lake, intent)
    identity = dataset_identity(intent, label_basis)
    fingerprint = dataset_fingerprint(identity)
    mid = manifest_id(fingerprint)
    frame = compute_dataset(lake, intent, label_basis, step)
    data = parquet_bytes(frame)
    key = f"datasets/{mid}/part-00000.parquet"
    counts = dict(frame.group_by("label").len().iter_rows())
    manifest = {
        "kind": "dataset_manifest",
        "contract_version": "ofs_public_contracts_v0",
        "manifest_id": mid,
        "dataset_fingerprint": fingerprint,
        "identity": identity,
        "row_count": frame.height,
        "label_counts": {"fraud": counts.get("fraud", 0), "legit": counts.get("legit", 0),
                         "unlabeled": counts.get(None, 0)},
        "columns": [{"name": n, "type": str(t)} for n, t in frame.schema.items()],
        "files": [{"key": key, "sha256": "sha256:" + hashlib.sha256(data).hexdigest(), "bytes": len(data),
                   "rows": frame.height, "format": "parquet"}],
    }
    return BuiltDataset(manifest, data)


def manifest_key(mid: str) -> str:
    return f"datasets/{mid}/manifest.json"


def publish(store: ObjectStore, built: BuiltDataset, produced_by: dict[str, str]) -> dict[str, Any]:
    """Write the data file, then the manifest (the manifest last: its presence means complete).
    An existing manifest for the same id is kept if its files match (the same dataset again)."""
    manifest = built.manifest
    key = manifest_key(manifest["manifest_id"])
    if store.exists(key):
        existing = json.loads(store.get(key))
        if existing["files"] == manifest["files"]:
            return existing
        raise TerminalError("DATASET_NOT_REPRODUCIBLE",
                            f"{manifest['manifest_id']} exists with different file digests for the same fingerprint")
    store.put(manifest["files"][0]["key"], built.data)
    published = {**manifest, "produced_by": produced_by}
    store.put(key, json.dumps(published, sort_keys=True, indent=2).encode())
    return published
