"""Object-store faults during the snapshot flush, and a planted secret searched for everywhere a
run leaves something behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

from featureplane.online.serving import FeatureServer
from featureplane.online.snapshot_store import flush_outbox
from featureplane.pipelines.snapshot import snapshot_hash
from featureplane.runtime.simulate import SimulationPlan, request_mix
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers


class FaultyStore:
    """Wraps an object store: the scripted puts fail before writing, time out, or write and then
    lose the reply (the caller sees an error although the object landed)."""

    def __init__(self, inner, script: list[str]) -> None:
        self.inner = inner
        self.script = script
        self.puts = 0

    def put(self, key: str, data: bytes) -> str:
        self.puts += 1
        fault = self.script.pop(0) if self.script else "ok"
        if fault == "error":
            raise OSError("injected: 503 slow down")
        if fault == "timeout":
            raise TimeoutError("injected: read timeout")
        ref = self.inner.put(key, data)
        if fault == "lost_reply":
            raise ConnectionResetError("injected: reply lost after the write")
        return ref

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_flush_survives_store_errors_timeouts_and_lost_replies(app):
    plan = SimulationPlan(seed=9, transactions=200)
    run_simulation(transactions=200, seed=9, out=None, publish=True, progress=False, app=app)
    run_workers(app, until_idle=True)
    server = FeatureServer(app.db, app.bus, app.registry)
    try:
        served = [server.get_features(r)["snapshot"]["feature_snapshot_hash"] for r in request_mix(plan, 30, seed=1)]
    finally:
        server.close()
    store = FaultyStore(app.store, ["error", "timeout", "lost_reply", "ok", "lost_reply", "error"])
    attempts = 0
    while True:
        attempts += 1
        try:
            flush_outbox(app.db, store, app.lake, batch=8)
        except Exception:
            assert attempts < 20
            continue
        with app.db.transaction() as conn:
            pending = conn.execute("SELECT count(*) FROM snapshot_outbox WHERE flushed_at IS NULL").fetchone()[0]
        if pending == 0:
            break
    distinct = set(served)
    objects = [k for k in app.store.list("snapshots/") if k.endswith(".json")]
    assert len(objects) == len(distinct)  # exactly one object per hash
    for key in objects:
        body = json.loads(app.store.get(key))
        assert snapshot_hash(body) == body["snapshot"]["feature_snapshot_hash"]
        assert key.endswith(body["snapshot"]["feature_snapshot_hash"].removeprefix("sha256:") + ".json")
    assert {json.loads(app.store.get(k))["snapshot"]["feature_snapshot_hash"] for k in objects} == distinct
    lake = app.lake.read("snapshots", columns=["snapshot_hash"])
    assert sorted(lake["snapshot_hash"].to_pylist()) == sorted(distinct)  # indexed once each
    with app.db.transaction() as conn:
        failures = dict(conn.execute("SELECT name, value FROM serve_counters").fetchall())["snapshot_failures"]
        indexed = conn.execute("SELECT count(*) FROM snapshot_index").fetchone()[0]
    assert failures > 0 and indexed == len(distinct)


def test_a_planted_secret_reaches_no_log_error_object_commit_or_audit_row(app, fp_home, tmp_path):
    """The secret rides in the environment of every command (as credentials do); after a whole run
    with errors provoked on purpose it appears nowhere under FP_HOME, nor in any output."""
    from tests.helpers import run_fp

    planted = "PLANTED-s3cr3t-9f2c71"
    env = {"AWS_SECRET_ACCESS_KEY": planted, "AWS_ACCESS_KEY_ID": "AKIA" + planted, "FP_SECRET_PROBE": planted}
    events = tmp_path / "events.jsonl"
    run_simulation(transactions=60, seed=3, out=tmp_path / "sim", publish=False, progress=False)
    outputs = []
    for name in sorted(os.listdir(tmp_path / "sim")):
        stream = name.removesuffix(".jsonl")
        outputs.append(run_fp(app, fp_home, "publish", "--stream", stream, str(tmp_path / "sim" / name), env=env))
    events.write_text('{"event_id": "x"}\nnot json\n')
    outputs.append(run_fp(app, fp_home, "publish", "--stream", "fp.bus.traffic.fraud.v1", str(events), env=env))
    outputs.append(run_fp(app, fp_home, "worker", "--until-idle", env=env))
    plan = SimulationPlan(seed=3, transactions=60)
    requests = "\n".join(json.dumps(r) for r in request_mix(plan, 5, seed=2)) + "\n{broken\n"
    outputs.append(run_fp(app, fp_home, "get-features", "--request", "-", stdin=requests.encode(), env=env))
    outputs.append(run_fp(app, fp_home, "worker", "--until-idle", env=env))  # flush + audit export
    outputs.append(run_fp(app, fp_home, "parity", env=env))
    outputs.append(run_fp(app, fp_home, "health", env=env))
    outputs.append(run_fp(app, fp_home, "sql", "SELECT * FROM read_text('/etc/hostname')", env=env))
    bad_dsn = f"postgresql://fp:{planted}@127.0.0.1:9/fp?connect_timeout=1"
    outputs.append(run_fp(app, fp_home, "health", env={**env, "FP_PG_DSN": bad_dsn}))
    outputs.append(run_fp(app, fp_home, "get-features", "--request", "-", stdin=b"{}",
                          env={**env, "FP_PG_DSN": bad_dsn}))
    # parity, health GREEN, sql refused, health with Postgres unreachable, an invalid request
    assert [code for code, _, _ in outputs[-5:]] == [0, 0, 2, 2, 1]
    for _, out, err in outputs:
        assert planted not in out and planted not in err and "Traceback" not in err
    files = [p for p in Path(fp_home).rglob("*") if p.is_file() and "pg" not in p.relative_to(fp_home).parts[0]]
    assert any("_delta_log" in str(p) for p in files) and any("snapshots" in str(p) for p in files)
    for path in files:  # logs, objects, Delta data and commit metadata, the audit lake
        assert planted.encode() not in path.read_bytes(), path
    with app.db.transaction() as conn:
        for table in ("apply_failures", "admission_quarantine", "consumer_errors", "snapshot_outbox"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            assert planted not in repr(rows), table
