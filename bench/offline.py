"""Offline plane benchmark (issue: lake and OFS). Prints JSON.

- archive: events/s written to the Delta archive (all five streams of a simulated run).
- dataset: rows/s for a dataset build over N transactions with the full catalogue, and the
  ratio to a plain polars scan (+ JSON decode) of the same archive table in the same run.
- parity: snapshots/s rebuilt and compared.

    python bench/offline.py [--transactions 1000000] [--snapshots 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_app, emit, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--snapshots", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()

    import polars as pl

    from featureplane.lake.archive import ArchiveWriter, table_name
    from featureplane.offline.datasets import build_dataset
    from featureplane.offline.intents import parse_intent
    from featureplane.offline.parity import check_snapshots, load_stored
    from featureplane.online.ofp_worker import OfpWorker, WorkerStats
    from featureplane.online.serving import FeatureServer
    from featureplane.online.snapshot_store import flush_outbox
    from featureplane.runtime.simulate import SimulationPlan, request_mix, simulate
    from featureplane.schemas.streams import STREAMS, TRAFFIC

    figures: dict = {"transactions": args.transactions}
    with bench_app("offline") as app:
        # straight onto the bus (admission is measured by bench/online.py; here it would dominate)
        pending: dict[str, list[tuple[str, bytes]]] = {s: [] for s in STREAMS}
        for stream, event in simulate(SimulationPlan(seed=args.seed, transactions=args.transactions)):
            key = event["payload"].get(STREAMS[stream].partition_key)
            pending[stream].append((str(key), json.dumps(event, separators=(",", ":")).encode()))
            if len(pending[stream]) >= 50_000:
                app.bus.append(stream, pending[stream])
                pending[stream] = []
        for stream, items in pending.items():
            if items:
                app.bus.append(stream, items)
        total = sum(sum((app.bus.end_offsets(s) or {}).values()) for s in STREAMS)
        writer = ArchiveWriter(app.db, app.bus, app.lake)
        archive_s, _ = timed(lambda: writer.archive_all(list(STREAMS)))
        figures["archive"] = {"events": total, "seconds": round(archive_s, 2),
                              "events_per_s": round(total / archive_s)}

        ends = app.bus.end_offsets(TRAFFIC) or {}
        plan = SimulationPlan(seed=args.seed, transactions=args.transactions)
        intent = parse_intent({
            "request_id": "bench", "intent_kind": "dataset_build", "context_pins": plan.pins(),
            "replay_basis": {"stream_name": TRAFFIC, "watermark_basis": {str(p): o for p, o in sorted(ends.items())}},
            "feature_groups": [{"group_name": g.group_name, "group_version": g.group_version}
                               for g in app.registry.all()],
            "label_as_of_utc": "2027-01-01T00:00:00Z",
            "observation_scope": {"ts_from_utc": "2026-01-01T00:00:00Z", "ts_to_utc": "2027-01-01T00:00:00Z"},
        }, app.registry)
        build_s, built = timed(lambda: build_dataset(app.lake, intent))
        rows = built.manifest["row_count"]

        def plain_scan() -> int:
            frame = pl.from_arrow(app.lake.table(table_name(TRAFFIC)).to_pyarrow_dataset().to_table())
            payload = pl.Struct({k: pl.String() for k in ("flow_id", "merchant_id", "account_id", "card_id",
                                                           "customer_id", "device_id", "channel")}
                                | {"amount_minor": pl.Int64()})
            envelope = pl.Struct({"event_id": pl.String(), "ts_utc": pl.String(), "payload": payload})
            decoded = frame.select(pl.col("value").cast(pl.String).str.json_decode(envelope))
            return decoded.height

        scan_s, scanned = timed(plain_scan)
        figures["dataset"] = {"rows": rows, "seconds": round(build_s, 2), "rows_per_s": round(rows / build_s),
                              "plain_polars_scan_seconds": round(scan_s, 2), "scanned_records": scanned,
                              "build_vs_plain_scan_ratio": round(scan_s / build_s, 3),
                              "columns": len(built.manifest["columns"])}

        OfpWorker(app.db, app.bus, app.registry, bucketed=app.settings.bucketed_groups).run_until_idle(WorkerStats())
        server = FeatureServer(app.db, app.bus, app.registry)
        for request in request_mix(plan, args.snapshots, seed=1):
            server.get_features(request)
        server.close()
        flush_outbox(app.db, app.store, app.lake)
        stored = load_stored(app.db, app.store)
        parity_s, outcomes = timed(lambda: check_snapshots(app.lake, app.registry, stored))
        figures["parity"] = {"snapshots": len(outcomes), "matched": sum(o.matched for o in outcomes),
                             "seconds": round(parity_s, 2), "snapshots_per_s": round(len(outcomes) / parity_s)}
        figures["goals"] = {"archive_events_per_s": 100_000, "dataset_rows_per_s": 200_000,
                            "parity_snapshots_per_s": 2_000}
    emit(figures)


if __name__ == "__main__":
    main()
