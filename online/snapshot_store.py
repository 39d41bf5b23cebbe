"""Snapshot persistence: flush the outbox to the object store (content-addressed JSON) and index it.

The outbox row is written in the serving transaction; this flusher is idempotent (same hash,
same key, same bytes) so a crash mid-flush only repeats work.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lake.object_store import ObjectStore
from pipelines.timefmt import parse_rfc3339
from runtime.errors import TerminalError
from runtime.postgres import Database

HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def object_key(pins: dict[str, str], digest: str) -> str:
    return f"snapshots/{pins['scenario_id']}/{pins['run_id']}/{digest.removeprefix('sha256:')}.json"


def flush_outbox(db: Database, store: ObjectStore, *, batch: int = 500) -> int:
    """Persist pending outbox rows; returns how many were flushed."""
    flushed = 0
    while True:
        with db.transaction() as conn:
            rows = conn.execute(
                """SELECT snapshot_hash, response FROM snapshot_outbox WHERE flushed_at IS NULL
                   ORDER BY created_at, snapshot_hash LIMIT %s FOR UPDATE SKIP LOCKED""",
                (batch,),
            ).fetchall()
            if not rows:
                return flushed
            index_rows = []
            for digest, text in rows:
                response = json.loads(text)
                pins = response["snapshot"]["context_pins"]
                key = object_key(pins, digest)
                ref = store.put(key, text.encode())
                prov = response["provenance"]
                index_rows.append((
                    digest, pins["scenario_id"], pins["run_id"], pins["manifest_fingerprint"],
                    pins["parameter_hash"], parse_rfc3339(response["snapshot"]["as_of_time_utc"]),
                    json.dumps(prov["input_basis"], sort_keys=True),
                    json.dumps(prov.get("definition_digests", {}), sort_keys=True), ref,
                ))
            conn.cursor().executemany(
                """INSERT INTO snapshot_index (snapshot_hash, scenario_id, run_id, manifest_fingerprint,
                       parameter_hash, as_of_us, input_basis, definition_digests, object_ref)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                index_rows,
            )
            conn.execute(
                "UPDATE snapshot_outbox SET flushed_at = now() WHERE snapshot_hash = ANY(%s)",
                ([r[0] for r in rows],),
            )
            conn.execute(
                """INSERT INTO serve_counters (name, value) VALUES ('snapshots_persisted', %s)
                   ON CONFLICT (name) DO UPDATE SET value = serve_counters.value + EXCLUDED.value""",
                (len(rows),),
            )
            flushed += len(rows)


def get_snapshot(db: Database, store: ObjectStore, digest: str) -> dict[str, Any]:
    """Fetch a persisted snapshot by hash (from the object store, or the outbox if not flushed yet)."""
    if not HASH.match(digest):
        raise TerminalError("INVALID_HASH", "a snapshot hash looks like sha256:<64 hex digits>")
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT scenario_id, run_id FROM snapshot_index WHERE snapshot_hash = %s", (digest,)
        ).fetchone()
        if row is None:
            pending = conn.execute(
                "SELECT response FROM snapshot_outbox WHERE snapshot_hash = %s", (digest,)
            ).fetchone()
            if pending is None:
                raise TerminalError("SNAPSHOT_NOT_FOUND", f"no snapshot {digest}")
            return json.loads(pending[0])
    key = object_key({"scenario_id": row[0], "run_id": row[1]}, digest)
    return json.loads(store.get(key))
