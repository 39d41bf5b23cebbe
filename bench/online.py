"""Online plane benchmark (issue: OFP). Prints JSON.

- apply: events/s for N simulated transactions through the OFP worker with the full catalogue,
  and the same contribution rows written by a bare COPY into an identical table (baseline).
- serve: get_features p50/p99 and requests/s for a 4-key x 4-group request mix.
- hot merchant: p99 of serving one merchant with HOT events inside its 7-day window.

    python bench/online.py [--transactions 1000000] [--requests 2000] [--hot 500000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_app, emit, percentiles, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--hot", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()

    from featureplane.online.admission import Publisher
    from featureplane.online.ofp_worker import OfpWorker, WorkerStats
    from featureplane.online.serving import FeatureServer
    from featureplane.pipelines.timefmt import format_ts, parse_rfc3339
    from featureplane.runtime.simulate import SimulationPlan, request_mix, simulate
    from featureplane.schemas.streams import TRAFFIC

    figures: dict = {"transactions": args.transactions}
    with bench_app("online") as app:
        plan = SimulationPlan(seed=args.seed, transactions=args.transactions)
        publisher = Publisher(app.db, app.bus)
        chunk: list[str] = []
        publish_s = 0.0
        for stream, event in simulate(plan):
            if stream == TRAFFIC:
                chunk.append(json.dumps(event, separators=(",", ":")))
                if len(chunk) >= 50_000:
                    publish_s += timed(lambda c=chunk: publisher.publish(TRAFFIC, c, "bench"))[0]
                    chunk = []
        if chunk:
            publish_s += timed(lambda: publisher.publish(TRAFFIC, chunk, "bench"))[0]
        figures["publish_events_per_s"] = round(args.transactions / publish_s)

        worker = OfpWorker(app.db, app.bus, app.registry, batch_size=app.settings.batch_size,
                           bucketed=app.settings.bucketed_groups)
        apply_s, stats = timed(lambda: worker.run_until_idle(WorkerStats()))
        figures["apply_seconds"] = round(apply_s, 2)
        figures["apply_events_per_s"] = round(stats.applied / apply_s)
        figures["state_rows"] = stats.contributions

        # baseline: the same events as one typed row each, one bare COPY into a table with one
        # (scope, key, ts) index per key type (what the state table is, without the worker around it)
        with app.db.transaction() as conn:
            conn.execute("CREATE TABLE copy_baseline (LIKE ofp_events INCLUDING ALL)")
            cur = conn.cursor(binary=True)
            cur.execute("SELECT * FROM ofp_events")
            rows = cur.fetchall()
        columns = ", ".join(f'"{c}"' for c in ("scope_id", "partition", "offset", "ts_us", "account_id", "card_id",
                                                 "customer_id", "merchant_id", "device_id", "amount_minor",
                                                 "channel"))

        def copy_all() -> None:
            with app.db.transaction() as conn, conn.cursor().copy(f"COPY copy_baseline ({columns}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)

        copy_s, _ = timed(copy_all)
        figures["raw_copy_seconds"] = round(copy_s, 2)
        figures["raw_copy_events_per_s"] = round(stats.applied / copy_s)
        figures["apply_vs_raw_copy_ratio"] = round(copy_s / apply_s, 3)

        server = FeatureServer(app.db, app.bus, app.registry)
        mix = request_mix(plan, args.requests, seed=3)
        for request in mix[:50]:
            server.get_features(request)  # warm-up
        samples = []
        total_s = 0.0
        for request in mix:
            elapsed, response = timed(lambda r=request: server.get_features(r))
            assert response["kind"] == "get_features_response", response
            samples.append(elapsed)
            total_s += elapsed
        figures["serve"] = {**percentiles(samples), "requests_per_s": round(len(mix) / total_s),
                            "mix": "4 keys x 4 groups", "requests": len(mix)}

        # hot merchant: HOT events inside 7 days on one merchant, its own pins
        rng = random.Random(5)
        start = parse_rfc3339("2026-03-01T00:00:00Z")
        pins = {"scenario_id": "scn_hot", "run_id": "run_hot", "manifest_fingerprint": "mf_hot",
                "parameter_hash": "ph_hot"}
        hot_lines = []
        for i in range(args.hot):
            ts = start + rng.randrange(0, 7 * 86_400_000_000)
            hot_lines.append(json.dumps({
                "event_id": f"hot_{i}", "event_type": "transaction_event", "schema_version": "v1",
                "ts_utc": format_ts(ts), "context_pins": pins, "seed": 1, "platform_run_id": "prun_hot",
                "payload": {"flow_id": f"hotflow_{i}", "merchant_id": "e_merchant_hot", "arrival_seq": i,
                            "account_id": f"e_account_h{i % 50_000}", "card_id": f"e_card_h{i % 70_000}",
                            "customer_id": f"e_customer_h{i % 50_000}", "device_id": None,
                            "amount_minor": rng.randrange(100, 90_000), "currency": "EUR", "channel": "ecom"},
            }, separators=(",", ":")))
        for n in range(0, len(hot_lines), 50_000):
            publisher.publish(TRAFFIC, hot_lines[n:n + 50_000], "bench-hot")
        worker.run_until_idle(WorkerStats())
        hot_samples = []
        end = start + 7 * 86_400_000_000
        for _ in range(300):
            as_of = end - rng.randrange(0, 3_600_000_000)
            request = {"kind": "get_features_request", "contract_version": "ofp_public_contracts_v0",
                       "context_pins": pins, "as_of_time_utc": format_ts(as_of),
                       "feature_keys": [{"key_type": "merchant", "key_id": "e_merchant_hot"}],
                       "feature_groups": [{"group_name": "merchant_activity", "group_version": "1.0"}]}
            elapsed, response = timed(lambda r=request: server.get_features(r))
            assert response["kind"] == "get_features_response", response
            hot_samples.append(elapsed)
        count_7d = response["snapshot"]["by_key"][0]["by_group"][0]["features"]["merchant_txn_count_7d"]
        figures["hot_merchant"] = {**percentiles(hot_samples), "events_in_7d_window": count_7d}
        server.close()
        figures["goals"] = {"apply_events_per_s": 50_000, "serve_p50_ms": 2, "serve_p99_ms": 10,
                            "hot_merchant_p99_ms": 20}
    emit(figures)


if __name__ == "__main__":
    main()
