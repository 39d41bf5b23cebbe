"""Online plane benchmark (issue: online plane v2). Prints JSON, every figure from the same run.

- apply: events/s of `fp worker` (a real process, full catalogue) at --small and --large
  transactions (the large one the median of ROUNDS rounds), their ratio (flatness), the worker's peak
  RSS, and the ratio to a bare COPY of the same events as one typed row each into a table with one
  (scope, key, ts) index per key type (the median of ROUNDS rounds); the same for the OFP consumer
  alone (`apply_large_ofp_only`: what the COPY compares with, events written to the online state,
  without the archive, context and audit consumers that `fp worker` also runs on the same two cores).
- serve: get_features p50/p99 and requests/s for the 4-key x 4-group mix at 1, 2 and 4 clients
  (processes, each with its own connection), on the large store, after a warm-up pass (Feast's peer
  also reads a warm store) and once autovacuum is idle; each level serves requests of its own, none
  served before, in ROUNDS rounds, and each figure is the median of its rounds.
- hot keys: p99 of one merchant, one device and one card with --hot events inside 7 days, their groups
  registered for hot keys (HOT_GROUPS), in a store of their own; medians of ROUNDS rounds, as above.
- --peer feast: runs ../shared/peers/feast_online.py (its own venv) and prints the ratios.

    python bench/online.py [--small 100000] [--large 1000000] [--hot 500000] [--peer feast]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_app, emit, percentiles, timed

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3  # the large apply, the COPY baseline and every serving figure: the median of this many rounds


def publish_simulated(app, transactions: int, seed: int):
    from featureplane.online.admission import Publisher
    from featureplane.runtime.simulate import SimulationPlan, simulate
    from featureplane.schemas.streams import TRAFFIC

    plan = SimulationPlan(seed=seed, transactions=transactions)
    publisher = Publisher(app.db, app.bus)
    chunk: list[str] = []
    for stream, event in simulate(plan):
        if stream == TRAFFIC:
            chunk.append(json.dumps(event, separators=(",", ":")))
            if len(chunk) >= 50_000:
                publisher.publish(TRAFFIC, chunk, "bench")
                chunk = []
    if chunk:
        publisher.publish(TRAFFIC, chunk, "bench")
    return plan


# the OFP consumer alone (what the COPY baseline compares with: events written to the online state),
# in a process of its own as `fp worker` runs
OFP_ONLY = ("import json; from featureplane.runtime.app import App; from featureplane.online.ofp_worker import "
            "OfpWorker; app = App(); s = app.settings; stats = OfpWorker(app.db, app.bus, app.registry, "
            "batch_size=s.batch_size, bucketed=s.bucketed_groups).run_until_idle(); "
            "print(json.dumps({'ofp': {'applied': stats.applied}}))")


def apply_with_worker(app, ofp_only: bool = False) -> dict:
    """`fp worker --until-idle` (or the OFP consumer alone) in its own process: events/s and peak RSS."""
    env = {**os.environ, "FP_PG_DSN": app.db.dsn.reveal(), "FP_HOME": str(app.settings.home),
           "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    command = ["-c", OFP_ONLY] if ofp_only else ["-m", "featureplane.runtime.cli", "worker", "--until-idle",
                                                  "--timeout", "7200"]
    elapsed, done = timed(lambda: subprocess.run([sys.executable, *command], env=env, cwd=REPO,
                                                 capture_output=True, text=True))
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-1000:] + done.stderr[-2000:])
    summary = json.loads((done.stdout if ofp_only else done.stderr).strip().splitlines()[-1])
    applied = summary["ofp"]["applied"]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"events": applied, "seconds": round(elapsed, 2), "events_per_s": round(applied / elapsed),
            "worker_peak_rss_mb": round(max(rss, before) / 1024, 1),
            "note": "the OFP consumer alone" if ofp_only else
                    "includes the context, archive and audit consumers of the same worker process"}


def apply_rounds(app) -> tuple[dict, dict]:
    """`apply_with_worker` on ROUNDS identical copies of the published store (the home restored from a
    copy taken before the first run, the server stopped around it), the whole worker and the OFP
    consumer alone in turn: each figure the median of its rounds. A whole worker's store stays for
    what follows."""
    from featureplane.runtime.embedded_pg import EmbeddedServer

    home = Path(app.settings.home)
    server = EmbeddedServer(home / "pg", app.settings.postgres.settings)
    pristine = home.parent / f"{home.name}-published"

    def copy(source: Path, target: Path) -> None:
        server.stop()
        subprocess.run(["rm", "-rf", str(target)], check=True)
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)  # keeps the server's file owner
        server.ensure_running()

    copy(home, pristine)
    alone, whole = [], []
    for i in range(ROUNDS):
        alone.append(apply_with_worker(app, ofp_only=True))
        copy(pristine, home)
        whole.append(apply_with_worker(app))
        if i < ROUNDS - 1:
            copy(pristine, home)
    subprocess.run(["rm", "-rf", str(pristine)], check=True)

    def median(rounds: list[dict]) -> dict:
        figures = {k: statistics.median(r[k] for r in rounds) for k in ("events", "seconds", "events_per_s")}
        return {**figures, "rounds": [{k: r[k] for k in ("seconds", "events_per_s")} for r in rounds],
                "note": f"median of {ROUNDS} rounds on copies of one published store; {rounds[0]['note']}"}

    # RUSAGE_CHILDREN keeps the largest child so far: the whole worker's rounds come after every OFP-only one
    return ({**median(whole), "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in whole)}, median(alone))


def copy_baseline(app) -> dict:
    with app.db.transaction() as conn:
        conn.execute("CREATE TABLE copy_baseline (LIKE ofp_events INCLUDING ALL)")
        cur = conn.cursor(binary=True)
        cur.execute("SELECT * FROM ofp_events")
        rows = cur.fetchall()
    columns = ", ".join(f'"{c}"' for c in ("scope_id", "partition", "offset", "ts_us", "account_id", "card_id",
                                             "customer_id", "merchant_id", "device_id", "amount_minor", "channel"))

    def copy_all() -> None:
        with app.db.transaction() as conn, conn.cursor().copy(f"COPY copy_baseline ({columns}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)

    took = []
    for _ in range(ROUNDS):
        elapsed, _ = timed(copy_all)
        took.append(elapsed)
        with app.db.transaction() as conn:
            conn.execute("TRUNCATE copy_baseline")
    with app.db.transaction() as conn:
        conn.execute("DROP TABLE copy_baseline")
    elapsed = statistics.median(took)
    return {"events": len(rows), "seconds": round(elapsed, 2), "events_per_s": round(len(rows) / elapsed),
            "rounds_s": [round(t, 2) for t in took], "note": f"median of {ROUNDS} rounds"}


def _serve_client(dsn: str, home: str, requests: list[dict], out: multiprocessing.Queue) -> None:
    os.environ.update({"FP_PG_DSN": dsn, "FP_HOME": home})
    from featureplane.online.serving import FeatureServer
    from featureplane.runtime.app import App

    app = App()
    server = FeatureServer(app.db, app.bus, app.registry)
    for request in requests[:20]:
        server.get_features(request)  # warm-up
    samples = []
    began = time.time()
    for request in requests:
        started = time.perf_counter()
        response = server.get_features(request)
        samples.append(time.perf_counter() - started)
        assert response["kind"] == "get_features_response", response
    ended = time.time()
    server.close()
    out.put((samples, began, ended))


def serve_level(app, mix: list[dict], clients: int) -> dict:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    share = [mix[i::clients] for i in range(clients)]
    procs = [multiprocessing.Process(target=_serve_client, args=(app.db.dsn.reveal(), str(app.settings.home),
                                                                  part, queue)) for part in share]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    samples = [s for part, _, _ in results for s in part]
    # the window in which clients were serving (from the first client's first request to the last one's
    # last), not process start-up and imports; Feast's peer reports 1000 / mean latency for one client
    elapsed = max(e for _, _, e in results) - min(b for _, b, _ in results)
    return {**percentiles(samples), "requests": len(samples), "requests_per_s": round(len(samples) / elapsed)}


def median_of(rounds: list[dict]) -> dict:
    """The median of each figure over rounds, and every round's p50 / p99 / req/s."""
    figures = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
    figures["rounds"] = [{k: r[k] for k in ("p50_ms", "p99_ms", "requests_per_s") if k in r} for r in rounds]
    return figures


