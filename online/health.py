"""Counters, lag and GREEN/AMBER/RED status per component, with thresholds from the profile."""

from __future__ import annotations

import time
from typing import Any

from featureplane.online.checkpoints import watermarks
from featureplane.pipelines.errors import FpError
from featureplane.pipelines.positions import offset_json
from featureplane.pipelines.timefmt import US_PER_SECOND, format_ts
from featureplane.schemas.streams import TRAFFIC

ORDER = {"GREEN": 0, "AMBER": 1, "RED": 2}


def _grade(value: float | None, amber: float, red: float) -> str:
    if value is None:
        return "GREEN"
    return "RED" if value >= red else "AMBER" if value >= amber else "GREEN"


def worst(*statuses: str) -> str:
    return max(statuses, key=ORDER.__getitem__) if statuses else "GREEN"


FAILURE_WINDOW_SECONDS = 900  # a failure ledgered this recently means the ledger is growing
CRASH_LOOP_RED = 3  # errors in a row on one partition that make it RED


ADMITTED_AFTER_SQL = """SELECT count(*) FROM admissions WHERE stream = %s AND partition = %s AND "offset" >= %s"""


def backlog(app: Any, conn: Any, stream: str, positions: dict[int, int]) -> dict[int, tuple[int, int | None]]:
    """(records waiting, milliseconds behind the newest record) per partition after `positions`.

    Where the bus cannot count (Kinesis), the count comes from the admission ledger, which records
    the position of every record `fp publish` put on the bus; at least 1 while the bus says a
    record waits (one written by another producer)."""
    out: dict[int, tuple[int, int | None]] = {}
    for partition, position in sorted(positions.items()):
        found = app.bus.backlog(stream, partition, position)
        records = found.records
        if records is None:
            admitted = int(conn.execute(ADMITTED_AFTER_SQL, (stream, partition, position)).fetchone()[0])
            records = max(admitted, 1 if found.waiting else 0)
        out[partition] = (records, found.millis_behind)
    return out


def consumer_health(app: Any, consumer: str, stream: str) -> dict[str, Any]:
    """Counters, and lag plus event-time watermark age per partition, for one consumer of one stream.

    Never GREEN while a partition with waiting records is blocked by a corrupt record, keeps
    failing, sits under a lapsed lease, has never been consumed or has not moved for a while, or
    while the failure ledger grew in the last FAILURE_WINDOW_SECONDS.
    """
    t = app.settings.health
    partitions = app.bus.partitions(stream)
    with app.db.transaction() as conn:
        applied_basis = watermarks(conn, consumer, stream, partitions)
        waiting = backlog(app, conn, stream, applied_basis)
        counters = {int(r[0]): r[1:] for r in conn.execute(
            """SELECT partition, applied, duplicates, failures, last_event_ts_us FROM consumer_counters
                WHERE consumer = %s AND stream = %s""", (consumer, stream))}
        checkpoints = {int(r[0]): r[1:] for r in conn.execute(
            """SELECT partition, extract(epoch FROM now() - updated_at)::float8, owner,
                      lease_until IS NOT NULL AND lease_until < now()
                 FROM consumer_checkpoints WHERE consumer = %s AND stream = %s""", (consumer, stream))}
        blocks = {int(r[0]): r[1:] for r in conn.execute(
            """SELECT partition, "offset", byte_start, byte_end, reason_code FROM consumer_blocks
                WHERE consumer = %s AND stream = %s""", (consumer, stream))}
        errors = {int(r[0]): r[1:] for r in conn.execute(
            """SELECT partition, reason_code, in_a_row, extract(epoch FROM now() - last_at)::float8
                 FROM consumer_errors WHERE consumer = %s AND stream = %s""", (consumer, stream))}
        recent_failures = int(conn.execute(
            """SELECT count(*) FROM apply_failures WHERE consumer = %s AND stream = %s
                  AND recorded_at > now() - make_interval(secs => %s)""",
            (consumer, stream, FAILURE_WINDOW_SECONDS)).fetchone()[0])
    now = time.time()
    detail: dict[str, Any] = {}
    grades: list[str] = []
    applied = duplicates = failures = 0
    for p in partitions:
        a, d, f, last_ts = counters.get(p, (0, 0, 0, None))
        checkpoint_age, owner, lapsed = checkpoints.get(p, (None, None, False))
        applied, duplicates, failures = applied + int(a), duplicates + int(d), failures + int(f)
        lag, millis_behind = waiting[p]
        problems: list[str] = []
        if p in blocks:
            offset, start, end, code = blocks[p]
            problems.append(f"{code} at offset {offset}, bytes {start}-{end}: run `fp bus skip` after review")
            grades.append("RED")
        if p in errors:
            code, in_a_row, _ = errors[p]
            problems.append(f"{in_a_row} error(s) in a row, last {code}")
            grades.append("RED" if in_a_row >= CRASH_LOOP_RED else "AMBER")
        if lag:
            if checkpoint_age is None:
                problems.append("records waiting; no consumer has ever applied this partition")
                grades.append("AMBER")
            else:
                if owner is not None and lapsed:
                    problems.append(f"records waiting under a lapsed lease held by {owner}")
                    grades.append("AMBER")
                grades.append(_grade(checkpoint_age, t.watermark_age_seconds_amber, t.watermark_age_seconds_red))
        detail[str(p)] = {
            "watermark": offset_json(applied_basis[p], app.bus.offset_style),
            "lag_records": lag,
            "millis_behind_latest": millis_behind,
            "event_time_watermark": None if last_ts is None else format_ts(int(last_ts)),
            "watermark_age_seconds": None if last_ts is None else max(0.0, now - int(last_ts) / US_PER_SECOND),
            "checkpoint_age_seconds": checkpoint_age,
            "problems": problems,
        }
    total_lag = sum(d["lag_records"] for d in detail.values())
    seen = applied + duplicates + failures
    failure_rate = failures / seen if seen else 0.0
    # a partition with records waiting whose checkpoint has not moved for a while is stalled
    stalled = max((d["checkpoint_age_seconds"] or 0.0 for d in detail.values() if d["lag_records"]), default=None)
    status = worst(
        _grade(total_lag, t.lag_records_amber, t.lag_records_red),
        _grade(failure_rate, t.failure_rate_amber, t.failure_rate_red),
        "AMBER" if recent_failures else "GREEN",
        *grades,
    )
    return {
        "status": status, "events_applied": applied, "duplicates": duplicates, "apply_failures": failures,
        "apply_failures_recent": recent_failures, "failure_rate": failure_rate, "lag_records_total": total_lag,
        "partitions": detail, "stalled_seconds": stalled,
        "note": "watermark age is wall clock minus event time (replayed history is old by design); status "
                "grades lag, failures (rate, and any in the last 15 minutes), corrupt-record blocks, error "
                "streaks, lapsed leases and how long a partition with waiting records has not advanced",
    }


