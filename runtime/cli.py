"""The `fp` command: thin wiring from arguments to the packages; JSON where a program reads it."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from featureplane.pipelines.errors import FpError, TerminalError

Handler = Callable[[argparse.Namespace], int]
EXIT_OK, EXIT_PARTIAL, EXIT_CANNOT_RUN = 0, 1, 2
MAX_REQUEST_BYTES = 1 << 20  # one request document (as over HTTP, SPEC §9)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")


def _error_body(code: str, message: str, retryable: bool) -> dict[str, Any]:
    """The one error shape a program reads (SPEC §5 error_response), for every command."""
    from featureplane.pipelines.snapshot import error_response

    return error_response(code, message, retryable, None)


def _open_input(path: str) -> Any:
    """A binary handle on FILE or stdin (`-`); unreadable input is a JSON error, not a traceback."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise TerminalError("INPUT_UNREADABLE", f"{path!r} is a directory, not a file") from None
    except FileNotFoundError:
        raise TerminalError("INPUT_UNREADABLE", f"{path!r} does not exist") from None
    except OSError as exc:
        raise TerminalError("INPUT_UNREADABLE", f"{path!r} cannot be read ({exc.strerror})") from None


def cmd_init(args: argparse.Namespace) -> int:
    from featureplane.runtime.app import App

    _print_json(App().provision())
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    from featureplane.online.admission import Publisher, read_lines
    from featureplane.runtime.app import App
    from featureplane.schemas.streams import stream_spec

    stream_spec(args.stream)  # an unknown stream is an error before anything is read
    source = str(args.file)
    with _open_input(source) as handle:
        app = App()
        app.init()
        try:
            result = Publisher(app.db, app.bus).publish(args.stream, read_lines(handle), source)
        except IsADirectoryError:
            raise TerminalError("INPUT_UNREADABLE", f"{source!r} is a directory, not a file") from None
    _print_json(result.summary())
    return EXIT_OK if result.rejected == 0 else EXIT_PARTIAL


def cmd_simulate(args: argparse.Namespace) -> int:
    from featureplane.runtime.simulation_job import run_simulation

    summary = run_simulation(
        transactions=args.transactions, seed=args.seed, out=args.out, publish=not args.no_publish,
        duplicates=args.duplicates, disorder=args.disorder, progress=not args.quiet,
    )
    _print_json(summary)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from featureplane.runtime.app import App
    from featureplane.runtime.workers import run_workers

    app = App()
    app.init()
    summary = run_workers(app, until_idle=args.until_idle, poll_seconds=args.poll_seconds,
                          timeout_seconds=args.timeout)
    sys.stderr.write(json.dumps(summary, sort_keys=True) + "\n")
    return 0


def _read_requests(source: str) -> tuple[list[Any], bool]:
    """One JSON request document, or JSONL of many: (requests, single). A line that is not JSON,
    or longer than 1 MiB, stays in its place as None (answered with an INVALID_REQUEST)."""
    from featureplane.online.admission import BadLine, read_lines

    with _open_input(source) as handle:
        try:
            head = handle.read(MAX_REQUEST_BYTES + 1)
        except IsADirectoryError:
            raise TerminalError("INPUT_UNREADABLE", f"{source!r} is a directory, not a file") from None
        if len(head) <= MAX_REQUEST_BYTES:
            try:
                return [json.loads(head.decode("utf-8"))], True
            except (ValueError, RecursionError):
                pass
        requests: list[Any] = []
        for line in read_lines(_Prefixed(head, handle), MAX_REQUEST_BYTES):
            if isinstance(line, BadLine):
                requests.append(None)
            elif line.strip():
                try:
                    requests.append(json.loads(line))
                except (ValueError, RecursionError):
                    requests.append(None)
        return requests, False


