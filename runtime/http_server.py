"""`fp serve`: the HTTP serving surface of SPEC §9 on Starlette (routing, lifespan) and uvicorn
(worker processes, graceful shutdown), Prometheus metrics from prometheus-client, JSON by orjson.

Responses are the very objects the in-process API returns, so a snapshot served over HTTP has the
same hash as the same request served in process. Database work is blocking: it runs in
Starlette's thread pool on a `FeatureServer` (one connection) borrowed from a small per-process pool.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from featureplane.pipelines.errors import FpError
from featureplane.pipelines.snapshot import error_response

MAX_BODY_BYTES = 1 << 20
STATUS_OF = {"INVALID_REQUEST": 400, "INVALID_HASH": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503}
FLUSH_SECONDS = 2.0  # how often a serving process persists its outbox (one flusher at a time, advisory lock)
SERVERS_PER_PROCESS = 4  # connections serving get_features per worker process (2 cores: more only queue)
BASELINE_ENV = "FP_SERVE_BASELINE_BYTES"  # benchmarks only: add a route returning a fixed body of this size
SUPERVISED_ENV = "FP_SERVE_SUPERVISOR_PID"  # set by `fp serve --workers N` for its worker processes


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), status_code=status,
                    media_type="application/json")


def _error(code: str, message: str, retryable: bool = False, status: int | None = None) -> Response:
    return _json(error_response(code, message, retryable, None), status or STATUS_OF.get(code, 500))


class _Metrics:
    """The seed counters (from health, at scrape time) and a latency histogram per route."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.latency = Histogram("fp_http_request_seconds", "Request latency per route", ["route", "status"],
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
                                 registry=None if multiproc else self.registry)
        if multiproc:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)

    def exposition(self, health: dict[str, Any] | None) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry) + (seed_counters(health) if health else b"")


