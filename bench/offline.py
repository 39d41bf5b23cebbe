"""Offline plane benchmark (issue: offline plane v2). Prints JSON.

For each size (default 1M and 5M transactions), in a process of its own: archive events/s (all
five streams, typed columns included); dataset rows/s with the full catalogue and the build's own
peak RSS (the build runs in a fresh process); the same run's plain polars lazy scan of the typed
columns plus one 24 h rolling count per key type (the floor a build is compared with); and, at the
first size, parity snapshots/s.

    python bench/offline.py [--sizes 1000000 5000000] [--snapshots 2000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_app, emit, peak_rss_mb, timed

KEY_FIELDS = ("account_id", "card_id", "customer_id", "merchant_id", "device_id")


def one_size(transactions: int, snapshots: int, seed: int) -> dict:
    import polars as pl

    from featureplane.lake.archive import ArchiveWriter, table_name
    from featureplane.offline.intents import parse_intent
    from featureplane.offline.parity import check_snapshots, load_stored
    from featureplane.online.admission import encode_event
    from featureplane.online.ofp_worker import OfpWorker, WorkerStats
    from featureplane.online.serving import FeatureServer
    from featureplane.online.snapshot_store import flush_outbox
    from featureplane.runtime.simulate import SimulationPlan, request_mix, simulate
    from featureplane.schemas.streams import STREAMS, TRAFFIC

    figures: dict = {"transactions": transactions}
    with bench_app("offline") as app:
        # straight onto the bus, as admission writes records (admission is measured by bench/online.py)
        pending: dict[str, list[tuple[str, bytes]]] = {s: [] for s in STREAMS}
        for stream, event in simulate(SimulationPlan(seed=seed, transactions=transactions)):
            pending[stream].append((str(event["payload"].get(STREAMS[stream].partition_key)), encode_event(event)))
            if len(pending[stream]) >= 50_000:
                app.bus.append(stream, pending[stream])
                pending[stream] = []
        for stream, items in pending.items():
            if items:
                app.bus.append(stream, items)
        del pending
        total = sum(sum((app.bus.end_offsets(s) or {}).values()) for s in STREAMS)
        writer = ArchiveWriter(app.db, app.bus, app.lake)
        archive_s, _ = timed(lambda: writer.archive_all(list(STREAMS)))
        figures["archive"] = {"events": total, "seconds": round(archive_s, 2), "events_per_s": round(total / archive_s),
                              "note": "typed columns decoded and validated for traffic and labels"}

        ends = app.bus.end_offsets(TRAFFIC) or {}
        plan = SimulationPlan(seed=seed, transactions=transactions)
        intent = {
            "request_id": "bench", "intent_kind": "dataset_build", "context_pins": plan.pins(),
            "replay_basis": {"stream_name": TRAFFIC, "watermark_basis": {str(p): o for p, o in sorted(ends.items())}},
            "feature_groups": [{"group_name": g.group_name, "group_version": g.group_version}
                               for g in app.registry.all()],
            "label_as_of_utc": "2100-01-01T00:00:00Z",  # every transaction of the run is a row, at any size
            "observation_scope": {"ts_from_utc": "2000-01-01T00:00:00Z", "ts_to_utc": "2100-01-01T00:00:00Z"},
        }
        parse_intent(intent, app.registry)  # a bad intent fails here, not in the child
        os.sync()  # the archive's gigabytes reach the disk before the build is timed, not during it
        build = _build_in_child(app, intent)
        rows = build["rows"]

        def plain_scan() -> int:
            """The typed columns read lazily, with the Parquet reader builds use (polars' own), plus one
            24 h rolling count per key type."""
            table = app.lake.table(table_name(TRAFFIC))
            scan = pl.scan_delta(table, storage_options=app.lake.storage_options,
                                 credential_provider=None).select("ts_us", *KEY_FIELDS)
            counts = []
            frame = scan.collect()
            for key in KEY_FIELDS:
                keyed = frame.filter(pl.col(key).is_not_null()).sort(key, "ts_us")
                counts.append(keyed.select(pl.col("ts_us").is_not_null().cast(pl.Int64)
                                           .rolling_sum_by("ts_us", "86400000000i").over(key)))
            return frame.height

        scan_s, scanned = timed(plain_scan)
        figures["dataset"] = {**build, "rows_per_s": round(rows / build["seconds"]), "plain_scan_seconds":
                              round(scan_s, 2), "plain_scan_rows": scanned,
                              "build_vs_plain_scan_ratio": round(scan_s / build["seconds"], 3)}
        if snapshots:
            OfpWorker(app.db, app.bus, app.registry, bucketed=app.settings.bucketed_groups).run_until_idle(
                WorkerStats())
            server = FeatureServer(app.db, app.bus, app.registry)
            for request in request_mix(plan, snapshots, seed=1):
                server.get_features(request)
            server.close()
            flush_outbox(app.db, app.store, app.lake)
            stored = load_stored(app.db, app.store)
            parity_s, outcomes = timed(lambda: check_snapshots(app.lake, app.registry, stored))
            figures["parity"] = {"snapshots": len(outcomes), "matched": sum(o.matched for o in outcomes),
                                 "seconds": round(parity_s, 2), "snapshots_per_s": round(len(outcomes) / parity_s)}
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def _build(home: str, dsn: str, raw_intent: dict, out: multiprocessing.Queue) -> None:
    """The dataset build alone, in a fresh process: its time and its own peak RSS."""
    os.environ.update({"FP_HOME": home, "FP_PG_DSN": dsn})
    from featureplane.offline.datasets import build_dataset
    from featureplane.offline.intents import parse_intent
    from featureplane.runtime.app import App

    app = App()
    intent = parse_intent(raw_intent, app.registry)
    seconds, built = timed(lambda: build_dataset(app.lake, intent))
    built.discard()
    out.put({"rows": built.manifest["row_count"], "seconds": round(seconds, 2), "files": len(built.paths),
             "columns": len(built.manifest["columns"]), "build_peak_rss_mb": peak_rss_mb()})


def _build_in_child(app, raw_intent: dict) -> dict:
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: the build's own peak RSS
    queue = spawn.Queue()
    child = spawn.Process(
        target=_build, args=(str(app.settings.home), app.db.dsn.reveal(), raw_intent, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--snapshots", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child run of one size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.snapshots, args.seed)))
        return
    runs = []
    for n, size in enumerate(args.sizes):
        child = subprocess.run([sys.executable, __file__, "--one", str(size), "--seed", str(args.seed),
                                "--snapshots", str(args.snapshots if n == 0 else 0)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"the {size} run failed:\n{child.stderr[-3000:]}")
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    first, last = runs[0], runs[-1]
    ratio = last["dataset"]["rows_per_s"] / first["dataset"]["rows_per_s"]
    emit({"bench": "offline", "runs": runs, "dataset_rate_ratio_largest_vs_first": round(ratio, 3),
          "goals": {"dataset_rows_per_s_at_1m": 500_000, "rate_ratio_5m_vs_1m": 0.8, "peak_rss_mb_at_5m": 2048,
                    "parity_snapshots_per_s": 5_000, "archive_events_per_s": 250_000}})


if __name__ == "__main__":
    main()
