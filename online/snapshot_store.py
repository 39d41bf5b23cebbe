"""Snapshot persistence: flush the outbox to the object store (content-addressed JSON) and index it.

The outbox row is written in the serving transaction; this flusher is idempotent (same hash,
same key, same bytes; the snapshot lake commit names its batch) so a crash mid-flush only
repeats work.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import psycopg
import pyarrow as pa

from featureplane.lake.delta import DeltaLake
from featureplane.lake.object_store import ObjectStore
from featureplane.online.prepared import PreparedStatements
from featureplane.pipelines.errors import TerminalError, TransientError
from featureplane.pipelines.timefmt import parse_rfc3339
from featureplane.runtime.postgres import Database

HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def object_key(pins: dict[str, str], digest: str) -> str:
    return f"snapshots/{pins['scenario_id']}/{pins['run_id']}/{digest.removeprefix('sha256:')}.json"


SNAPSHOT_LAKE = "snapshots"
BATCH_MARKER = "fp.snapshot_flush_batch"
FLUSH_LOCK = (7_302, "snapshot_outbox")


def _next_batch(conn: psycopg.Connection, size: int) -> int | None:
    """The oldest batch left unfinished by a crash, else a new batch of pending rows."""
    row = conn.execute(
        "SELECT min(flush_batch) FROM snapshot_outbox WHERE flushed_at IS NULL AND flush_batch IS NOT NULL"
    ).fetchone()
    if row and row[0] is not None:
        return int(row[0])
    batch_id = conn.execute("SELECT nextval('snapshot_flush_batch_seq')").fetchone()[0]  # type: ignore[index]
    updated = conn.execute(
        """UPDATE snapshot_outbox SET flush_batch = %s WHERE snapshot_hash IN (
               SELECT snapshot_hash FROM snapshot_outbox WHERE flushed_at IS NULL AND flush_batch IS NULL
                ORDER BY created_at, snapshot_hash LIMIT %s)""",
        (batch_id, size),
    )
    return int(batch_id) if updated.rowcount else None


def _lake_rows(rows: list[tuple[str, dict[str, Any], str, str]]) -> pa.Table:
    out: dict[str, list[Any]] = {c: [] for c in (
        "snapshot_hash", "scenario_id", "run_id", "manifest_fingerprint", "parameter_hash", "as_of_time_utc",
        "as_of_us", "input_basis", "definition_digests", "object_ref", "response")}
    for digest, response, text, ref in rows:
        pins = response["snapshot"]["context_pins"]
        prov = response["provenance"]
        out["snapshot_hash"].append(digest)
        for pin in ("scenario_id", "run_id", "manifest_fingerprint", "parameter_hash"):
            out[pin].append(pins[pin])
        out["as_of_time_utc"].append(response["snapshot"]["as_of_time_utc"])
        out["as_of_us"].append(parse_rfc3339(response["snapshot"]["as_of_time_utc"]))
        out["input_basis"].append(json.dumps(prov["input_basis"], sort_keys=True))
        out["definition_digests"].append(json.dumps(prov.get("definition_digests", {}), sort_keys=True))
        out["object_ref"].append(ref)
        out["response"].append(text)
    return pa.table(out)


def _count(conn: psycopg.Connection, name: str, value: int) -> None:
    conn.execute(
        """INSERT INTO serve_counters (name, value) VALUES (%s, %s)
           ON CONFLICT (name) DO UPDATE SET value = serve_counters.value + EXCLUDED.value""",
        (name, value),
    )


def flush_outbox(db: Database, store: ObjectStore, lake: DeltaLake, *, batch: int = 500) -> int:
    """Persist pending outbox rows: object store, snapshot lake, Postgres index; returns how many.

    One flusher at a time (advisory lock). Each batch is numbered in Postgres first; the Delta
    commit carries the batch number, so a batch redone after a crash is not appended twice.
    """
    flushed = 0
    with db.try_advisory_lock(*FLUSH_LOCK) as held:
        while held:
            with db.transaction() as conn:
                batch_id = _next_batch(conn, batch)
                if batch_id is None:
                    break
                pending = conn.execute(
                    "SELECT snapshot_hash, response FROM snapshot_outbox WHERE flush_batch = %s "
                    "AND flushed_at IS NULL ORDER BY snapshot_hash", (batch_id,),
                ).fetchall()
            rows = []
            try:
                for digest, text in pending:
                    response = json.loads(text)
                    ref = store.put(object_key(response["snapshot"]["context_pins"], digest), text.encode())
                    rows.append((digest, response, text, ref))
                marker = lake.marker(SNAPSHOT_LAKE, BATCH_MARKER)
                if rows and (marker is None or int(marker[1]) < batch_id):
                    lake.append(SNAPSHOT_LAKE, _lake_rows(rows), marker=batch_id, marker_key=BATCH_MARKER)
            except Exception as exc:  # the outbox keeps the batch; it is retried on the next flush
                with db.transaction() as conn:
                    _count(conn, "snapshot_failures", len(pending))
                raise TransientError("SNAPSHOT_FLUSH_FAILED",
                                     f"batch {batch_id} stays in the outbox ({type(exc).__name__})") from None
            with db.transaction() as conn:
                conn.cursor().executemany(
                    """INSERT INTO snapshot_index (snapshot_hash, scenario_id, run_id, manifest_fingerprint,
                           parameter_hash, as_of_us, input_basis, definition_digests, object_ref)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                    [(digest, *[response["snapshot"]["context_pins"][p] for p in
                                ("scenario_id", "run_id", "manifest_fingerprint", "parameter_hash")],
                      parse_rfc3339(response["snapshot"]["as_of_time_utc"]),
                      json.dumps(response["provenance"]["input_basis"], sort_keys=True),
                      json.dumps(response["provenance"].get("definition_digests", {}), sort_keys=True), ref)
                     for digest, response, _, ref in rows],
                )
                conn.execute("UPDATE snapshot_outbox SET flushed_at = now() WHERE flush_batch = %s",
                              (batch_id,))
                _count(conn, "snapshots_persisted", len(rows))
            flushed += len(rows)
    return flushed


