"""HTTP serving benchmark: `fp serve` answering the 4-key x 4-group mix at 1, 8 and 32 concurrent
clients, and in the same run the same server returning a fixed precomputed body of the same size
(the cost of the transport alone) as the baseline. Bounded runs against 127.0.0.1. Prints JSON.

Also, as the floor of the stack: the same fixed body after the two Postgres round trips any served
snapshot makes (read the basis in a repeatable-read transaction; insert the body durably and
commit), with no feature work at all. No serving design that keeps "durable before returned" can
beat it, so its ratio to the baseline bounds what get_features can reach on this machine. And the
same body after one autocommit read of the basis only: what any answer drawn from Postgres costs.

    python bench/serve_http.py [--transactions 20000] [--seconds 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_app, emit, percentiles

REPO = Path(__file__).resolve().parent.parent


def _client_process(port: int, path: str, bodies: list[bytes], threads: int, seconds: float,
                    out: multiprocessing.Queue) -> None:
    """`threads` keep-alive clients in one process, each looping over the bodies for `seconds`."""
    samples: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()  # http.client writes headers and body apart: without NODELAY, Nagle waits 40 ms
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine: list[float] = []
        n = offset
        while time.perf_counter() < stop_at:
            body = bodies[n % len(bodies)]
            n += 1
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers={"content-type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            mine.append(time.perf_counter() - started)
            if reply.status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=loop, args=(i * 997,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put((samples, errors[0]))


def run_level(port: int, path: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    processes = min(clients, 4)
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_client_process, args=(port, path, bodies, n, seconds, queue))
             for n in per]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    samples = [s for r, _ in results for s in r]
    errors = sum(e for _, e in results)
    return {**percentiles(samples), "requests": len(samples), "requests_per_s": round(len(samples) / elapsed),
            "non_200": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each level")
    parser.add_argument("--workers", type=int, default=2, help="fp serve worker processes")
    parser.add_argument("--levels", default="1,8,32")
    args = parser.parse_args()

    from featureplane.runtime.simulate import SimulationPlan, request_mix
    from featureplane.runtime.simulation_job import run_simulation
    from featureplane.runtime.workers import run_workers

    with bench_app("http") as app:
        plan = SimulationPlan(seed=17, transactions=args.transactions)
        run_simulation(transactions=args.transactions, seed=17, out=None, publish=True, progress=False, app=app)
        run_workers(app, until_idle=True)
        bodies = [json.dumps(r).encode() for r in request_mix(plan, 500, seed=3)]
        from featureplane.online.serving import FeatureServer

        server = FeatureServer(app.db, app.bus, app.registry)
        size = len(json.dumps(server.get_features(json.loads(bodies[0]))).encode())
        server.close()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "FP_PG_DSN": app.db.dsn.reveal(), "FP_HOME": str(app.settings.home),
               "PYTHONPATH": str(REPO), "FP_SERVE_BASELINE_BYTES": str(size)}
        proc = subprocess.Popen([sys.executable, "-m", "featureplane.runtime.cli", "serve", "--port", str(port),
                                 "--workers", str(args.workers)], env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.2)
                if time.monotonic() > deadline:
                    raise RuntimeError("fp serve did not start")
            run_level(port, "/v1/get-features", bodies, 4, 2.0)  # warm-up: connections, plans, caches
            figures: dict = {"bench": "serve_http", "transactions": args.transactions, "workers": args.workers,
                             "response_bytes": size, "levels": {}}
            for clients in (int(c) for c in args.levels.split(",")):
                features = run_level(port, "/v1/get-features", bodies, clients, args.seconds)
                baseline = run_level(port, "/v1/baseline", bodies, clients, args.seconds)
                floor = run_level(port, "/v1/floor", bodies, clients, args.seconds)
                read_floor = run_level(port, "/v1/floor-read", bodies, clients, args.seconds)
                figures["levels"][str(clients)] = {
                    "get_features": features, "fixed_body_baseline": baseline, "durable_write_floor": floor,
                    "one_read_floor": read_floor,
                    "ratio_requests_per_s": round(features["requests_per_s"] / baseline["requests_per_s"], 3),
                    "floor_ratio_requests_per_s": round(floor["requests_per_s"] / baseline["requests_per_s"], 3),
                    "read_floor_ratio_requests_per_s": round(read_floor["requests_per_s"]
                                                             / baseline["requests_per_s"], 3),
                    "get_features_vs_floor": round(features["requests_per_s"] / floor["requests_per_s"], 3)}
            figures["goal"] = "at 8 clients, get_features requests/s >= 0.5x the fixed-body baseline"
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    emit(figures)


if __name__ == "__main__":
    main()