class _Prefixed:
    """`readline` over bytes already read followed by the rest of a stream (stdin cannot seek back)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        import io

        self._head = io.BytesIO(head)
        self._rest = rest

    def readline(self, limit: int = -1) -> bytes:
        line = self._head.readline(limit)
        if line.endswith(b"\n") or (limit > 0 and len(line) >= limit):
            return line
        return line + self._rest.readline(limit - len(line) if limit > 0 else -1)


def cmd_get_features(args: argparse.Namespace) -> int:
    from featureplane.online.serving import FeatureServer
    from featureplane.online.snapshot_store import flush_outbox
    from featureplane.runtime.app import App

    requests, single = _read_requests(args.request)
    app = App()
    server = FeatureServer(app.db, app.bus, app.registry)
    ok = True
    try:
        for request in requests:
            response = server.get_features(request)
            ok = ok and response["kind"] == "get_features_response"
            sys.stdout.write(json.dumps(response, sort_keys=True, indent=2 if single else None) + "\n")
    finally:
        server.close()
    with contextlib.suppress(FpError):  # responses are durable in the outbox; the next flush persists them
        flush_outbox(app.db, app.store, app.lake)
    return EXIT_OK if ok else EXIT_PARTIAL


def cmd_snapshot_get(args: argparse.Namespace) -> int:
    from featureplane.online.snapshot_store import get_snapshot
    from featureplane.runtime.app import App

    app = App()
    _print_json(get_snapshot(app.db, app.store, args.hash))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from featureplane.online.health import health_report
    from featureplane.runtime.app import App

    app = App()
    report = health_report(app)
    _print_json(report)
    return {"GREEN": EXIT_OK, "AMBER": 1, "RED": 2}[report["status"]]


def cmd_ofs_build(args: argparse.Namespace) -> int:
    from featureplane.offline.ofs import run_intent
    from featureplane.runtime.app import App

    app = App()
    app.init()
    text = sys.stdin.read() if args.intent == "-" else Path(args.intent).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        from featureplane.offline.intents import IntentRejected

        raise IntentRejected("INTENT_MALFORMED", "the intent file is not JSON") from None
    from featureplane.lake.audit import export_audit

    with _Progress("dataset build") as bar:
        try:
            result = run_intent(app, raw, bar.step)
            if "row_count" in result:
                bar.summary({"rows": result["row_count"]})
            _print_json(result)
        finally:
            export_audit(app.db, app.lake)
    return 0


class _Progress:
    """A rich progress bar on stderr for long jobs, then a one-line JSON summary there (rate and peak
    memory); stdout keeps only the result JSON."""

    def __init__(self, what: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.what = what
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=True)
        self.task = self.bar.add_task(what, total=None)
        self.started = time.perf_counter()
        self.done = 0
        self.extra: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def total(self, count: int) -> None:
        self.bar.update(self.task, total=count)

    def advance(self, count: int) -> None:
        self.done += count
        self.bar.update(self.task, advance=count)

    def step(self, total: int, name: str) -> None:
        """run_intent's reports: the step count first (name ""), then each finished step."""
        if not name:
            self.total(total)
            return
        self.advance(1)
        self.bar.update(self.task, description=f"{self.what}: {name}")

    def summary(self, extra: dict[str, Any]) -> None:
        self.extra.update(extra)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
        seconds = time.perf_counter() - self.started
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        line = {"job": self.what, "seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1), **self.extra}
        for unit in ("rows", "snapshots"):
            if unit in self.extra and seconds > 0:
                line[f"{unit}_per_s"] = round(self.extra[unit] / seconds)
        self.console.print_json(json.dumps(line))


def cmd_parity(args: argparse.Namespace) -> int:
    from featureplane.offline.parity import run_parity
    from featureplane.runtime.app import App

    app = App()
    app.init()
    with _Progress("parity") as bar:
        result = run_parity(app.db, app.store, app.lake, app.registry, run_id=args.run_id, sample=args.sample,
                            seed=args.seed, on_loaded=bar.total, checked=bar.advance)
        bar.summary({"snapshots": result["checked"], "matched": result["matched"]})
    _print_json(result)
    return 0 if result["mismatched"] == 0 else 1


def cmd_sql(args: argparse.Namespace) -> int:
    from featureplane.lake.query import run_query
    from featureplane.runtime.app import App

    app = App()
    try:
        result = run_query(app.lake, app.store, args.query, allow_external=args.allow_external)
    except Exception as exc:  # duckdb's errors: report them as a JSON error, not a traceback
        import duckdb

        if not isinstance(exc, duckdb.Error):
            raise
        _print_json(_error_body("SQL_ERROR", str(exc).splitlines()[0][:500], False))
        return EXIT_CANNOT_RUN
    if args.table:
        from rich.console import Console
        from rich.table import Table

        table = Table(*result["columns"])
        for row in result["rows"]:
            table.add_row(*[json.dumps(v) if not isinstance(v, str) else v for v in row])
        Console().print(table)
    else:
        _print_json(result)
    return 0


def cmd_context_resolve(args: argparse.Namespace) -> int:
    from featureplane.online.context_store import ContextReader
    from featureplane.runtime.app import App

    answer = ContextReader(App().db).resolve(args.platform_run_id, args.run_id, args.flow_id)
    _print_json(answer)
    return 0 if answer.get("readiness") == "READY" else 1


def cmd_context_frame(args: argparse.Namespace) -> int:
    from featureplane.online.context_store import ContextReader
    from featureplane.runtime.app import App

    answer = ContextReader(App().db).fetch_frame(args.platform_run_id, args.run_id, args.merchant_id,
                                                 args.arrival_seq)
    _print_json(answer)
    return 0 if answer.get("readiness") == "READY" else 1


def cmd_archive_rebuild(args: argparse.Namespace) -> int:
    from featureplane.lake.archive import rebuild_archive
    from featureplane.runtime.app import App
    from featureplane.schemas.streams import STREAMS, stream_spec

    for stream in args.stream or []:
        stream_spec(stream)  # an unknown stream is an error before anything is rewritten
    app = App()
    app.init()
    _print_json({"archives": [rebuild_archive(app.db, app.lake, s) for s in (args.stream or sorted(STREAMS))]})
    return EXIT_OK


def cmd_bus_skip(args: argparse.Namespace) -> int:
    """Operator action: let every consumer pass one corrupt record (audited in operator_actions)."""
    import getpass
    import socket

    from featureplane.runtime.app import App
    from featureplane.schemas.streams import stream_spec

    stream_spec(args.stream)
    if not args.reason.strip():
        raise TerminalError("INVALID_REQUEST", "--reason must say why the record may be skipped")
    app = App()
    app.init()
    actor = f"{getpass.getuser()}@{socket.gethostname()}"
    with app.db.transaction() as conn:  # the audit row commits only if the skip was written
        start, end = app.bus.skip_corrupt(args.stream, args.partition, args.offset)
        detail = {"byte_start": start, "byte_end": end}
        conn.execute(
            """INSERT INTO operator_actions (action, stream, partition, "offset", detail, actor, reason)
               VALUES ('bus_skip', %s, %s, %s, %s, %s, %s)""",
            (args.stream, args.partition, args.offset, json.dumps(detail), actor, args.reason[:1000]),
        )
    _print_json({"skipped": {"stream": args.stream, "partition": args.partition, "offset": args.offset, **detail},
                 "actor": actor, "note": "every consumer now ledgers this position as CORRUPT_RECORD_SKIPPED"})
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from featureplane.runtime.app import App
    from featureplane.runtime.http_server import serve

    App().init()  # migrations and streams exist before the first worker process starts
    serve(args.host, args.port, args.workers, args.graceful_seconds)
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    from featureplane.runtime.embedded_pg import EmbeddedServer
    from featureplane.runtime.settings import EmbeddedPostgres, load_settings

    settings = load_settings()
    if not isinstance(settings.postgres, EmbeddedPostgres):
        _print_json({"stopped": False, "note": "FP_PG_DSN points at an external Postgres; nothing to stop here"})
        return EXIT_OK
    stopped = EmbeddedServer(settings.postgres.data_dir).stop()
    _print_json({"stopped": stopped, "embedded_postgres": "stopped" if stopped else "was not running"})
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from featureplane.runtime.embedded_pg import EmbeddedServer
    from featureplane.runtime.settings import EmbeddedPostgres, load_settings

    settings = load_settings()
    if not isinstance(settings.postgres, EmbeddedPostgres):
        _print_json({"embedded_postgres": "not used (FP_PG_DSN is set)", "home": str(settings.home)})
        return EXIT_OK
    server = EmbeddedServer(settings.postgres.data_dir)
    running = server.running()
    _print_json({"embedded_postgres": "running" if running else "stopped", "home": str(settings.home),
                 "data_dir": str(server.data_dir), "socket_dir": str(server.socket_dir) if running else None,
                 "stop_with": "fp down" if running else None})
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from featureplane.runtime.app import App
    from featureplane.runtime.report_page import write_report

    app = App()
    app.init()
    where, data, size = write_report(app, Path(args.out) if args.out else None, dataset=args.dataset,
                                     run_id=args.run_id)
    _print_json({"report": str(where), "bytes": size, "partitions": len(data.progress),
                 "snapshots": data.snapshots, "parity_runs": len(data.parity), "dataset": data.dataset_id,
                 "failure_reasons": len(data.failures)})
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from featureplane.runtime.demo import run_demo

    return run_demo(transactions=args.transactions, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fp", description="featureplane: online and offline feature planes for fraud decisions.",
        epilog="Environment: FP_HOME (default ./.fp: state, the embedded Postgres, bus and object store), "
               "FP_PROFILE (local | parity), FP_PG_DSN (an external Postgres; required by parity), "
               "FP_S3_BUCKET, FP_S3_ENDPOINT_URL, FP_KINESIS_ENDPOINT_URL (parity; endpoints only to point "
               "at moto/LocalStack/MinIO), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or "
               "AWS_PROFILE, AWS_DEFAULT_REGION, FP_LEASE_SECONDS (default 30: how long a dead worker's "
               "partitions stay leased). Testing only: FP_CRASH_AT, FP_PAUSE_AT (fault injection), "
               "FP_SERVE_BASELINE_BYTES (the transport baseline of bench/serve_http.py). Errors print a JSON "
               "error_response; exit 0 success, 1 partial, 2 could not run.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create or migrate everything the profile needs (idempotent)")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("publish", help="admit a JSONL file of events onto a stream; prints JSON counts")
    p.add_argument("--stream", required=True, help="stream name, e.g. fp.bus.traffic.fraud.v1")
    p.add_argument("file", help="JSONL file of envelopes, or - for stdin")
    p.set_defaults(handler=cmd_publish)

    p = sub.add_parser("simulate", help="deterministic fraud-like traffic, context and labels for a run")
    p.add_argument("--transactions", type=int, default=500, help="number of transactions (default 500)")
    p.add_argument("--seed", type=int, default=7, help="seed; the same seed gives the same events")
    p.add_argument("--out", type=Path, default=None, help="also write one JSONL file per stream here")
    p.add_argument("--no-publish", action="store_true", help="only write files, do not publish")
    p.add_argument("--duplicates", type=float, default=0.0,
                   help="fraction of admitted events put on the bus twice (producer retries)")
    p.add_argument("--disorder", type=float, default=0.0,
                   help="fraction of events moved out of event-time order before publishing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("worker", help="run the OFP, context and archive workers")
    p.add_argument("--until-idle", action="store_true", help="exit 0 once every stream is caught up")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="pause between polls when not --until-idle")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="with --until-idle: exit non-zero (WORKER_TIMEOUT) if not idle after this many seconds; "
                        "a partition leased by a dead worker is taken over once its lease lapses")
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("get-features", help="serve one JSON request or a JSONL file of requests")
    p.add_argument("--request", required=True, help="request file (JSON or JSONL), or - for stdin")
    p.set_defaults(handler=cmd_get_features)

    p = sub.add_parser("snapshot", help="persisted snapshots")
    snap = p.add_subparsers(dest="snapshot_command", required=True, metavar="SUBCOMMAND")
    q = snap.add_parser("get", help="fetch a persisted snapshot by hash; prints the stored response JSON")
    q.add_argument("hash", help="sha256:<64 hex digits>")
    q.set_defaults(handler=cmd_snapshot_get)

    p = sub.add_parser("health", help="GREEN/AMBER/RED per component, counters and lag (JSON)")
    p.set_defaults(handler=cmd_health)

    p = sub.add_parser("context", help="join-plane reads (context store)")
    ctx = p.add_subparsers(dest="context_command", required=True, metavar="SUBCOMMAND")
    q = ctx.add_parser("resolve", help="resolve a flow_id to its join frame; JSON answer, exit 1 when not READY")
    q.add_argument("--run-id", required=True)
    q.add_argument("--platform-run-id", required=True)
    q.add_argument("--flow-id", required=True)
    q.set_defaults(handler=cmd_context_resolve)
    q = ctx.add_parser("frame", help="fetch a join frame by key; JSON answer, exit 1 when not READY")
    q.add_argument("--run-id", required=True)
    q.add_argument("--platform-run-id", required=True)
    q.add_argument("--merchant-id", required=True)
    q.add_argument("--arrival-seq", type=int, required=True)
    q.set_defaults(handler=cmd_context_frame)

    p = sub.add_parser("ofs", help="offline feature store jobs")
    ofs = p.add_subparsers(dest="ofs_command", required=True, metavar="SUBCOMMAND")
    q = ofs.add_parser("build", help="run a BuildIntent (dataset_build, parity_rebuild); prints the manifest JSON")
    q.add_argument("--intent", required=True, help="BuildIntent JSON file, or - for stdin")
    q.set_defaults(handler=cmd_ofs_build)

    p = sub.add_parser("parity", help="rebuild served snapshots from the archive and compare hashes (JSON)")
    p.add_argument("--run-id", default=None, help="only snapshots of this run_id pin")
    p.add_argument("--sample", type=int, default=None, help="check a seeded sample of N snapshots")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.set_defaults(handler=cmd_parity)

    p = sub.add_parser("sql", help="duckdb over the lakes (archive_*, snapshots, snapshot_features, "
                                   "parity_results, apply_failures, run_events, datasets, dataset_manifests)")
    p.add_argument("query", help="one SQL statement")
    p.add_argument("--allow-external", action="store_true",
                   help="lift the lockdown: let the query read or write files outside the lakes (local analysts)")
    p.add_argument("--table", action="store_true", help="print a table instead of JSON {columns, rows}")
    p.set_defaults(handler=cmd_sql)

    p = sub.add_parser("serve", help="the HTTP serving surface: /v1/get-features, /v1/snapshots/{hash}, "
                                     "/v1/feature-groups, /healthz, /readyz, /metrics")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--graceful-seconds", type=float, default=30.0,
                   help="on SIGTERM, how long in-flight requests may take to finish")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("down", help="stop the embedded Postgres of this FP_HOME (a no-op when none runs)")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser("status", help="whether the embedded Postgres of this FP_HOME runs (JSON)")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("archive", help="the Delta archive of the bus")
    arch = p.add_subparsers(dest="archive_command", required=True, metavar="SUBCOMMAND")
    q = arch.add_parser("rebuild", help="rewrite archive tables written before the current layout (typed "
                                        "columns, decimal offsets) in it, one commit each; records, positions "
                                        "and progress kept (JSON); run with the workers stopped")
    q.add_argument("--stream", action="append", help="a stream to rebuild (repeatable; default: every stream)")
    q.set_defaults(handler=cmd_archive_rebuild)

    p = sub.add_parser("bus", help="operator actions on the event bus")
    bus = p.add_subparsers(dest="bus_command", required=True, metavar="SUBCOMMAND")
    q = bus.add_parser("skip", help="let consumers pass one corrupt record (see `fp health` for its byte range); "
                                    "audited, and refused when the record is intact")
    q.add_argument("--stream", required=True)
    q.add_argument("--partition", type=int, required=True)
    q.add_argument("--offset", type=int, required=True)
    q.add_argument("--reason", required=True, help="why it is safe to skip (kept in the audit)")
    q.set_defaults(handler=cmd_bus_skip)

    p = sub.add_parser("report", help="one self-contained HTML page with plots: lag and watermark age per "
                                      "partition, freshness per group, parity, apply failures, a dataset's "
                                      "features offline vs served; prints JSON with its path")
    p.add_argument("--out", help="where to write the page (default FP_HOME/reports/report-<time>.html)")
    p.add_argument("--dataset", help="the manifest id of the dataset to compare (default: the newest built)")
    p.add_argument("--run-id", help="only this run's snapshots and parity results")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("demo", help="the main job end to end on the embedded default; readable summary")
    p.add_argument("--transactions", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FpError as exc:
        _print_json(_error_body(exc.reason_code, exc.message, exc.retryable))
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        _print_json(_error_body("INTERRUPTED", "interrupted", True))
        return 130
    except Exception as exc:  # no traceback reaches a user: a JSON error, the frames to a log file
        where = _log_internal_error(exc)
        _print_json(_error_body("INTERNAL_ERROR", f"unexpected {type(exc).__name__}; details in {where}", False))
        return EXIT_CANNOT_RUN


def _log_internal_error(exc: BaseException) -> str:
    """Append the failing frames (file, line, code; no values or messages, which may carry data or
    credentials) to FP_HOME/logs/errors.log; return where."""
    import os
    import time
    import traceback

    home = Path(os.environ.get("FP_HOME", "./.fp")).resolve()
    path = home / "logs" / "errors.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = "".join(traceback.format_tb(exc.__traceback__))
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {type(exc).__name__}\n{frames}\n")
    except OSError:
        return "(no log: FP_HOME is not writable)"
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
