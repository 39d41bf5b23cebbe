"""Export of Postgres audit rows (apply failures, run ledger events) to the audit lake (Delta).

Rows are stamped with a batch number in Postgres, then the batch is appended to Delta with
the batch number in the commit metadata. Batches at or below the newest Delta marker are
exported; a stamped batch above it (a crash between the two steps) is appended again, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from featureplane.lake.delta import DeltaLake
from featureplane.runtime.postgres import Database

MARKER = "fp.audit_export_batch"
LOCK_CLASS = 7_303


@dataclass(frozen=True)
class AuditSource:
    table: str  # Postgres table (a constant of this module, never user input)
    lake_table: str
    columns: tuple[str, ...]
    order: str
    schema: pa.Schema


SOURCES = (
    AuditSource("apply_failures", "audit/apply_failures",
                ("consumer", "stream", "partition", '"offset"::text', "event_id", "reason_code", "detail",
                 "recorded_at::text AS recorded_at"), 'consumer, stream, partition, "offset"',
                pa.schema([("consumer", pa.string()), ("stream", pa.string()), ("partition", pa.int32()),
                           ("offset", pa.string()), ("event_id", pa.string()), ("reason_code", pa.string()),
                           ("detail", pa.string()), ("recorded_at", pa.string())])),
    AuditSource("ofs_run_events", "audit/run_events",
                ("event_seq", "run_key", "from_state", "to_state", "reason_code", "detail", "at::text AS at"),
                "event_seq",
                pa.schema([("event_seq", pa.int64()), ("run_key", pa.string()), ("from_state", pa.string()),
                           ("to_state", pa.string()), ("reason_code", pa.string()), ("detail", pa.string()),
                           ("at", pa.string())])),
)


def export_source(db: Database, lake: DeltaLake, source: AuditSource, batch: int = 20_000) -> int:
    exported = 0
    with db.try_advisory_lock(LOCK_CLASS, source.table) as held:
        while held:
            found = lake.marker(source.lake_table, MARKER)
            done = -1 if found is None else int(found[1])
            with db.transaction() as conn:
                row = conn.execute(f"SELECT min(export_batch) FROM {source.table} WHERE export_batch > %s",
                                   (done,)).fetchone()
                batch_id = row[0] if row else None
                if batch_id is None:
                    batch_id = conn.execute("SELECT nextval('audit_export_batch_seq')").fetchone()[0]  # type: ignore[index]
                    stamped = conn.execute(
                        f"""UPDATE {source.table} SET export_batch = %s WHERE ctid IN (
                                SELECT ctid FROM {source.table} WHERE export_batch IS NULL
                                 ORDER BY {source.order} LIMIT %s)""",
                        (batch_id, batch),
                    ).rowcount
                    if not stamped:
                        break
                cur = conn.execute(
                    f"SELECT {', '.join(source.columns)} FROM {source.table} WHERE export_batch = %s "
                    f"ORDER BY {source.order}", (batch_id,))
                rows = cur.fetchall()
            table = pa.table({f.name: [r[i] for r in rows] for i, f in enumerate(source.schema)},
                             schema=source.schema)
            existing = lake.table(source.lake_table)
            if existing is not None:  # a table from before decimal offsets keeps its column types
                table = _in_types_of(table, pa.schema(existing.schema().to_arrow()))
            lake.append(source.lake_table, table, marker=int(batch_id), marker_key=MARKER)
            exported += len(rows)
    return exported


def _in_types_of(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return pa.table({f.name: table.column(f.name).cast(schema.field(f.name).type) for f in table.schema})


def export_audit(db: Database, lake: DeltaLake) -> dict[str, int]:
    return {s.lake_table: export_source(db, lake, s) for s in SOURCES}