def seed_counters(health: dict[str, Any]) -> bytes:
    """The seed counters in the Prometheus text format, read from one health report."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{rendered}}} {float(value)}" if rendered else f"{name} {float(value)}")

    components = health.get("components", {})
    consumers = {"ofp": components.get("ofp_worker", {})}
    for stream, report in (components.get("context", {}).get("streams") or {}).items():
        consumers[f"context:{stream}"] = report
    for field, name, text in (("events_applied", "fp_events_applied", "events applied"),
                              ("duplicates", "fp_duplicates", "duplicate events skipped"),
                              ("apply_failures", "fp_apply_failures", "records in the failure ledger")):
        metric(f"{name}_total", "counter", text,
               [({"consumer": c}, r.get(field, 0)) for c, r in consumers.items() if field in r])
    serving = components.get("serving", {})
    for field in ("snapshots_built", "snapshot_failures", "snapshots_persisted"):
        if field in serving:
            metric(f"fp_{field}_total", "counter", field.replace("_", " "), [({}, serving[field])])
    for field in ("stale_rate", "no_data_rate"):
        if field in serving:
            metric(f"fp_{field.replace('_rate', '_groups_ratio')}", "gauge", f"{field} of served groups",
                   [({}, serving[field])])
    lag, age = [], []
    for consumer, report in consumers.items():
        for partition, detail in (report.get("partitions") or {}).items():
            labels = {"consumer": consumer, "partition": partition}
            if detail.get("lag_records") is not None:
                lag.append((labels, detail["lag_records"]))
            if detail.get("watermark_age_seconds") is not None:
                age.append((labels, detail["watermark_age_seconds"]))
    metric("fp_lag_records", "gauge", "records behind the end of the bus, per partition", lag)
    metric("fp_watermark_age_seconds", "gauge", "wall clock minus the applied event-time watermark", age)
    status = {"GREEN": 0, "AMBER": 1, "RED": 2}.get(health.get("status", "RED"), 2)
    metric("fp_health_status", "gauge", "0 GREEN, 1 AMBER, 2 RED", [({}, status)])
    return ("\n".join(lines) + "\n").encode()


def create_app() -> Starlette:
    """The ASGI application (uvicorn imports it by name in each worker process)."""
    from featureplane.online.serving import FeatureServer
    from featureplane.runtime.app import App

    platform = App()
    local = threading.local()  # bench-only floor connections
    servers: list[Any] = []
    servers_lock = threading.Lock()
    metrics = _Metrics()
    stop = threading.Event()

    idle: queue.LifoQueue[Any] = queue.LifoQueue()
    opened = [0]

    def serve_one(request: dict[str, Any]) -> dict[str, Any]:
        """Run one request on a FeatureServer (one connection) borrowed from a small pool. Most
        recently used first: its connection has the statements prepared and planned already, which
        a connection per thread of the 40-thread pool never gets to (measured over HTTP: 9 ms vs 1.4 ms p50)."""
        try:
            server = idle.get_nowait()
        except queue.Empty:
            with servers_lock:
                fresh = opened[0] < SERVERS_PER_PROCESS
                opened[0] += fresh
            if fresh:
                server = FeatureServer(platform.db, platform.bus, platform.registry)
                with servers_lock:
                    servers.append(server)
            else:
                server = idle.get()
        try:
            return server.get_features(request)
        finally:
            idle.put(server)

    def timed(route: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except Exception:  # no traceback reaches a client
                response = _error("INTERNAL_ERROR", "unexpected error while serving", False, 500)
            metrics.latency.labels(route, str(response.status_code)).observe(time.perf_counter() - started)
            return response
        return endpoint

    async def get_features(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return _error("PAYLOAD_TOO_LARGE", f"request bodies are limited to {MAX_BODY_BYTES} bytes", False, 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _error("PAYLOAD_TOO_LARGE", f"request bodies are limited to {MAX_BODY_BYTES} bytes", False,
                              413)
        try:
            parsed = orjson.loads(bytes(body))
        except orjson.JSONDecodeError:
            return _error("INVALID_REQUEST", "the body is not JSON")
        response = await run_in_threadpool(serve_one, parsed)
        if response["kind"] == "error_response":
            return _json(response, STATUS_OF.get(response["error_code"], 500))
        return _json(response)

    async def get_snapshot(request: Request) -> Response:
        from featureplane.online.snapshot_store import get_snapshot as fetch

        digest = request.path_params["digest"]
        try:
            return _json(await run_in_threadpool(fetch, platform.db, platform.store, digest))
        except FpError as exc:
            code = {"INVALID_HASH": "INVALID_REQUEST", "SNAPSHOT_NOT_FOUND": "NOT_FOUND"}.get(exc.reason_code,
                                                                                            exc.reason_code)
            return _error(code, exc.message, exc.retryable)

    async def feature_groups(request: Request) -> Response:
        return _json({"feature_groups": [describe_group(g) for g in platform.registry.all()],
                      "registry_digest": platform.registry.digest})

    async def healthz(request: Request) -> Response:
        return _json({"status": "serving"})

    def health() -> dict[str, Any]:
        from featureplane.online.health import health_report

        return health_report(platform)

    async def readyz(request: Request) -> Response:
        report = await run_in_threadpool(health)
        return _json(report, 503 if report["status"] == "RED" else 200)

    async def metrics_route(request: Request) -> Response:
        report = await run_in_threadpool(health)
        return Response(metrics.exposition(report), media_type="text/plain; version=0.0.4; charset=utf-8")

    def flush_loop() -> None:
        from featureplane.online.snapshot_store import flush_outbox

        while not stop.wait(FLUSH_SECONDS):
            with contextlib.suppress(Exception):  # durable in the outbox; retried next time
                flush_outbox(platform.db, platform.store, platform.lake)

    def orphan_watch(parent: int) -> None:
        """A worker whose supervisor died (kill -9) stops gracefully instead of serving on unseen."""
        while not stop.wait(1.0):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        flusher = threading.Thread(target=flush_loop, name="outbox-flusher", daemon=True)
        flusher.start()
        supervisor = os.environ.get(SUPERVISED_ENV)
        if supervisor and int(supervisor) != os.getpid():  # a worker process of `fp serve --workers N`: it
            # compares with the pid it was given, so a worker whose supervisor died before it got here stops too
            threading.Thread(target=orphan_watch, args=(int(supervisor),), name="orphan-watch", daemon=True).start()
        yield
        stop.set()  # in-flight requests have finished when uvicorn runs the shutdown
        flusher.join(timeout=FLUSH_SECONDS + 5)
        with contextlib.suppress(Exception):
            from featureplane.online.snapshot_store import flush_outbox

            flush_outbox(platform.db, platform.store, platform.lake)
        with servers_lock:
            for server in servers:
                server.close()

    routes = [
        Route("/v1/get-features", timed("/v1/get-features", get_features), methods=["POST"]),
        Route("/v1/snapshots/{digest}", timed("/v1/snapshots/{hash}", get_snapshot), methods=["GET"]),
        Route("/v1/feature-groups", timed("/v1/feature-groups", feature_groups), methods=["GET"]),
        Route("/healthz", timed("/healthz", healthz), methods=["GET"]),
        Route("/readyz", timed("/readyz", readyz), methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    baseline = os.environ.get(BASELINE_ENV)
    if baseline:  # the transport alone: a fixed precomputed body (bench/serve_http.py)
        fixed = b'{"pad":"' + b"x" * max(0, int(baseline) - 10) + b'"}'

        async def fixed_body(request: Request) -> Response:
            await request.body()
            return Response(fixed, media_type="application/json")

        routes.append(Route("/v1/baseline", timed("/v1/baseline", fixed_body), methods=["POST"]))
        for path, durable in (("/v1/floor", True), ("/v1/floor-read", False)):
            routes.append(Route(path, timed(path, _stack_floor(platform, local, fixed, durable)), methods=["POST"]))
    return Starlette(routes=routes, lifespan=lifespan)


def _stack_floor(platform: Any, local: threading.local, fixed: bytes, durable: bool) -> Callable[[Request], Any]:
    """Benchmarks only: the least any served snapshot costs in this stack. The same fixed body, after
    the two Postgres round trips serving makes (one read of the basis; a durable autocommit insert of
    the body) and nothing else: no feature read, no planning, no hashing. With
    `durable` False, only one read of the basis (autocommit): what any answer from Postgres costs."""
    from featureplane.online.checkpoints import WATERMARKS_SQL
    from featureplane.schemas.streams import TRAFFIC

    def durable_write() -> None:
        conn = getattr(local, "floor", None)
        if conn is None:
            conn = local.floor = platform.db.connect(autocommit=True)
            conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body text)")
        conn.execute(WATERMARKS_SQL, ("ofp", TRAFFIC)).fetchall()
        if durable:
            conn.execute("INSERT INTO bench_floor (body) VALUES (%s)", (fixed.decode(),))

    async def endpoint(request: Request) -> Response:
        await request.body()
        await run_in_threadpool(durable_write)
        return Response(fixed, media_type="application/json")

    return endpoint


def describe_group(group: Any) -> dict[str, Any]:
    """One registry entry as `GET /v1/feature-groups` lists it."""
    return {
        "group_name": group.group_name, "group_version": group.group_version, "key_type": group.key_type,
        "ttl_seconds": group.ttl_seconds, "definition_digest": group.digest,
        "features": [{"name": f.name, "agg": f.agg, "field": f.field, "window": f.window,
                      "where": None if f.where is None else {"field": f.where.field, f.where.op: f.where.value}}
                     for f in group.features]
        + [{"name": d.name, "agg": d.op, "numerator": d.numerator, "denominator": d.denominator}
           for d in group.derived],
    }


def serve(host: str, port: int, workers: int, graceful_seconds: float = 30.0) -> None:
    """Run uvicorn with `workers` processes until SIGTERM/SIGINT (in-flight requests finish)."""
    import tempfile

    import uvicorn

    metrics_dir = None  # the workers' shared metric files, ours to remove when they are done
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fp-metrics-")
    if workers > 1:
        os.environ[SUPERVISED_ENV] = str(os.getpid())  # the workers watch for this supervisor
    # our own listening socket with TCP_NODELAY, which accepted connections inherit: uvicorn writes a
    # response's headers and body apart, and with Nagle on, the body waits for a delayed ACK (40 ms)
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.set_inheritable(True)
    try:
        uvicorn.run("featureplane.runtime.http_server:create_app", factory=True, fd=listener.fileno(),
                    workers=workers, timeout_graceful_shutdown=graceful_seconds, log_level="warning",
                    access_log=False, server_header=False)
    finally:
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)
