"""`fp worker`: run every bus consumer (OFP, archive; context once it exists), until idle or forever."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from featureplane.lake.archive import ArchiveStats, ArchiveTap, ArchiveWriter, archive_progress
from featureplane.lake.audit import export_audit
from featureplane.online.checkpoints import TRANSIENT_ERRORS, beat, fair_share, leave, watermarks
from featureplane.online.context_store import CONSUMER as CONTEXT_CONSUMER
from featureplane.online.context_store import ContextStats, ContextWorker
from featureplane.online.health import backlog
from featureplane.online.ofp_state import CONSUMER as OFP_CONSUMER
from featureplane.online.ofp_state import enforce_retention
from featureplane.online.ofp_worker import OfpWorker, WorkerStats
from featureplane.online.snapshot_store import flush_outbox
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.positions import offset_json
from featureplane.schemas.streams import CONTEXT_STREAMS, STREAMS, TRAFFIC


class WorkerTimeout(TerminalError):
    """`--until-idle` could not bring every partition to its end within the timeout."""

    def __init__(self, behind: list[str], timeout: float) -> None:
        shown = "; ".join(behind[:20]) + (f"; and {len(behind) - 20} more" if len(behind) > 20 else "")
        super().__init__("WORKER_TIMEOUT", f"not idle after {timeout:g}s; behind: {shown}")
        self.behind = behind


def partitions_behind(app: Any) -> list[str]:
    """Every (consumer, stream, partition) not yet applied up to the end of the bus, with the reason
    it may be stuck (a lease held by another owner, a corrupt record)."""
    behind: list[str] = []
    with app.db.transaction() as conn:
        holders = {(c, s, int(p)): (o, live) for c, s, p, o, live in conn.execute(
            """SELECT consumer, stream, partition, owner, lease_until > now() FROM consumer_checkpoints
                WHERE owner IS NOT NULL""")}
        blocks = {(c, s, int(p)): d for c, s, p, d in conn.execute(
            "SELECT consumer, stream, partition, reason_code || ' ' || detail FROM consumer_blocks")}
        pairs = [(OFP_CONSUMER, TRAFFIC)] + [(CONTEXT_CONSUMER, s) for s in CONTEXT_STREAMS]
        for consumer, stream in pairs:
            applied = watermarks(conn, consumer, stream, app.bus.partitions(stream))
            for partition, (records, _) in backlog(app, conn, stream, applied).items():
                if records:
                    why = blocks.get((consumer, stream, partition))
                    holder = holders.get((consumer, stream, partition))
                    note = f" [blocked: {why}]" if why else f" [leased by {holder[0]}]" if holder and holder[1] else ""
                    behind.append(f"{consumer} {stream}/{partition} at {applied[partition]}, {records} record(s) "
                                  f"behind{note}")
        for stream in STREAMS:
            progress = archive_progress(app.lake, stream)
            positions = {p: progress.get(p, 0) for p in app.bus.partitions(stream)}
            for partition, (records, _) in backlog(app, conn, stream, positions).items():
                if records:
                    behind.append(f"archive {stream}/{partition} at {positions[partition]}, {records} record(s) "
                                  "behind")
    return behind


def run_workers(app: Any, *, until_idle: bool, poll_seconds: float = 1.0,
                timeout_seconds: float = 300.0) -> dict[str, Any]:
    """Run every consumer. With `until_idle`, return once every partition of every stream is applied
    up to its end (waiting out the lease of a dead owner, never skipping it), or raise
    `WorkerTimeout` naming what is behind."""
    ofp = OfpWorker(app.db, app.bus, app.registry, batch_size=app.settings.batch_size,
                    bucketed=app.settings.bucketed_groups)
    context = ContextWorker(app.db, app.bus, batch_size=app.settings.batch_size)
    archive = ArchiveWriter(app.db, app.bus, app.lake)
    live = Membership(app.db, ofp.owner)
    ofp.share = context.share = live.share
    stats = WorkerStats()
    _analyzed.update(applied=0, at=-ANALYZE_EVERY_SECONDS)  # this run's count starts at 0
    context_stats = ContextStats()
    archived = ArchiveStats()
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            try:
                live.refresh()
                if _one_pass(app, ofp, context, archive, live, stats, context_stats, archived, until_idle,
                             poll_seconds):
                    break
            except TRANSIENT_ERRORS:  # Postgres restarting, the network: the same pass is retried
                if until_idle and time.monotonic() > deadline:
                    raise
                time.sleep(min(poll_seconds, 0.5))
                continue
            if until_idle and time.monotonic() > deadline:
                raise WorkerTimeout(partitions_behind(app), timeout_seconds)
    finally:
        live.leave()
    exported = export_audit(app.db, app.lake)
    summary = asdict(stats)
    summary["per_partition"] = {str(k): offset_json(v, app.bus.offset_style)
                               for k, v in sorted(stats.per_partition.items())}
    return {"ofp": summary, "context": asdict(context_stats), "archive": asdict(archived),
            "audit_exported": exported}


class Membership:
    """This process among the live worker processes (heartbeats in Postgres): which partitions of
    each stream, and which streams' archives, it takes this pass (`fair_share`)."""

    def __init__(self, db: Any, owner: str) -> None:
        self.db = db
        self.owner = owner
        self.live: list[str] = [owner]

    def refresh(self) -> None:
        with self.db.transaction() as conn:
            self.live = beat(conn, self.owner)

    def share(self, items: list) -> list:
        return fair_share(items, self.live, self.owner)

    def leave(self) -> None:
        with contextlib.suppress(Exception), self.db.transaction() as conn:  # best effort: the beat ages out
            leave(conn, self.owner)


