"""duckdb over the lakes: archive, snapshots, audit, datasets, parity results.

Decision: Delta tables are opened with `deltalake` and registered in duckdb as Arrow datasets
(scanned lazily, with filter pushdown), rather than through duckdb's delta extension. It works
the same on a local directory and on s3:// (deltalake holds the storage options), needs no
extension download, and keeps credentials out of SQL text.

Views:
  archive_traffic, archive_arrival_events, archive_arrival_entities, archive_flow_anchor,
  archive_labels                 one row per archived record: partition, offset, value (blob),
                                 record (the JSON text; null when a record
                                 is not UTF-8 JSON), event_type, event_id, ts_utc
  snapshots                      one row per persisted snapshot (pins, as_of, basis, object ref, response)
  snapshot_features              one row per (snapshot, key, group, feature): value as JSON text and double
  parity_results, apply_failures, run_events, context_reconciliation    the audit lake
  datasets, dataset_manifests    every published dataset file (with its manifest_id) and manifest
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from featureplane.lake.delta import DeltaLake
from featureplane.lake.object_store import ObjectStore
from featureplane.schemas.streams import STREAMS

ARCHIVE_VIEWS = {
    "fp.bus.traffic.fraud.v1": "archive_traffic",
    "fp.bus.context.arrival_events.v1": "archive_arrival_events",
    "fp.bus.context.arrival_entities.v1": "archive_arrival_entities",
    "fp.bus.context.flow_anchor.fraud.v1": "archive_flow_anchor",
    "fp.bus.labels.v1": "archive_labels",
}
AUDIT_VIEWS = {"parity_results": "audit/parity_results", "apply_failures": "audit/apply_failures",
               "run_events": "audit/run_events", "context_reconciliation": "audit/context_reconciliation"}


def flatten_snapshots(responses: list[str]) -> pa.Table:
    """One row per (snapshot, key, group, feature) from stored response texts."""
    rows: list[tuple[Any, ...]] = []
    for text in responses:
        snapshot = json.loads(text)["snapshot"]
        for entry in snapshot["by_key"]:
            key = entry["feature_key"]
            for group in entry["by_group"]:
                ref = group["group"]
                for name, value in group["features"].items():
                    rows.append((snapshot["feature_snapshot_hash"], snapshot["as_of_time_utc"], key["key_type"],
                                 key["key_id"], ref["group_name"], ref["group_version"], name, json.dumps(value),
                                 None if value is None else float(value)))
    schema = {"snapshot_hash": pl.String(), "as_of_time_utc": pl.String(), "key_type": pl.String(),
              "key_id": pl.String(), "group_name": pl.String(), "group_version": pl.String(),
              "feature_name": pl.String(), "value_json": pl.String(), "value": pl.Float64()}
    return pl.DataFrame(rows, schema=schema, orient="row").to_arrow()


def connect(lake: DeltaLake, store: ObjectStore) -> duckdb.DuckDBPyConnection:
    """A duckdb connection with every lake view that exists (for `fp sql` and notebooks)."""
    con = duckdb.connect()
    for stream in STREAMS:
        table = lake.table(f"archive/{stream}")
        if table is None:
            continue
        raw = f"_raw_{ARCHIVE_VIEWS[stream]}"
        con.register(raw, table.to_pyarrow_dataset())
        con.execute(f"""CREATE VIEW {ARCHIVE_VIEWS[stream]} AS
            SELECT partition, "offset", value, TRY(decode(value)) AS record,
                   TRY(json_extract_string(decode(value), '$.event_type')) AS event_type,
                   TRY(json_extract_string(decode(value), '$.event_id')) AS event_id,
                   TRY(json_extract_string(decode(value), '$.ts_utc')) AS ts_utc
              FROM {raw}""")
    snapshots = lake.table("snapshots")
    if snapshots is not None:
        con.register("snapshots", snapshots.to_pyarrow_dataset())
        texts = snapshots.to_pyarrow_dataset().to_table(columns=["response"]).column("response").to_pylist()
        con.register("snapshot_features", flatten_snapshots(texts))
    for view, name in AUDIT_VIEWS.items():
        table = lake.table(name)
        if table is not None:
            con.register(view, table.to_pyarrow_dataset())
    manifests = [json.loads(store.get(key)) for key in store.list("datasets/") if key.endswith("/manifest.json")]
    if manifests:
        con.register("dataset_manifests", pl.DataFrame([
            {"manifest_id": m["manifest_id"], "dataset_fingerprint": m["dataset_fingerprint"],
             "row_count": m["row_count"], "request_id": m.get("produced_by", {}).get("request_id"),
             "manifest": json.dumps(m, sort_keys=True)} for m in manifests]).to_arrow())
        frames = []
        for manifest in manifests:
            for file in manifest["files"]:
                frame = pl.read_parquet(store.get(file["key"]))
                frames.append(frame.with_columns(pl.lit(manifest["manifest_id"]).alias("manifest_id")))
        con.register("datasets", pl.concat(frames, how="diagonal_relaxed").to_arrow())
    return con


LOCKDOWN = (
    "SET enable_external_access = false",  # no read_text('/etc/...'), COPY TO, ATTACH, httpfs
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET lock_configuration = true",  # the query cannot SET any of this back
)


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Confine a connection to the views already registered: no files outside the lakes, no
    extension installs, and no way for a query to change that."""
    for statement in LOCKDOWN:
        con.execute(statement)


def run_query(lake: DeltaLake, store: ObjectStore, query: str, *, allow_external: bool = False) -> dict[str, Any]:
    """Run one statement; returns {"columns": [...], "rows": [[...], ...]} (JSON-ready).

    Locked down by default (`lock_down`); `allow_external` lifts that for a local analyst."""
    con = connect(lake, store)
    try:
        if len(con.extract_statements(query)) != 1:
            raise duckdb.InvalidInputException("fp sql runs exactly one statement")
        if not allow_external:
            lock_down(con)
        try:
            result = con.execute(query)
        except duckdb.CatalogException as exc:
            views = sorted(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                                     "UNION SELECT table_name FROM duckdb_tables()").fetchall())
            raise duckdb.CatalogException(f"{str(exc).splitlines()[0]} (views here now: {views})") from None
        columns = [d[0] for d in result.description or []]
        rows = [[_jsonable(v) for v in row] for row in result.fetchall()]
    finally:
        con.close()
    return {"columns": columns, "rows": rows}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)
