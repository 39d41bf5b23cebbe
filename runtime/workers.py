"""`fp worker`: run every bus consumer (OFP, archive; context once it exists), until idle or forever."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from lake.archive import ArchiveStats, ArchiveWriter
from lake.audit import export_audit
from online.ofp_worker import OfpWorker, WorkerStats
from online.snapshot_store import flush_outbox
from schemas.streams import STREAMS


def run_workers(app: Any, *, until_idle: bool, poll_seconds: float = 1.0) -> dict[str, Any]:
    ofp = OfpWorker(app.db, app.bus, app.registry, batch_size=app.settings.batch_size,
                    bucketed=app.settings.bucketed_groups)
    archive = ArchiveWriter(app.db, app.bus, app.lake)
    stats = WorkerStats()
    archived = ArchiveStats()
    while True:
        before = (stats.batches, archived.commits)
        ofp.run_until_idle(stats)
        archive.archive_all(list(STREAMS), archived)
        flushed = flush_outbox(app.db, app.store, app.lake)
        idle = (stats.batches, archived.commits) == before
        if idle and until_idle:
            break
        if not until_idle and idle and not flushed:
            time.sleep(poll_seconds)
    exported = export_audit(app.db, app.lake)
    summary = asdict(stats)
    summary["per_partition"] = {str(k): v for k, v in sorted(stats.per_partition.items())}
    return {"ofp": summary, "archive": asdict(archived), "audit_exported": exported}
