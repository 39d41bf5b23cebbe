"""The context store: join frames and flow bindings, fail-closed, deterministic on replay."""

from __future__ import annotations

import json
import random

import pytest

from featureplane.online.admission import Publisher
from featureplane.online.context_store import ContextReader, ContextWorker, context_digest, rebuild_context
from featureplane.online.health import health_report
from featureplane.pipelines.errors import TerminalError
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers
from featureplane.schemas.streams import ARRIVAL_ENTITIES, ARRIVAL_EVENTS, CONTEXT_STREAMS, FLOW_ANCHOR
from tests.conftest import fresh_database
from tests.helpers import PINS, T0, kill_9_repeatedly

RUN = "prun_t"


def envelope(event_type: str, event_id: str, payload: dict, *, pins=None, run=RUN, ts=T0) -> dict:
    from featureplane.pipelines.timefmt import format_ts

    return {"event_id": event_id, "event_type": event_type, "schema_version": "v1", "ts_utc": format_ts(ts),
            "context_pins": pins or PINS, "seed": 1, "platform_run_id": run, "payload": payload}


def anchor(flow: str, merchant: str = "m1", seq: int = 0, **kw) -> dict:
    return envelope("flow_anchor", kw.pop("event_id", f"fa_{flow}_{merchant}_{seq}"),
                    {"flow_id": flow, "merchant_id": f"e_merchant_{merchant}", "arrival_seq": seq}, **kw)


def arrival(merchant: str = "m1", seq: int = 0, channel: str = "ecom", **kw) -> dict:
    return envelope("arrival_event", kw.pop("event_id", f"ae_{merchant}_{seq}_{channel}"),
                    {"merchant_id": f"e_merchant_{merchant}", "arrival_seq": seq, "channel": channel}, **kw)


def entities(merchant: str = "m1", seq: int = 0, account: str = "a1", **kw) -> dict:
    return envelope("arrival_entities", kw.pop("event_id", f"aen_{merchant}_{seq}_{account}"),
                    {"merchant_id": f"e_merchant_{merchant}", "arrival_seq": seq, "account_id": f"e_account_{account}",
                     "card_id": "e_card_c1", "customer_id": "e_customer_u1", "device_id": None}, **kw)


def publish(app, stream: str, events: list[dict]) -> None:
    Publisher(app.db, app.bus).publish(stream, [json.dumps(e) for e in events], "test")


def apply(app) -> None:
    ContextWorker(app.db, app.bus, batch_size=3).run_until_idle()


def test_anchor_before_its_frame_is_explicitly_not_ready_until_the_context_arrives(app):
    reader = ContextReader(app.db)
    publish(app, FLOW_ANCHOR, [anchor("f1")])
    apply(app)
    answer = reader.resolve(RUN, PINS["run_id"], "f1")
    assert answer["readiness"] == "NOT_READY"
    assert answer["reason_codes"] == ["MISSING_ARRIVAL_EVENT", "MISSING_ENTITIES"]
    assert answer["join_frame"] is None and answer["context_pins"]["run_id"] == PINS["run_id"]
    assert [r["role"] for r in answer["evidence_refs"]] == ["flow_anchor"]
    publish(app, ARRIVAL_EVENTS, [arrival()])
    apply(app)
    assert reader.resolve(RUN, PINS["run_id"], "f1")["reason_codes"] == ["MISSING_ENTITIES"]
    publish(app, ARRIVAL_ENTITIES, [entities()])
    apply(app)
    answer = reader.resolve(RUN, PINS["run_id"], "f1")
    assert answer["readiness"] == "READY" and answer["reason_codes"] == []
    assert answer["join_frame"]["arrival_event"]["channel"] == "ecom"
    assert answer["join_frame"]["arrival_entities"]["account_id"] == "e_account_a1"
    assert {(r["role"], r["stream"], r["offset"]) for r in answer["evidence_refs"]} == {
        ("flow_anchor", FLOW_ANCHOR, 0), ("arrival_event", ARRIVAL_EVENTS, 0),
        ("arrival_entities", ARRIVAL_ENTITIES, 0)}