def wait_for_autovacuum(app, limit_s: float = 600.0) -> float:
    """Seconds until no autovacuum worker runs (at most `limit_s`). A just-applied store has a million fresh
    rows in several tables, and autovacuum's passes over them take one of the machine's two cores for
    minutes; serving is measured on a store at rest, as Feast's peer is."""
    started = time.monotonic()
    with app.db.connect(autocommit=True) as conn:
        while time.monotonic() - started < limit_s:
            busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                                "AND state IS DISTINCT FROM 'idle'").fetchone()[0]
            if not busy:
                break
            time.sleep(0.5)
    return round(time.monotonic() - started, 1)


# (bucket width, fine width) in seconds: the fine level keeps the raw edge rows of a 500k-event key near 100
HOT_GROUPS = {("merchant_activity", "1.0"): (600, 60), ("card_velocity", "1.0"): (900, 90),
              ("device_reuse", "1.0"): (1800, 180)}


def hot_keys(app, count: int) -> dict:
    """One merchant, one device and one card, each with `count` events inside 7 days (own pins), in a
    store of their own with their groups registered for hot keys at HOT_GROUPS' widths (seconds)."""
    from featureplane.online.admission import Publisher
    from featureplane.online.ofp_worker import OfpWorker
    from featureplane.online.serving import FeatureServer
    from featureplane.pipelines.buckets import BucketSpec
    from featureplane.pipelines.timefmt import format_ts, parse_rfc3339
    from featureplane.schemas.streams import TRAFFIC

    rng = random.Random(5)
    start = parse_rfc3339("2026-03-01T00:00:00Z")
    pins = {"scenario_id": "scn_hot", "run_id": "run_hot", "manifest_fingerprint": "mf_hot", "parameter_hash": "ph_hot"}
    publisher = Publisher(app.db, app.bus)
    kinds = {"merchant": ("merchant_activity", "e_merchant_hot"), "device": ("device_reuse", "e_device_hot"),
             "card": ("card_velocity", "e_card_hot")}
    for kind in kinds:
        lines = []
        for i in range(count):
            ts = start + rng.randrange(0, 7 * 86_400_000_000)
            payload = {"flow_id": f"hot{kind}_{i}", "merchant_id": f"e_merchant_h{i % 3000}", "arrival_seq": i,
                       "account_id": f"e_account_h{i % 50_000}", "card_id": f"e_card_h{i % 70_000}",
                       "customer_id": f"e_customer_h{i % 50_000}", "device_id": f"e_device_h{i % 20_000}",
                       "amount_minor": rng.randrange(100, 90_000), "currency": "EUR", "channel": "ecom"}
            payload[f"{kind}_id"] = kinds[kind][1]
            lines.append(json.dumps({"event_id": f"hot_{kind}_{i}", "event_type": "transaction_event",
                                     "schema_version": "v1", "ts_utc": format_ts(ts), "context_pins": pins, "seed": 1,
                                     "platform_run_id": "prun_hot", "payload": payload}, separators=(",", ":")))
            if len(lines) >= 50_000:
                publisher.publish(TRAFFIC, lines, "bench-hot")
                lines = []
        if lines:
            publisher.publish(TRAFFIC, lines, "bench-hot")
    widths = {ref: BucketSpec(width * 1_000_000, fine * 1_000_000) for ref, (width, fine) in HOT_GROUPS.items()}
    elapsed, stats = timed(lambda: OfpWorker(app.db, app.bus, app.registry, bucketed=widths,
                                             batch_size=app.settings.batch_size).run_until_idle())
    out: dict = {"registered": {f"{n}@{v}": {"width_s": w, "fine_s": f} for (n, v), (w, f) in HOT_GROUPS.items()},
                 "apply_with_registration": {"events": stats.applied, "events_per_s": round(stats.applied / elapsed),
                                             "note": "OFP only, in process; events in random time order"}}
    server = FeatureServer(app.db, app.bus, app.registry)
    end = start + 7 * 86_400_000_000

    def measure() -> dict:
        with app.db.connect(autocommit=True) as conn:  # the gigabytes just written flushed, not during the rounds
            conn.execute("CHECKPOINT")
        figures = {}
        for kind, (group, key_id) in kinds.items():
            rounds = []
            for _ in range(ROUNDS):
                samples = []
                for _ in range(300):
                    as_of = end - rng.randrange(0, 3_600_000_000)
                    request = {"kind": "get_features_request", "contract_version": "ofp_public_contracts_v0",
                               "context_pins": pins, "as_of_time_utc": format_ts(as_of),
                               "feature_keys": [{"key_type": kind, "key_id": key_id}],
                               "feature_groups": [{"group_name": group, "group_version": "1.0"}]}
                    elapsed, response = timed(lambda r=request: server.get_features(r))
                    assert response["kind"] == "get_features_response", response
                    samples.append(elapsed)
                rounds.append(percentiles(samples[50:]))
            figures[kind] = {**median_of(rounds), "group": group, "events_in_7d": count}
        return figures

    out["just_applied"] = measure()
    with app.db.connect(autocommit=True) as conn:  # what autovacuum gives a store that has settled
        conn.execute("VACUUM (ANALYZE)")
    out["settled"] = {**measure(), "note": "after VACUUM (ANALYZE)"}
    out["note"] = (f"after a CHECKPOINT, {ROUNDS} rounds of 300 requests per key (the first 50 of each not counted); "
                   "each figure the median of its rounds")
    server.close()
    return out