# -- the port: what serving, health and parity may do with stored snapshots ----------------------
def stage(statements: PreparedStatements, response: dict[str, Any]) -> None:
    """Write a success response to the outbox with its counts, on the serving connection (autocommit):
    durable when this returns; persisted by `flush_outbox` later."""
    warnings = response["provenance"]["warnings"]
    statements.run(
        """INSERT INTO snapshot_outbox (snapshot_hash, response, groups_served, stale_groups, no_data_groups)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
        (response["snapshot"]["feature_snapshot_hash"], orjson.dumps(response, option=orjson.OPT_SORT_KEYS).decode(),
         len(response["provenance"]["freshness"]), sum(w["code"] == "STALE_GROUP" for w in warnings),
         sum(w["code"] == "NO_DATA" for w in warnings)))


def served_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Serving counters: snapshots built, groups served, stale and no-data groups, flush outcomes."""
    counters = {n: int(v) for n, v in conn.execute("SELECT name, value FROM serve_counters").fetchall()}
    built, groups, stale, no_data, pending = conn.execute(
        """SELECT count(*), COALESCE(sum(groups_served), 0), COALESCE(sum(stale_groups), 0),
                  COALESCE(sum(no_data_groups), 0), count(*) FILTER (WHERE flushed_at IS NULL)
             FROM snapshot_outbox""").fetchone()
    for name, value in (("snapshots_built", built), ("groups_served", groups), ("stale_groups", stale),
                        ("no_data_groups", no_data)):  # outbox counts plus any kept from before 0009
        counters[name] = counters.get(name, 0) + int(value)
    counters["outbox_pending"] = int(pending)
    return counters


def stored_refs(db: Database, run_id: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """(hash, pins needed to find it) of every persisted snapshot, optionally of one run, by hash."""
    with db.transaction() as conn:
        rows = conn.execute(
            """SELECT snapshot_hash, scenario_id, run_id FROM snapshot_index
                WHERE %(run)s::text IS NULL OR run_id = %(run)s ORDER BY snapshot_hash""", {"run": run_id},
        ).fetchall()
    return [(h, {"scenario_id": s, "run_id": r}) for h, s, r in rows]


def load_snapshot(store: ObjectStore, digest: str, pins: dict[str, str]) -> dict[str, Any]:
    return json.loads(store.get(object_key(pins, digest)))


def get_snapshot(db: Database, store: ObjectStore, digest: str) -> dict[str, Any]:
    """Fetch a persisted snapshot by hash (from the object store, or the outbox if not flushed yet)."""
    if not HASH.fullmatch(digest):
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
