"""Counters, lag and GREEN/AMBER/RED status per component, with thresholds from the profile."""

from __future__ import annotations

import time
from typing import Any

from online.checkpoints import watermarks
from pipelines.timefmt import US_PER_SECOND, format_ts
from runtime.errors import FpError
from schemas.streams import TRAFFIC

ORDER = {"GREEN": 0, "AMBER": 1, "RED": 2}


def _grade(value: float | None, amber: float, red: float) -> str:
    if value is None:
        return "GREEN"
    return "RED" if value >= red else "AMBER" if value >= amber else "GREEN"


def worst(*statuses: str) -> str:
    return max(statuses, key=ORDER.__getitem__) if statuses else "GREEN"


def consumer_health(app: Any, consumer: str, stream: str) -> dict[str, Any]:
    """Counters, and lag plus event-time watermark age per partition, for one consumer of one stream."""
    t = app.settings.health
    partitions = app.bus.partitions(stream)
    ends = app.bus.end_offsets(stream)
    with app.db.transaction() as conn:
        applied_basis = watermarks(conn, consumer, stream, partitions)
        rows = conn.execute(
            """SELECT k.partition, k.applied, k.duplicates, k.failures, k.last_event_ts_us,
                      extract(epoch FROM now() - c.updated_at)::float8
                 FROM consumer_counters k
                 LEFT JOIN consumer_checkpoints c USING (consumer, stream, partition)
                WHERE k.consumer = %s AND k.stream = %s""",
            (consumer, stream),
        ).fetchall()
    by_partition = {int(r[0]): r[1:] for r in rows}
    now = time.time()
    detail: dict[str, Any] = {}
    applied = duplicates = failures = 0
    for p in partitions:
        a, d, f, last_ts, checkpoint_age = by_partition.get(p, (0, 0, 0, None, None))
        applied, duplicates, failures = applied + int(a), duplicates + int(d), failures + int(f)
        detail[str(p)] = {
            "watermark": applied_basis[p],
            "lag_records": (ends[p] - applied_basis[p]) if ends else None,
            "event_time_watermark": None if last_ts is None else format_ts(int(last_ts)),
            "watermark_age_seconds": None if last_ts is None else max(0.0, now - int(last_ts) / US_PER_SECOND),
            "checkpoint_age_seconds": checkpoint_age,
        }
    total_lag = sum(d["lag_records"] for d in detail.values()) if ends else None
    seen = applied + duplicates + failures
    failure_rate = failures / seen if seen else 0.0
    # a partition with records waiting whose checkpoint has not moved for a while is stalled
    stalled = max((d["checkpoint_age_seconds"] or 0.0 for d in detail.values() if d["lag_records"]), default=None)
    status = worst(
        _grade(total_lag, t.lag_records_amber, t.lag_records_red),
        _grade(failure_rate, t.failure_rate_amber, t.failure_rate_red),
        _grade(stalled, t.watermark_age_seconds_amber, t.watermark_age_seconds_red),
    )
    return {
        "status": status, "events_applied": applied, "duplicates": duplicates, "apply_failures": failures,
        "failure_rate": failure_rate, "lag_records_total": total_lag, "partitions": detail,
        "stalled_seconds": stalled,
        "note": "watermark age is wall clock minus event time (replayed history is old by design); status "
                "grades lag, failure rate and how long a partition with waiting records has not advanced",
    }


def archive_health(app: Any) -> dict[str, Any]:
    """How far the Delta archive is behind the bus, per stream."""
    from lake.archive import archive_progress
    from schemas.streams import STREAMS

    t = app.settings.health
    lag: dict[str, Any] = {}
    for stream in STREAMS:
        ends = app.bus.end_offsets(stream) or {}
        progress = archive_progress(app.lake, stream)
        lag[stream] = sum(max(0, end - progress.get(p, 0)) for p, end in ends.items())
    total = sum(lag.values())
    return {"status": _grade(total, t.lag_records_amber, t.lag_records_red), "lag_records": lag}


def serving_health(app: Any) -> dict[str, Any]:
    t = app.settings.health
    with app.db.transaction() as conn:
        counters = {n: int(v) for n, v in conn.execute("SELECT name, value FROM serve_counters").fetchall()}
        pending = conn.execute("SELECT count(*) FROM snapshot_outbox WHERE flushed_at IS NULL").fetchone()[0]
    built = counters.get("snapshots_built", 0)
    stale_rate = counters.get("stale_groups", 0) / counters["groups_served"] if counters.get("groups_served") else 0.0
    no_data_rate = counters.get("no_data_groups", 0) / counters["groups_served"] if counters.get("groups_served") \
        else 0.0
    failures = counters.get("snapshot_failures", 0)
    failure_rate = failures / (built + failures) if built + failures else 0.0
    status = worst(_grade(stale_rate, t.stale_rate_amber, t.stale_rate_red),
                   _grade(failure_rate, t.failure_rate_amber, t.failure_rate_red))
    return {"status": status, "snapshots_built": built, "snapshot_failures": failures,
            "snapshots_persisted": counters.get("snapshots_persisted", 0), "outbox_pending": pending,
            "stale_rate": stale_rate, "no_data_rate": no_data_rate}


def context_health(app: Any) -> dict[str, Any]:
    """The join plane: apply counters and lag per context stream, join hits/misses, conflicts."""
    from online.context_store import CONSUMER
    from schemas.streams import CONTEXT_STREAMS

    streams = {s: consumer_health(app, CONSUMER, s) for s in CONTEXT_STREAMS}
    with app.db.transaction() as conn:
        reads = {n: int(v) for n, v in conn.execute("SELECT name, value FROM context_read_counters").fetchall()}
        conflicts = dict(conn.execute("SELECT kind, count(*) FROM context_anomalies GROUP BY kind").fetchall())
    hits, misses = reads.get("join_hits", 0), reads.get("join_misses", 0)
    miss_rate = misses / (hits + misses) if hits + misses else 0.0
    t = app.settings.health
    status = worst(*(h["status"] for h in streams.values()),
                   _grade(miss_rate, t.join_miss_rate_amber, t.join_miss_rate_red),
                   "AMBER" if conflicts else "GREEN")
    return {
        "status": status, "join_hits": hits, "join_misses": misses, "join_miss_rate": miss_rate,
        "binding_conflicts": int(conflicts.get("BINDING_CONFLICT", 0)),
        "other_anomalies": {k: int(v) for k, v in conflicts.items() if k != "BINDING_CONFLICT"},
        "apply_failures": sum(h["apply_failures"] for h in streams.values()),
        "lag_records_total": sum(h["lag_records_total"] or 0 for h in streams.values()),
        "streams": streams,
    }


def health_report(app: Any) -> dict[str, Any]:
    components: dict[str, Any] = {}
    try:
        components["ofp_worker"] = consumer_health(app, "ofp", TRAFFIC)
        components["serving"] = serving_health(app)
        components["archive"] = archive_health(app)
        components["context"] = context_health(app)
    except FpError as exc:
        return {"status": "RED", "components": {"postgres": {"status": "RED", "error": exc.reason_code}}}
    return {"status": worst(*(c["status"] for c in components.values())), "components": components}