def test_unknown_flow_and_frame_are_missing_never_fabricated(app):
    reader = ContextReader(app.db)
    publish(app, ARRIVAL_EVENTS, [arrival()])
    apply(app)
    answer = reader.resolve(RUN, PINS["run_id"], "nope")
    assert (answer["readiness"], answer["reason_codes"], answer["join_frame"]) == (
        "NOT_READY", ["MISSING_BINDING"], None)
    frame = reader.fetch_frame(RUN, PINS["run_id"], "e_merchant_m1", 0)
    assert frame["reason_codes"] == ["MISSING_ENTITIES"] and frame["join_frame"]["arrival_entities"] is None
    other_run = reader.fetch_frame(RUN, "another_run", "e_merchant_m1", 0)  # no cross-run reads
    assert other_run["join_frame"] is None
    assert reader.resolve("bad/run", "r", "f")["error_code"] == "INVALID_REQUEST"


def test_same_binding_is_a_no_op_and_a_different_one_is_an_anomaly_first_kept(app):
    publish(app, ARRIVAL_EVENTS, [arrival(seq=0), arrival(seq=1)])
    publish(app, ARRIVAL_ENTITIES, [entities(seq=0), entities(seq=1)])
    first = anchor("f1", seq=0)
    publish(app, FLOW_ANCHOR, [first])
    app.bus.append(FLOW_ANCHOR, [("f1", json.dumps(first).encode())])  # a bus-level duplicate
    publish(app, FLOW_ANCHOR, [anchor("f1", seq=1, event_id="fa_retry")])  # same flow, other frame
    apply(app)
    answer = ContextReader(app.db).resolve(RUN, PINS["run_id"], "f1")
    assert answer["join_frame_key"]["arrival_seq"] == 0  # the first binding is kept
    assert answer["readiness"] == "NOT_READY" and answer["reason_codes"] == ["BINDING_CONFLICT"]
    assert len(answer["conflicts"]) == 1
    with app.db.transaction() as conn:
        kinds = conn.execute("SELECT kind, subject FROM context_anomalies").fetchall()
        dupes = conn.execute("SELECT sum(duplicates) FROM consumer_counters WHERE consumer = 'context'").fetchone()
    assert kinds == [("BINDING_CONFLICT", "f1")] and dupes[0] == 1
    report = health_report(app)["components"]["context"]
    assert report["binding_conflicts"] == 1 and report["join_misses"] == 1 and report["status"] == "RED"


def test_conflict_storm_keeps_first_bindings_and_replays_to_the_same_digest(app, pg_server):
    rng = random.Random(9)
    storm = []
    for n in range(300):
        flow = f"f{n % 20}"
        storm.append(anchor(flow, merchant=f"m{rng.randrange(3)}", seq=rng.randrange(4), event_id=f"fa_{n}"))
    publish(app, FLOW_ANCHOR, storm)
    ContextWorker(app.db, app.bus, batch_size=17).run_until_idle()
    with app.db.transaction() as conn:
        bindings = dict(conn.execute("SELECT flow_id, anchor_ref->>'offset' FROM flow_bindings").fetchall())
        anomalies = conn.execute("SELECT count(*) FROM context_anomalies").fetchone()[0]
        live = context_digest(conn, RUN)
    # the kept binding of each flow is its first anchor on the (single, flow-keyed) partition
    positions: dict[str, tuple[int, int]] = {}
    for partition in app.bus.partitions(FLOW_ANCHOR):
        for record in app.bus.read(FLOW_ANCHOR, partition, 0, 10_000).records:
            flow = json.loads(record.value)["payload"]["flow_id"]
            positions.setdefault(flow, (record.partition, record.offset))
    assert {f: int(o) for f, o in bindings.items()} == {f: o for f, (_, o) in positions.items()}
    assert anomalies == len(storm) - len(positions) - _same_as_first(storm)
    replica = fresh_database(pg_server)
    basis = {s: dict(app.bus.end_offsets(s)) for s in CONTEXT_STREAMS}
    rebuild_context(replica, app.bus, basis, batch_size=5)
    with replica.transaction() as conn:
        assert context_digest(conn, RUN) == live


