"""Hostile but fair inputs (SPEC §2, §4, §8): nothing stops a consumer, nothing is lost, health tells
the truth, and every user-reachable failure is a JSON error_response with a stable code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from featureplane.online.admission import Publisher, encode_event
from featureplane.online.checkpoints import Lease, apply_isolating
from featureplane.online.serving import FeatureServer
from featureplane.online.snapshot_store import flush_outbox
from featureplane.runtime.workers import WorkerTimeout, run_workers
from featureplane.schemas.streams import TRAFFIC
from tests.helpers import PINS, T0, S, lines, request, run_fp, serve, txn

ERROR_KEYS = {"kind", "contract_version", "error_code", "message", "retryable"}


def _error(stdout: str) -> dict:
    body = json.loads(stdout)
    assert body["kind"] == "error_response" and set(body) >= ERROR_KEYS, body
    return body


def _quarantine(app) -> list[tuple[int, str, str]]:
    with app.db.transaction() as conn:
        return [(int(n), c, r) for n, c, r in conn.execute(
            "SELECT line_no, reason_code, raw_line FROM admission_quarantine ORDER BY line_no")]


def _failures(app, consumer: str = "ofp") -> list[tuple[int, int, str]]:
    with app.db.transaction() as conn:
        return [(int(p), int(o), c) for p, o, c in conn.execute(
            """SELECT partition, "offset", reason_code FROM apply_failures WHERE consumer = %s ORDER BY 1, 2""",
            (consumer,))]


def test_publish_quarantines_every_poisoned_line_and_admits_its_neighbours(app, fp_home, tmp_path):
    good = [txn(i, T0 + i * S) for i in range(4)]
    bad_amount = txn(10, T0, amount=2**63)
    overflow_amount = txn(11, T0, amount=2**53)
    newline_pin = txn(12, T0, pins={**PINS, "run_id": "run_t\n"})
    nul_id = txn(13, T0, event_id="txn\x0013")
    surrogate = txn(14, T0)
    surrogate["payload"]["note"] = "\ud800"
    early = txn(15, T0)
    early["ts_utc"] = "0001-01-01T00:30:00+01:00"
    body = b"\n".join([
        json.dumps(good[0]).encode(),
        json.dumps(bad_amount).encode(),                       # line 2
        json.dumps(overflow_amount).encode(),                  # line 3
        json.dumps(newline_pin).encode(),                      # line 4
        json.dumps(nul_id).encode(),                           # line 5 (\u0000 escape)
        json.dumps(surrogate).encode(),                        # line 6 (\ud800 escape)
        json.dumps(early).encode(),                            # line 7
        b"x" * (2 * 1024 * 1024),                              # line 8: 2 MiB of junk
        b"\xff\xfe\x00binary\x00",                             # line 9: not UTF-8
        json.dumps(good[1]).encode(),
        json.dumps(good[2]).encode(),
        json.dumps(good[3]).encode(),
    ]) + b"\n"
    path = tmp_path / "events.jsonl"
    path.write_bytes(body)
    code, out, err = run_fp(app, fp_home, "publish", "--stream", TRAFFIC, str(path))
    assert code == 1, err  # some line was quarantined
    assert json.loads(out) == {"published": 4, "duplicates": 0, "rejected": 8}
    reasons = {n: c for n, c, _ in _quarantine(app)}
    assert reasons == {2: "AMOUNT_OUT_OF_RANGE", 3: "AMOUNT_OUT_OF_RANGE", 4: "INVALID_PINS",
                       5: "INVALID_CHARACTER", 6: "INVALID_CHARACTER", 7: "INVALID_TIMESTAMP",
                       8: "LINE_TOO_LONG", 9: "INVALID_ENCODING"}
    assert max(len(raw) for _, _, raw in _quarantine(app)) <= 4096 * 4  # evidence, never the whole line
    with app.db.transaction() as conn:
        admitted = conn.execute("SELECT count(*) FROM admissions WHERE partition IS NOT NULL").fetchone()[0]
    assert admitted == sum(app.bus.end_offsets(TRAFFIC).values()) == 4
    # the same file again: four duplicates, the same eight rejections, still exit 1
    code, out, _ = run_fp(app, fp_home, "publish", "--stream", TRAFFIC, str(path))
    assert (code, json.loads(out)) == (1, {"published": 0, "duplicates": 4, "rejected": 8})


def test_publish_and_get_features_report_unreadable_input_as_json(app, fp_home, tmp_path):
    for args in (("publish", "--stream", TRAFFIC, str(tmp_path / "missing.jsonl")),
                 ("publish", "--stream", TRAFFIC, str(tmp_path)),
                 ("get-features", "--request", str(tmp_path / "missing.json")),
                 ("get-features", "--request", str(tmp_path))):
        code, out, err = run_fp(app, fp_home, *args)
        assert code == 2 and "Traceback" not in err
        assert _error(out)["error_code"] == "INPUT_UNREADABLE"
    code, out, _ = run_fp(app, fp_home, "publish", "--stream", "no.such.stream", str(tmp_path))
    assert code == 2 and _error(out)["error_code"] == "UNKNOWN_STREAM"


def test_as_of_outside_the_years_0001_9999_is_an_invalid_request(app, fp_home):
    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(1, T0)]), "t")
    run_workers(app, until_idle=True)
    for as_of in ("0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00", "2026-01-03T12:00:00Z\n"):
        body = request([("account", "a1")], [("txn_velocity", "1.0")], T0)
        body["as_of_time_utc"] = as_of
        code, out, err = run_fp(app, fp_home, "get-features", "--request", "-", stdin=json.dumps(body).encode())
        assert code == 1 and "Traceback" not in err
        assert _error(out)["error_code"] == "INVALID_REQUEST"
    body = request([("account", "a1")], [("txn_velocity", "1.0")], T0)
    body["request_id"] = "r1\n"
    assert serve(app, body)["error_code"] == "INVALID_REQUEST"
    body["feature_keys"] = [{"key_type": "account", "key_id": "e_account_a1\n"}]
    body.pop("request_id")
    assert serve(app, body)["error_code"] == "INVALID_REQUEST"


def test_a_record_the_worker_cannot_apply_is_ledgered_and_the_partition_moves_on(app):
    """Records already on the bus that admission would now refuse (admitted before the bounds, or
    written by another producer) go to the failure ledger at their position; neighbours apply."""
    poisoned = txn(1, T0, amount=2**63)
    nul = txn(2, T0, account="a2")
    nul["payload"]["note"] = "\x00"
    good = [txn(10 + i, T0 + i * S, account="a3") for i in range(5)]
    items = [(e["payload"]["flow_id"], encode_event(e)) for e in (poisoned, nul, *good)]
    positions = app.bus.append(TRAFFIC, items)
    app.bus.append(TRAFFIC, [("flow_x", b"{not json"), ("flow_y", b"\xff\xfe")])
    run_workers(app, until_idle=True)
    failures = _failures(app)
    assert {(p, o) for p, o, _ in failures} >= {positions[0], positions[1]}
    assert {c for _, _, c in failures} == {"AMOUNT_OUT_OF_RANGE", "INVALID_CHARACTER", "MALFORMED_RECORD"}
    assert len(failures) == 4
    response = serve(app, request([("account", "a3")], [("txn_velocity", "1.0")], T0 + 10 * S))
    assert response["snapshot"]["by_key"][0]["by_group"][0]["features"]["txn_count_1h"] == 5
    health = run_health(app)
    assert health["components"]["ofp_worker"]["status"] == "RED"  # 4 of 9 records failed
    assert health["components"]["ofp_worker"]["apply_failures_recent"] == 4


def run_health(app) -> dict:
    from featureplane.online.health import health_report

    return health_report(app)


def test_storage_rejections_are_isolated_to_the_records_that_cause_them(app):
    """The safety net behind the shared decoder: a batch that fails for a reason in its records is
    split until the failing records stand alone; each goes to the ledger, every other record applies."""
    import psycopg

    from featureplane.online.checkpoints import claim

    poison = {7, 19, 20}
    applied: list[int] = []

    def apply_batch(lease: Lease, records, next_offset):
        if poison & {o for _, o, _ in records}:
            raise psycopg.errors.NumericValueOutOfRange("bigint out of range")
        from featureplane.online.checkpoints import advance

        with app.db.transaction() as conn:
            applied.extend(o for _, o, _ in records)
            return advance(conn, lease, next_offset)

    with app.db.transaction() as conn:
        lease = claim(conn, "probe", "probe.stream", 0, "me")
    records = [(0, o, b"{}") for o in range(32)]
    lease = apply_isolating(app.db, lease, records, 32, apply_batch)
    assert lease.next_offset == 32
    assert sorted(applied) == sorted(set(range(32)) - poison)
    assert _failures(app, "probe") == [(0, 7, "STORAGE_REJECTED"), (0, 19, "STORAGE_REJECTED"),
                                       (0, 20, "STORAGE_REJECTED")]


def test_the_read_ahead_prepares_each_batch_beside_the_one_before_and_hands_it_only_its_own(app):
    """`drain` with `prepare`: the next batch is read and prepared while the current one is applied;
    each batch reaches the applier once, in order, with what was prepared from exactly its records;
    a batch whose preparation failed is applied all the same (the applier does the work)."""
    import threading

    from featureplane.online.checkpoints import advance, drain

    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(i, T0 + i * S) for i in range(120)]), "t")
    partition, end = max(app.bus.end_offsets(TRAFFIC).items(), key=lambda item: item[1])
    assert end > 21  # at least four batches of 7
    started: list[int] = []  # first offset of each batch whose preparation began
    began = threading.Condition()
    seen: list[tuple[list[int], object]] = []
    overlapped: list[bool] = []  # asserted below: an error raised in the applier would be ledgered

    def prepare(records):
        with began:
            started.append(records[0][1])
            began.notify_all()
        if records[0][1] == 14:
            raise ValueError("this preparation fails")
        return [offset for _, offset, _ in records]

    def apply_batch(lease, records, next_offset, prepared=None):
        offsets = [offset for _, offset, _ in records]
        seen.append((offsets, prepared))
        if next_offset < end:  # the next batch's preparation begins before this one is applied
            with began:
                overlapped.append(began.wait_for(lambda: next_offset in started, timeout=5))
        with app.db.transaction() as conn:
            return advance(conn, lease, next_offset)

    assert drain(app.db, app.bus, "probe", TRAFFIC, partition, "me", 7, apply_batch, prepare=prepare)
    assert overlapped and all(overlapped)
    assert [offsets for offsets, _ in seen] == [list(range(n, min(n + 7, end))) for n in range(0, end, 7)]
    assert [prepared for _, prepared in seen] == [None if n == 14 else list(range(n, min(n + 7, end)))
                                                  for n in range(0, end, 7)]


def test_sums_beyond_2_53_are_served_null_with_a_warning_and_parity_holds(app):
    from featureplane.offline.parity import run_parity

    big = 2**53 - 1
    events = [txn(i, T0 + i * S, amount=big, merchant="hot") for i in range(3)]
    events.append(txn(50, T0 + 10 * S, account="small", customer="small", merchant="hot", amount=7))
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    run_workers(app, until_idle=True)
    as_of = T0 + 20 * S
    server = FeatureServer(app.db, app.bus, app.registry)
    try:
        response = server.get_features(request(
            [("account", "a1"), ("account", "small"), ("merchant", "hot"), ("customer", "u1")],
            [("txn_velocity", "2.0"), ("merchant_activity", "1.0"), ("customer_spend", "1.0")], as_of))
    finally:
        server.close()
    flush_outbox(app.db, app.store, app.lake)
    by_key = {k["feature_key"]["key_id"]: k["by_group"] for k in response["snapshot"]["by_key"]}
    velocity = by_key["e_account_a1"][0]["features"]
    assert velocity["txn_count_1h"] == 3 and velocity["txn_amount_max_24h_minor"] == big
    assert velocity["txn_amount_sum_1h_minor"] is None and velocity["txn_amount_mean_1h_minor"] is None
    assert by_key["e_account_small"][0]["features"]["txn_amount_sum_1h_minor"] == 7
    merchant = by_key["e_merchant_hot"][0]["features"]  # the bucketed (hot-key) path
    assert merchant["merchant_amount_sum_24h_minor"] is None and merchant["merchant_txn_count_24h"] == 4
    spend = by_key["e_customer_u1"][0]["features"]
    assert spend["customer_amount_sum_7d_minor"] is None and spend["customer_amount_share_1h_of_7d"] is None
    out_of_range = {(w["key_id"], w["group_name"]) for w in response["provenance"]["warnings"]
                    if w["code"] == "VALUE_OUT_OF_RANGE"}
    assert out_of_range == {("e_account_a1", "txn_velocity"), ("e_merchant_hot", "merchant_activity"),
                            ("e_customer_u1", "customer_spend")}
    result = run_parity(app.db, app.store, app.lake, app.registry)
    assert (result["checked"], result["matched"]) == (1, 1)


def test_corrupt_log_blocks_only_its_partition_until_an_audited_skip(app, fp_home):
    events = [txn(i, T0 + i * S, account=f"a{i}") for i in range(40)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    ends = app.bus.end_offsets(TRAFFIC)
    victim = max(ends, key=ends.get)
    log = Path(app.settings.bus.root) / TRAFFIC / f"{victim}.log"
    size = log.stat().st_size
    with open(log, "r+b") as handle:  # the last 4 bytes of the partition overwritten
        handle.seek(size - 4)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(WorkerTimeout) as info:
        run_workers(app, until_idle=True, timeout_seconds=1)
    assert f"{TRAFFIC}/{victim}" in info.value.message and "BUS_CORRUPT" in info.value.message
    with app.db.transaction() as conn:
        applied = dict(conn.execute(
            "SELECT partition, next_offset FROM consumer_checkpoints WHERE consumer = 'ofp'").fetchall())
    assert applied[victim] == ends[victim] - 1
    assert all(applied[p] == ends[p] for p in ends if p != victim)  # the others went on
    code, out, _ = run_fp(app, fp_home, "health")
    report = json.loads(out)
    assert code == 2 and report["status"] == "RED"
    problems = report["components"]["ofp_worker"]["partitions"][str(victim)]["problems"]
    assert any("BUS_CORRUPT" in p and "bytes" in p for p in problems)
    # an intact record cannot be skipped; the corrupt one can, and the skip is audited
    code, out, _ = run_fp(app, fp_home, "bus", "skip", "--stream", TRAFFIC, "--partition", str(victim),
                          "--offset", "0", "--reason", "test")
    assert code == 2 and _error(out)["error_code"] == "NOT_CORRUPT"
    code, out, _ = run_fp(app, fp_home, "bus", "skip", "--stream", TRAFFIC, "--partition", str(victim),
                          "--offset", str(ends[victim] - 1), "--reason", "disk fault, record restored upstream")
    assert code == 0, out
    run_workers(app, until_idle=True, timeout_seconds=30)
    assert (victim, ends[victim] - 1, "CORRUPT_RECORD_SKIPPED") in _failures(app)
    with app.db.transaction() as conn:
        audit = conn.execute("SELECT action, partition, \"offset\", reason FROM operator_actions").fetchall()
        blocks = conn.execute("SELECT count(*) FROM consumer_blocks").fetchone()[0]
    assert audit == [("bus_skip", victim, ends[victim] - 1, "disk fault, record restored upstream")]
    assert blocks == 0


def test_until_idle_waits_for_a_dead_workers_lease_instead_of_skipping_it(app):
    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(i, T0 + i * S) for i in range(30)]), "t")
    partitions = app.bus.partitions(TRAFFIC)
    with app.db.transaction() as conn:  # a worker that died holding every partition, lease 2 s left
        for p in partitions:
            conn.execute("""INSERT INTO consumer_checkpoints (consumer, stream, partition, owner, epoch, lease_until)
                            VALUES ('ofp', %s, %s, 'dead-host:1', 1, now() + interval '2 seconds')""", (TRAFFIC, p))
    run_workers(app, until_idle=True, timeout_seconds=60)
    with app.db.transaction() as conn:
        applied = dict(conn.execute(
            "SELECT partition, next_offset FROM consumer_checkpoints WHERE consumer = 'ofp'").fetchall())
    assert applied == app.bus.end_offsets(TRAFFIC)


def test_health_is_never_green_with_waiting_records_nobody_applies(app, fp_home):
    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(i, T0 + i * S) for i in range(5)]), "t")
    report = run_health(app)
    assert report["components"]["ofp_worker"]["status"] == "AMBER"
    assert report["status"] != "GREEN"
    run_workers(app, until_idle=True)
    assert run_health(app)["components"]["ofp_worker"]["status"] == "GREEN"
    with app.db.transaction() as conn:  # a crash loop on partition 0: three errors in a row
        conn.execute("""INSERT INTO consumer_errors (consumer, stream, partition, reason_code, detail, in_a_row)
                        VALUES ('ofp', %s, 0, 'STORAGE_REJECTED', 'x', 3)""", (TRAFFIC,))
    assert run_health(app)["components"]["ofp_worker"]["status"] == "RED"
    code, out, _ = run_fp(app, fp_home, "health")
    assert code == 2 and json.loads(out)["status"] == "RED"


def test_health_and_serving_answer_unavailable_when_postgres_is_unreachable(app, fp_home):
    dead = "host=/nonexistent-socket-dir dbname=x user=postgres connect_timeout=2"
    code, out, err = run_fp(app, fp_home, "health", env={"FP_PG_DSN": dead})
    assert code == 2 and "Traceback" not in err
    assert json.loads(out)["components"]["ofp_worker"]["error"] == "UNAVAILABLE"
    body = json.dumps(request([("account", "a1")], [("txn_velocity", "1.0")], T0)).encode()
    code, out, err = run_fp(app, fp_home, "get-features", "--request", "-", stdin=body, env={"FP_PG_DSN": dead})
    assert code != 0 and "Traceback" not in err
    assert _error(out)["error_code"] == "UNAVAILABLE" and "nonexistent" not in out


def test_sql_is_locked_to_the_lakes_unless_allowed(app, fp_home, tmp_path):
    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(1, T0)]), "t")
    run_workers(app, until_idle=True)
    code, out, _ = run_fp(app, fp_home, "sql", "SELECT count(*) AS n FROM archive_traffic")
    assert code == 0 and json.loads(out)["rows"] == [[1]]
    secret = tmp_path / "secret.txt"
    secret.write_text("do-not-read")
    target = tmp_path / "written.csv"
    for query in (f"SELECT * FROM read_text('{secret}')", f"COPY (SELECT 1) TO '{target}'",
                  "SET enable_external_access = true", "INSTALL httpfs",
                  "SELECT 1; SELECT 2"):
        code, out, _ = run_fp(app, fp_home, "sql", query)
        assert code == 2 and _error(out)["error_code"] == "SQL_ERROR", query
        assert "do-not-read" not in out
    assert not target.exists()
    code, out, _ = run_fp(app, fp_home, "sql", "--allow-external", f"SELECT content FROM read_text('{secret}')")
    assert code == 0 and json.loads(out)["rows"] == [["do-not-read"]]


def test_embedded_postgres_runs_under_a_home_with_spaces_and_non_ascii(tmp_path):
    from featureplane.runtime.embedded_pg import EmbeddedServer
    from featureplane.runtime.postgres import Database
    from featureplane.runtime.secrets import Secret

    home = tmp_path / "fp home ü"
    home.mkdir()
    os.chmod(tmp_path, 0o755)
    server = EmbeddedServer(home / "pg", {"shared_buffers": "32MB"})
    try:
        db = Database(Secret(server.ensure_running()))
        with db.transaction() as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "32MB"
        assert server.running()
    finally:
        assert server.stop()
    assert not server.running() and not server.stop()
