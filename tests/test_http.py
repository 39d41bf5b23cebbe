"""`fp serve` (SPEC §9), driven over real HTTP on 127.0.0.1: routes, status codes, the 1 MiB limit,
metrics, readiness, the same hash as in process, and a graceful shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from featureplane.pipelines.snapshot import snapshot_hash
from featureplane.runtime.simulate import SimulationPlan, request_mix
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers
from tests.helpers import serve

REPO = Path(__file__).resolve().parent.parent


def _call(base: str, path: str, body: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(base + path, data=body, method=method or ("POST" if body is not None else "GET"),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture()
def served(app, fp_home):
    """`fp serve` with two worker processes on a free port, on the test's database and FP_HOME."""
    plan = SimulationPlan(seed=8, transactions=300)
    run_simulation(transactions=300, seed=8, out=None, publish=True, progress=False, app=app)
    run_workers(app, until_idle=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    scratch = fp_home / "server-tmp"  # its temporary files, looked at once it has stopped
    scratch.mkdir()
    env = {**os.environ, "FP_PG_DSN": app.db.dsn.reveal(), "FP_HOME": str(fp_home), "PYTHONPATH": str(REPO),
           "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "featureplane.runtime.cli", "serve", "--port", str(port),
                             "--workers", "2", "--graceful-seconds", "10"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if _call(base, "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"fp serve did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    try:
        yield base, plan, proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server and its worker processes (its own session), SIGKILL after 30 s: the test
    suite leaves nothing running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_get_features_over_http_has_the_in_process_hash(app, served):
    base, plan, _ = served
    for request in request_mix(plan, 6, seed=2):
        status, body = _call(base, "/v1/get-features", json.dumps(request).encode())
        assert status == 200
        response = json.loads(body)
        assert snapshot_hash(response) == response["snapshot"]["feature_snapshot_hash"]
        assert response == serve(app, request)  # the same object, hash included
        status, body = _call(base, "/v1/snapshots/" + response["snapshot"]["feature_snapshot_hash"])
        assert status == 200 and json.loads(body) == response


def test_errors_have_their_status_codes_and_the_error_shape(served):
    base, plan, _ = served
    request = request_mix(plan, 1, seed=3)[0]
    cases = [
        ("/v1/get-features", b"{not json", 400, "INVALID_REQUEST"),
        ("/v1/get-features", json.dumps({**request, "feature_keys": []}).encode(), 400, "INVALID_REQUEST"),
        ("/v1/get-features", json.dumps({**request, "context_pins": {**request["context_pins"], "run_id": "nope"}})
         .encode(), 404, "NOT_FOUND"),
        ("/v1/snapshots/sha256:" + "0" * 64, None, 404, "NOT_FOUND"),
        ("/v1/snapshots/not-a-hash", None, 400, "INVALID_REQUEST"),
    ]
    for path, body, status, code in cases:
        got, raw = _call(base, path, body)
        reply = json.loads(raw)
        assert (got, reply["kind"], reply["error_code"]) == (status, "error_response", code), (path, reply)
        assert reply["contract_version"] == "ofp_public_contracts_v0" and "retryable" in reply
    # a body over 1 MiB is refused from its declared length, before it is read: only the headers are
    # sent (a client still writing the body would race the server closing the connection)
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/get-features HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % ((1 << 20) + 1))
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    reply = json.loads(payload)
    assert head.startswith(b"HTTP/1.1 413") and reply["error_code"] == "PAYLOAD_TOO_LARGE"


def test_registry_readiness_and_metrics(app, served):
    base, plan, _ = served
    status, body = _call(base, "/v1/feature-groups")
    groups = json.loads(body)["feature_groups"]
    assert status == 200 and {(g["group_name"], g["group_version"]) for g in groups} == set(app.registry.groups)
    velocity = next(g for g in groups if (g["group_name"], g["group_version"]) == ("txn_velocity", "2.0"))
    assert velocity["key_type"] == "account" and velocity["ttl_seconds"] == 600
    assert velocity["definition_digest"] == app.registry.get("txn_velocity", "2.0").digest
    assert {"name": "txn_count_5m", "agg": "count", "field": None, "window": "5m", "where": None} \
        in velocity["features"]
    status, body = _call(base, "/readyz")
    assert status == 200 and json.loads(body)["status"] in ("GREEN", "AMBER")
    _call(base, "/v1/get-features", json.dumps(request_mix(plan, 1, seed=4)[0]).encode())
    status, body = _call(base, "/metrics")
    text = body.decode()
    assert status == 200
    for name in ("fp_events_applied_total", "fp_duplicates_total", "fp_apply_failures_total",
                 "fp_snapshots_built_total", "fp_snapshot_failures_total", "fp_stale_groups_ratio",
                 "fp_no_data_groups_ratio", "fp_lag_records", "fp_watermark_age_seconds"):
        assert f"# TYPE {name}" in text, name
    assert 'fp_events_applied_total{consumer="ofp"} 300.0' in text
    assert 'fp_http_request_seconds_count{route="/v1/get-features",status="200"}' in text


def test_readyz_is_503_when_red(app, served):
    base, _, _ = served
    with app.db.transaction() as conn:  # a crash loop: RED
        conn.execute("""INSERT INTO consumer_errors (consumer, stream, partition, reason_code, detail, in_a_row)
                        VALUES ('ofp', 'fp.bus.traffic.fraud.v1', 0, 'STORAGE_REJECTED', 'x', 5)""")
    status, body = _call(base, "/readyz")
    assert status == 503 and json.loads(body)["status"] == "RED"


def test_sigterm_lets_in_flight_requests_finish(served, fp_home):
    base, plan, proc = served
    import threading

    results: list[int] = []
    requests = request_mix(plan, 20, seed=5)

    def client() -> None:
        for request in requests:
            try:
                results.append(_call(base, "/v1/get-features", json.dumps(request).encode())[0])
            except OSError:
                results.append(-1)  # refused once the server stopped listening: never accepted

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert proc.wait(timeout=60) == 0
    assert results and all(code in (200, -1) for code in results)  # none cut off mid-answer
    assert results[0] == 200
    deadline = time.monotonic() + 15  # and its worker processes are gone with it
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(proc.pid)
    assert not list((fp_home / "server-tmp").iterdir())  # nor the workers' shared metric files


def test_workers_stop_when_their_supervisor_is_killed(served):
    """`kill -9` of `fp serve` leaves no worker serving on unseen: each notices and stops."""
    _, _, proc = served
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(proc.pid)