def _same_as_first(storm: list[dict]) -> int:
    """Anchors that repeat their flow's first binding exactly (no-ops, not anomalies)."""
    first: dict[str, tuple] = {}
    same = 0
    for e in storm:
        p = e["payload"]
        key = (p["merchant_id"], p["arrival_seq"])
        if p["flow_id"] not in first:
            first[p["flow_id"]] = key
        elif first[p["flow_id"]] == key:
            same += 1
    return same


def test_rebuild_needs_an_explicit_basis_and_an_empty_target(app, pg_server):
    publish(app, FLOW_ANCHOR, [anchor("f1")])
    apply(app)
    with pytest.raises(TerminalError) as exc:
        rebuild_context(fresh_database(pg_server), app.bus, None)
    assert exc.value.reason_code == "REBUILD_BASIS_REQUIRED"
    with pytest.raises(TerminalError) as exc:
        rebuild_context(app.db, app.bus, {FLOW_ANCHOR: {0: 1}})
    assert exc.value.reason_code == "REBUILD_TARGET_NOT_EMPTY"


def test_simulated_run_replays_identically_and_survives_kill_9(app, fp_home, pg_server):
    run_simulation(transactions=800, seed=4, out=None, publish=True, duplicates=0.05, disorder=0.3, progress=False,
                   app=app)
    app.bus.append(ARRIVAL_EVENTS, [("x", b"not json")])
    script = ("from featureplane.runtime.app import App\n"
              "from featureplane.online.context_store import ContextWorker\napp = App()\n"
              "w = ContextWorker(app.db, app.bus, batch_size=23, owner='crashy')\nprint('ready', flush=True)\n"
              "while True:\n    w.run_until_idle()\n")
    kill_9_repeatedly(app, fp_home, script, (0.4, 1.0))
    ContextWorker(app.db, app.bus, owner="crashy").run_until_idle()
    total = sum(sum((app.bus.end_offsets(s) or {}).values()) for s in CONTEXT_STREAMS)
    with app.db.transaction() as conn:
        applied, duplicates, failures = conn.execute(
            "SELECT sum(applied), sum(duplicates), sum(failures) FROM consumer_counters WHERE consumer = 'context'"
        ).fetchone()
        live = context_digest(conn, "prun_sim_000004")
        frames = conn.execute("SELECT count(*) FROM join_frames WHERE arrival_event IS NOT NULL "
                              "AND entities IS NOT NULL").fetchone()[0]
    assert (applied + duplicates + failures, failures) == (total, 1)  # every record counted exactly once
    assert frames == 800 and applied == 3 * 800  # each frame gets two payloads, each flow one binding
    replica = fresh_database(pg_server)
    rebuild_context(replica, app.bus, {s: dict(app.bus.end_offsets(s)) for s in CONTEXT_STREAMS}, batch_size=101)
    with replica.transaction() as conn:
        assert context_digest(conn, "prun_sim_000004") == live
    reader = ContextReader(app.db)
    ready = [reader.resolve("prun_sim_000004", "run_sim_000004", f"flow_4_{n:09d}")["readiness"]
             for n in range(1, 801, 40)]
    assert set(ready) == {"READY"}


def test_workers_write_a_reconciliation_artifact_per_run(app):
    from featureplane.lake.query import run_query

    publish(app, FLOW_ANCHOR, [anchor("f1"), anchor("f1", seq=3, event_id="conflict")])
    publish(app, ARRIVAL_EVENTS, [arrival()])
    run_workers(app, until_idle=True)
    rows = run_query(app.lake, app.store, "SELECT platform_run_id, bindings, unresolved_anomalies, artifact "
                                          "FROM context_reconciliation")["rows"]
    assert [r[:3] for r in rows] == [[RUN, 1, 1]]
    artifact = json.loads(rows[0][3])
    assert artifact["applied_basis"][FLOW_ANCHOR] == {str(p): o for p, o in app.bus.end_offsets(FLOW_ANCHOR).items()}
    assert artifact["unresolved_anomalies"][0]["kind"] == "BINDING_CONFLICT"