def feast_peer() -> dict | None:
    peer = REPO.parent / "shared" / "peers" / "feast_online.py"
    if not peer.exists():
        return None
    done = subprocess.run([sys.executable, str(peer)], capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        return {"error": done.stderr[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--hot", type=int, default=500_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--peer", choices=["feast"], default=None)
    args = parser.parse_args()

    from featureplane.runtime.simulate import request_mix

    figures: dict = {"bench": "online", "small": args.small, "large": args.large}
    with bench_app("online-small") as app:
        publish_simulated(app, args.small, seed=17)
        figures["apply_small"] = apply_with_worker(app)
    with bench_app("online-large") as app:
        plan = publish_simulated(app, args.large, seed=17)
        figures["apply_large"], figures["apply_large_ofp_only"] = apply_rounds(app)
        figures["apply_flatness_large_vs_small"] = round(
            figures["apply_large"]["events_per_s"] / figures["apply_small"]["events_per_s"], 3)
        figures["raw_copy"] = copy_baseline(app)
        figures["apply_vs_raw_copy"] = round(figures["apply_large"]["events_per_s"]
                                             / figures["raw_copy"]["events_per_s"], 3)
        figures["ofp_only_apply_vs_raw_copy"] = round(figures["apply_large_ofp_only"]["events_per_s"]
                                                      / figures["raw_copy"]["events_per_s"], 3)
        n = args.requests
        settled_after = wait_for_autovacuum(app)
        with app.db.connect(autocommit=True) as conn:
            # serving is measured on a settled store, as Feast's peer is: the gigabytes the apply and the
            # COPY baseline just wrote are flushed first, not during the serving levels
            conn.execute("CHECKPOINT")
        levels = (1, 2, 4)
        mix = request_mix(plan, (1 + ROUNDS * len(levels)) * n, seed=3)
        serve_level(app, mix[:n], 2)  # warm-up: the store's pages in memory
        # each round its own requests (no snapshot served twice: every one a new durable outbox row)
        slices = iter(range(n, len(mix), n))
        figures["serve"] = {str(c): median_of([serve_level(app, mix[at:at + n], c) for at in
                                               [next(slices) for _ in range(ROUNDS)]]) for c in levels}
        figures["serve"]["mix"] = (f"4 keys x 4 groups; once autovacuum is idle, after a CHECKPOINT and a warm-up "
                                   f"pass; each level {ROUNDS} rounds of new requests, each figure the median")
        figures["serve"]["autovacuum_wait_s"] = settled_after
    if args.hot:
        with bench_app("online-hot") as app:
            figures["hot_keys"] = hot_keys(app, args.hot)
    if args.peer == "feast":
        feast = feast_peer()
        figures["feast"] = feast
        one = figures["serve"]["1"]
        shape = (feast or {}).get("4_views_1_row") or {}
        if shape.get("p50_ms"):
            figures["ratio_to_feast"] = {"p50": round(one["p50_ms"] / shape["p50_ms"], 2),
                                         "p99": round(one["p99_ms"] / shape["p99_ms"], 2),
                                         "requests_per_s": round(one["requests_per_s"] / shape["req_per_s"], 3)}
    figures["goals"] = {"serve_p50_p99": "<= 1.5x Feast", "requests_per_s": ">= 0.7x Feast",
                        "apply_events_per_s": 50_000, "apply_vs_raw_copy": 0.7, "flatness": 0.8,
                        "hot_key_p99_ms": 3, "worker_rss_mb": 1024}
    emit(figures)


if __name__ == "__main__":
    main()
