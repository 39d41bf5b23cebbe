"""`fp worker`: run every bus consumer, until idle or forever."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from online.ofp_worker import OfpWorker, WorkerStats
from online.snapshot_store import flush_outbox


def run_workers(app: Any, *, until_idle: bool, poll_seconds: float = 1.0) -> dict[str, Any]:
    ofp = OfpWorker(app.db, app.bus, app.registry, batch_size=app.settings.batch_size)
    stats = WorkerStats()
    while True:
        before = stats.batches
        ofp.run_until_idle(stats)
        flushed = flush_outbox(app.db, app.store)
        if stats.batches == before and until_idle:
            break
        if not until_idle and stats.batches == before and not flushed:
            time.sleep(poll_seconds)
    summary = asdict(stats)
    summary["per_partition"] = {str(k): v for k, v in sorted(stats.per_partition.items())}
    return {"ofp": summary}