def _one_pass(app: Any, ofp: OfpWorker, context: ContextWorker, archive: ArchiveWriter, live: Membership,
              stats: WorkerStats, context_stats: ContextStats, archived: ArchiveStats, until_idle: bool,
              poll_seconds: float) -> bool:
    """Drain every consumer once; True when `until_idle` is satisfied (every partition at its end)."""
    before = (stats.batches, stats.failures, context_stats.batches, archived.commits)
    # the traffic this worker applies is archived from the records and frames OFP has read and
    # decoded (when this worker archives traffic and the archive is where OFP starts); the archive's
    # own pass below reads whatever the tap did not take. 1M events: a pass 29.9 -> 23.3 s
    tap = ArchiveTap.open(archive, TRAFFIC, archived) if TRAFFIC in live.share(list(STREAMS)) else None
    ofp.on_applied = None if tap is None else tap.offer
    try:
        ofp.run_until_idle(stats)
    finally:
        ofp.on_applied = None
        if tap is not None:
            tap.close()
    # the statistics refresh runs in Postgres while this process archives (on a thread that only waits
    # for it), and the pass ends when both have. `fp worker --until-idle` over 1M events: 32.9 and 33.8 s
    # before, 31.4 and 32.4 s after
    with ThreadPoolExecutor(max_workers=1) as background:
        refreshed = background.submit(refresh_statistics, app, stats)
        if app.settings.retention_us is not None:
            with app.db.transaction() as conn:
                enforce_retention(conn, app.settings.retention_us)
        context.run_until_idle(context_stats)
        with contextlib.suppress(*TRANSIENT_ERRORS):  # the archive resumes from its marker next pass
            archive.archive_all(live.share(list(STREAMS)), archived)
    refreshed.result()  # its errors are this pass's (a transient one is already swallowed there)
    flushed = 0
    with contextlib.suppress(*TRANSIENT_ERRORS):  # an object-store outage: the outbox keeps the snapshots
        flushed = flush_outbox(app.db, app.store, app.lake)
    idle = (stats.batches, stats.failures, context_stats.batches, archived.commits) == before
    if context_stats.batches != before[2]:
        write_reconciliations(app)
    if until_idle:
        if idle:
            if not partitions_behind(app):
                return True
            time.sleep(min(poll_seconds, 0.5))
    elif idle and not flushed:
        time.sleep(poll_seconds)
    return False


# what serving's plans read: the state it filters on (not an event's amount, channel or position,
# whose statistics took 0.6 of 2.0 s at 1M events) and the tables it joins; the other tables are left
# to autovacuum. A sample of 9k rows a partition (target 30, not 100) is plenty to tell a key's
# index from another's; autovacuum refines it as the partition changes. 1M events: 2.7 -> 0.6 s, and
# the pass ends when it does
SERVED_STATISTICS = (
    "ofp_events (scope_id, account_id, card_id, customer_id, merchant_id, device_id, ts_us)",
    "ofp_buckets", "ofp_fine_buckets", "ofp_distinct_buckets", "ofp_links", "join_frames", "flow_bindings",
    "context_anomalies")
ANALYZE_AFTER_ROWS = 20_000
ANALYZE_EVERY_SECONDS = 60.0
_analyzed = {"applied": 0, "at": -ANALYZE_EVERY_SECONDS}


def refresh_statistics(app: Any, stats: WorkerStats) -> None:
    """Keep the planner's statistics of the state tables current after the worker has applied many rows.

    Serving plans its statement once per connection (generic plans); on a freshly filled partition
    without statistics, Postgres picks a skip scan of another key's index over the time range
    (measured 5.4 ms instead of 0.7 ms per request). Autovacuum catches up within a minute or so;
    the worker, which knows it has just applied many rows, does it at once, at most once a minute."""
    now = time.monotonic()
    if stats.applied - _analyzed["applied"] < ANALYZE_AFTER_ROWS or now - _analyzed["at"] < ANALYZE_EVERY_SECONDS:
        return
    with contextlib.suppress(*TRANSIENT_ERRORS), app.db.connect(autocommit=True) as conn:
        conn.execute("SET default_statistics_target = 30")
        conn.execute(f"ANALYZE {', '.join(SERVED_STATISTICS)}")
    _analyzed.update(applied=stats.applied, at=now)


def write_reconciliations(app: Any) -> list[dict[str, Any]]:
    """One reconciliation artifact per platform run in the join plane: a JSON object in the store
    (named by its state digest) and a row in the audit lake."""
    import json

    import pyarrow as pa

    from featureplane.online.context_store import reconciliation

    with app.db.transaction() as conn:
        runs = [r[0] for r in conn.execute(
            "SELECT platform_run_id FROM join_frames UNION SELECT platform_run_id FROM flow_bindings ORDER BY 1")]
    artifacts = [reconciliation(app.db, app.bus, run) for run in runs]
    for artifact in artifacts:
        digest = artifact["state_digest"].removeprefix("sha256:")
        key = f"audit/context/{artifact['platform_run_id']}/reconciliation-{digest[:16]}.json"
        body = json.dumps(artifact, sort_keys=True)
        app.store.put(key, body.encode())
        app.lake.append("audit/context_reconciliation", pa.table({
            "platform_run_id": [artifact["platform_run_id"]], "state_digest": [artifact["state_digest"]],
            "frames": [artifact["frames"]], "complete_frames": [artifact["complete_frames"]],
            "bindings": [artifact["bindings"]], "unresolved_anomalies": [len(artifact["unresolved_anomalies"])],
            "applied_basis": [json.dumps(artifact["applied_basis"], sort_keys=True)], "object_key": [key],
            "artifact": [body]}))
    return artifacts
