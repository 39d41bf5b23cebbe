"""Counters, lag and GREEN/AMBER/RED status per component, with thresholds from the profile."""

from __future__ import annotations

import time
from typing import Any

from online.checkpoints import watermarks
from pipelines.timefmt import US_PER_SECOND
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
    t = app.settings.health
    partitions = app.bus.partitions(stream)
    ends = app.bus.end_offsets(stream)
    with app.db.transaction() as conn:
        applied_basis = watermarks(conn, consumer, stream, partitions)
        counters = conn.execute(
            """SELECT coalesce(sum(applied), 0), coalesce(sum(duplicates), 0), coalesce(sum(failures), 0),
                      max(last_event_ts_us), max(extract(epoch FROM now() - c.updated_at))
                 FROM consumer_counters k
                 LEFT JOIN consumer_checkpoints c USING (consumer, stream, partition)
                WHERE k.consumer = %s AND k.stream = %s""",
            (consumer, stream),
        ).fetchone()
    applied, duplicates, failures, last_ts, checkpoint_age = counters
    lag = {str(p): (ends[p] - applied_basis[p]) if ends else None for p in partitions}
    total_lag = sum(v for v in lag.values() if v is not None) if ends else None
    seen = applied + duplicates + failures
    failure_rate = failures / seen if seen else 0.0
    watermark_age = None
    if last_ts is not None:
        watermark_age = max(0.0, time.time() - last_ts / US_PER_SECOND)
    status = worst(
        _grade(total_lag, t.lag_records_amber, t.lag_records_red),
        _grade(failure_rate, t.failure_rate_amber, t.failure_rate_red),
    )
    return {
        "status": status, "events_applied": int(applied), "duplicates": int(duplicates),
        "apply_failures": int(failures), "failure_rate": failure_rate, "lag_records": lag,
        "lag_records_total": total_lag, "watermark_basis": {str(p): v for p, v in applied_basis.items()},
        "event_time_watermark_age_seconds": watermark_age,
        "checkpoint_age_seconds": None if checkpoint_age is None else float(checkpoint_age),
    }


def serving_health(app: Any) -> dict[str, Any]:
    t = app.settings.health
    with app.db.transaction() as conn:
        counters = dict(conn.execute("SELECT name, value FROM serve_counters").fetchall())
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


def health_report(app: Any) -> dict[str, Any]:
    components: dict[str, Any] = {}
    try:
        components["ofp_worker"] = consumer_health(app, "ofp", TRAFFIC)
        components["serving"] = serving_health(app)
    except FpError as exc:
        return {"status": "RED", "components": {"postgres": {"status": "RED", "error": exc.reason_code}}}
    return {"status": worst(*(c["status"] for c in components.values())), "components": components}