def archive_health(app: Any) -> dict[str, Any]:
    """How far the Delta archive is behind the bus, per stream; RED while a corrupt record blocks it."""
    from featureplane.lake.archive import CONSUMER, archive_progress
    from featureplane.schemas.streams import STREAMS

    t = app.settings.health
    lag: dict[str, Any] = {}
    with app.db.transaction() as conn:
        for stream in STREAMS:
            progress = archive_progress(app.lake, stream)
            waiting = backlog(app, conn, stream, {p: progress.get(p, 0) for p in app.bus.partitions(stream)})
            lag[stream] = sum(records for records, _ in waiting.values())
        blocks = [f"{s}/{p} offset {o}, bytes {a}-{b}" for s, p, o, a, b in conn.execute(
            """SELECT stream, partition, "offset", byte_start, byte_end FROM consumer_blocks
                WHERE consumer = %s ORDER BY 1, 2""", (CONSUMER,))]
    total = sum(lag.values())
    status = worst(_grade(total, t.lag_records_amber, t.lag_records_red), "RED" if blocks else "GREEN")
    return {"status": status, "lag_records": lag, "blocked": blocks}


def serving_health(app: Any) -> dict[str, Any]:
    t = app.settings.health
    from featureplane.online.snapshot_store import served_counts

    with app.db.transaction() as conn:
        counters = served_counts(conn)
    pending = counters["outbox_pending"]
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
    from featureplane.online.context_store import CONSUMER
    from featureplane.schemas.streams import CONTEXT_STREAMS

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
    """Every component graded on its own: one that cannot be read is RED with its reason code
    (UNAVAILABLE for an unreachable dependency), never a traceback."""
    checks = {"ofp_worker": lambda: consumer_health(app, "ofp", TRAFFIC), "serving": lambda: serving_health(app),
              "archive": lambda: archive_health(app), "context": lambda: context_health(app)}
    components: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            components[name] = check()
        except FpError as exc:
            components[name] = {"status": "RED", "error": exc.reason_code, "message": exc.message[:300]}
        except Exception as exc:  # an adapter's own error (storage, network): reported, never raised
            from featureplane.online.checkpoints import describe_error

            _, what = describe_error(exc)
            components[name] = {"status": "RED", "error": "UNAVAILABLE", "message": what}
        if components[name].get("error") == "UNAVAILABLE" and name == "ofp_worker":
            break  # Postgres is down: every other component would say the same
    return {"status": worst(*(c["status"] for c in components.values())), "components": components}
