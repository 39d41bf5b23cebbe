"""`fp worker`: run every bus consumer (OFP, archive; context once it exists), until idle or forever."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from lake.archive import ArchiveStats, ArchiveWriter
from lake.audit import export_audit
from online.context_store import ContextStats, ContextWorker
from online.ofp_worker import OfpWorker, WorkerStats
from online.snapshot_store import flush_outbox
from schemas.streams import STREAMS


def run_workers(app: Any, *, until_idle: bool, poll_seconds: float = 1.0) -> dict[str, Any]:
    ofp = OfpWorker(app.db, app.bus, app.registry, batch_size=app.settings.batch_size,
                    bucketed=app.settings.bucketed_groups)
    context = ContextWorker(app.db, app.bus, batch_size=app.settings.batch_size)
    archive = ArchiveWriter(app.db, app.bus, app.lake)
    stats = WorkerStats()
    context_stats = ContextStats()
    archived = ArchiveStats()
    while True:
        before = (stats.batches, context_stats.batches, archived.commits)
        ofp.run_until_idle(stats)
        context.run_until_idle(context_stats)
        archive.archive_all(list(STREAMS), archived)
        flushed = flush_outbox(app.db, app.store, app.lake)
        idle = (stats.batches, context_stats.batches, archived.commits) == before
        if context_stats.batches != before[1]:
            write_reconciliations(app)
        if idle and until_idle:
            break
        if not until_idle and idle and not flushed:
            time.sleep(poll_seconds)
    exported = export_audit(app.db, app.lake)
    summary = asdict(stats)
    summary["per_partition"] = {str(k): v for k, v in sorted(stats.per_partition.items())}
    return {"ofp": summary, "context": asdict(context_stats), "archive": asdict(archived),
            "audit_exported": exported}


def write_reconciliations(app: Any) -> list[dict[str, Any]]:
    """One reconciliation artifact per platform run in the join plane: a JSON object in the store
    (named by its state digest) and a row in the audit lake."""
    import json

    import pyarrow as pa

    from online.context_store import reconciliation

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
