"""Point-in-time training datasets from the archive, with a DatasetManifest.

A row is one transaction_event (deduplicated by position, same rule as online) inside the
observation scope and the replay basis. Its features are the registry's definitions evaluated
as of its own ts_utc over the archived events inside the replay basis (`key_rolling_features`, the
shared algebra), computed in key shards and assembled in time chunks (`offline/shards.py`), one
file per chunk. Its label is the assertion for its flow
with the greatest (observed_time, position) among those observed at or before
`label_as_of_utc`, read from the labels archive at an explicit label basis.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from featureplane.lake.archive import archive_progress
from featureplane.lake.delta import DeltaLake
from featureplane.lake.object_store import ObjectStore
from featureplane.offline.intents import BuildIntent, dataset_fingerprint, dataset_identity, manifest_id
from featureplane.offline.replay import pinned_labels, transaction_batches, warm_archive
from featureplane.offline.shards import (
    Layout,
    Router,
    assemble_chunk,
    chunk_bounds,
    feature_column,
    groups_by_key,
    label_index,
    later_copies,
    run_units,
    shard_count,
    shard_values,
    within,
)
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.features import TS
from featureplane.pipelines.positions import basis_json, order_keys
from featureplane.schemas.frames import TRANSACTION_SCHEMA
from featureplane.schemas.streams import LABELS

__all__ = ["BuiltDataset", "build_dataset", "feature_column", "manifest_key", "publish",
           "resolve_label_basis"]


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


Step = Callable[[str, int], None]  # (a finished step's name, the steps known so far): a progress bar


@dataclass(frozen=True)
class BuiltDataset:
    """A computed dataset: its manifest and the files on local disk (not yet published)."""

    manifest: dict[str, Any]
    paths: list[Path]
    workdir: Path

    def discard(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def build_dataset(lake: DeltaLake, intent: BuildIntent, step: Step = lambda _name, _total: None, *, jobs: int = 1,
                  workdir: Path | None = None) -> BuiltDataset:
    """Compute the dataset and its manifest in units of bounded size (`offline/shards.py`): route the
    archive's events to key shards and time chunks, evaluate every group per shard, assemble every
    chunk into one output file. `jobs` > 1 runs the units in a process pool."""
    assert intent.scope_from_us is not None and intent.scope_to_us is not None
    assert intent.label_as_of_us is not None
    label_basis = resolve_label_basis(lake, intent)
    identity = dataset_identity(intent, label_basis)
    fingerprint = dataset_fingerprint(identity)
    mid = manifest_id(fingerprint)
    warm_archive(lake)  # both passes below read most of the archive
    root = Path(tempfile.mkdtemp(prefix="fp-build-", dir=workdir))
    try:
        layout = Layout(root)
        scope = (intent.scope_from_us, intent.scope_to_us)
        pins = intent.context_pins
        total, inside = 0, []
        for batch in transaction_batches(lake, intent.replay_basis, pins, [TS]):
            total += batch.height
            inside.append(batch.filter(within(*scope)).get_column(TS))
        times = pl.concat(inside) if inside else pl.Series(TS, [], pl.Int64)
        bounds = chunk_bounds(times, *scope)
        del inside, times
        shards = shard_count(total)
        steps = 4 + shards * len({g.key_field for g in intent.groups}) + len(bounds) - 1
        step(f"planned: {total} events, {shards} key shards, {len(bounds) - 1} chunks", steps)
        router = Router(layout, intent.groups, shards, bounds)
        columns = [c for c in TRANSACTION_SCHEMA if c not in ("partition", "offset")]
        try:
            for batch in transaction_batches(lake, intent.replay_basis, {}, columns):  # every run: see route
                router.route(batch, pins)
        finally:
            router.close()
        step("routed", steps)
        labels = label_index(latest_labels(pinned_labels(lake, label_basis, pins), intent.label_as_of_us))
        step("labels", steps)
        skipped = pl.concat([later_copies(layout, shard) for shard in range(shards)])
        step(f"{skipped.height} later copies of events left out", steps)
        feature_units = [(layout, key, shard, groups, bounds, skipped)
                         for key, groups in groups_by_key(intent.groups).items() for shard in range(shards)]
        run_units(shard_values, feature_units, jobs, lambda: step("features of a key shard", steps))
        chunk_units = [(layout, c, list(intent.groups), labels, TRANSACTION_SCHEMA, skipped)
                       for c in range(len(bounds) - 1)]
        chunks = run_units(assemble_chunk, chunk_units, jobs, lambda: step("a chunk assembled", steps))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    paths = [layout.output(c) for c in range(len(chunks))]
    files = []
    for c, path in enumerate(paths):
        data = path.read_bytes()
        files.append({"key": f"datasets/{mid}/part-{c:05d}.parquet", "bytes": len(data), "rows": chunks[c]["rows"],
                      "sha256": "sha256:" + hashlib.sha256(data).hexdigest(), "format": "parquet"})
    manifest = {
        "kind": "dataset_manifest",
        "contract_version": "ofs_public_contracts_v0",
        "manifest_id": mid,
        "dataset_fingerprint": fingerprint,
        "identity": identity,
        "row_count": sum(c["rows"] for c in chunks),
        "label_counts": {name: sum(c[name] for c in chunks) for name in ("fraud", "legit", "unlabeled")},
        "columns": [{"name": n, "type": t} for n, t in chunks[0]["schema"].items()],
        "files": files,
    }
    return BuiltDataset(manifest, paths, root)


def manifest_key(mid: str) -> str:
    return f"datasets/{mid}/manifest.json"


def publish(store: ObjectStore, built: BuiltDataset, produced_by: dict[str, str]) -> dict[str, Any]:
    """Write the data files, then the manifest (the manifest last: its presence means complete).
    An existing manifest for the same id is kept if its files match (the same dataset again)."""
    manifest = built.manifest
    key = manifest_key(manifest["manifest_id"])
    if store.exists(key):
        existing = json.loads(store.get(key))
        if existing["files"] == manifest["files"]:
            return existing
        raise TerminalError("DATASET_NOT_REPRODUCIBLE",
                            f"{manifest['manifest_id']} exists with different file digests for the same fingerprint")
    for file, path in zip(manifest["files"], built.paths, strict=True):  # one file in memory at a time
        store.put(file["key"], path.read_bytes())
    published = {**manifest, "produced_by": produced_by}
    store.put(key, json.dumps(published, sort_keys=True, indent=2).encode())
    return published
