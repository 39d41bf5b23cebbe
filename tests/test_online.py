"""The OFP acceptance scenarios (seed 003 §15.2), idempotency properties and crash-restart."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featureplane.online.admission import Publisher
from featureplane.online.ofp_worker import OfpWorker
from featureplane.online.serving import FeatureServer
from featureplane.online.snapshot_store import flush_outbox, get_snapshot
from featureplane.pipelines.snapshot import hashed_payload, snapshot_hash
from featureplane.pipelines.timefmt import format_ts
from featureplane.schemas.streams import TRAFFIC
from tests import reference
from tests.helpers import PINS, T0, S, kill_9_repeatedly, lines, request, serve, txn

ALL_GROUPS = [("txn_velocity", "1.0"), ("txn_velocity", "2.0"), ("card_velocity", "1.0"),
              ("merchant_activity", "1.0"), ("device_reuse", "1.0"), ("customer_spend", "1.0")]
ALL_KEYS = [("account", "a1"), ("card", "c1"), ("merchant", "m1"), ("device", "d1"), ("customer", "u1")]


def publish_and_apply(app, events, batch_size=5000):
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "test")
    OfpWorker(app.db, app.bus, app.registry, batch_size=batch_size).run_until_idle()




def test_dod1_and_dod2_invalid_requests(app):
    publish_and_apply(app, [txn(1, T0)])
    raw_card = request([("card", "c1")], [("card_velocity", "1.0")], T0)
    raw_card["feature_keys"][0]["key_id"] = "4111111111111111"
    no_as_of = request([("card", "c1")], [("card_velocity", "1.0")], T0)
    del no_as_of["as_of_time_utc"]
    unknown_version = request([("card", "c1")], [("card_velocity", "9.9")], T0)
    orphan_group = request([("card", "c1")], [("merchant_activity", "1.0")], T0)
    too_many = request([("card", f"c{i}") for i in range(101)], [("card_velocity", "1.0")], T0)
    for bad in (raw_card, no_as_of, unknown_version, orphan_group, too_many, {"kind": "x"}):
        response = serve(app, bad)
        assert response["kind"] == "error_response"
        assert response["error_code"] == "INVALID_REQUEST" and response["retryable"] is False
        assert "snapshot" not in response


def test_not_found_for_pins_never_applied(app):
    publish_and_apply(app, [txn(1, T0)])
    other = {**PINS, "run_id": "run_other"}
    response = serve(app, request([("card", "c1")], [("card_velocity", "1.0")], T0, pins=other))
    assert response["error_code"] == "NOT_FOUND" and response["retryable"] is False


def test_dod3_deterministic_hash_and_dod7_provenance(app):
    publish_and_apply(app, [txn(i, T0 - i * 60 * S, amount=100 + i) for i in range(5)])
    req = request(ALL_KEYS, ALL_GROUPS, T0)
    first, second = serve(app, req), serve(app, req)
    assert first == second
    digest = first["snapshot"]["feature_snapshot_hash"]
    assert digest == first["provenance"]["feature_snapshot_hash"] == snapshot_hash(first)
    prov = first["provenance"]
    assert prov["context_pins"] == PINS
    assert prov["group_versions_used"] == [{"group_name": n, "group_version": v} for n, v in sorted(ALL_GROUPS)]
    assert prov["input_basis"]["stream_name"] == TRAFFIC
    assert sum(prov["input_basis"]["watermark_basis"].values()) == 5
    assert prov["graph_version"] is None
    assert len(prov["freshness"]) == len(ALL_GROUPS)
    keys = [k["feature_key"] for k in first["snapshot"]["by_key"]]
    assert keys == sorted(keys, key=lambda k: (k["key_type"], k["key_id"]))
    # hand-computed values for the account: 5 txns one minute apart ending at T0, amounts 100..104
    account = next(k for k in first["snapshot"]["by_key"] if k["feature_key"]["key_type"] == "account")
    v2 = next(g for g in account["by_group"] if g["group"]["group_version"] == "2.0")["features"]
    assert v2["txn_count_5m"] == 5  # T0-4min .. T0, all inside (T0-5m, T0]
    assert v2["txn_amount_sum_1h_minor"] == 510
    assert v2["txn_amount_max_24h_minor"] == 104
    assert v2["txn_amount_mean_1h_minor"] == 102.0
    assert list(v2) == sorted(v2)


def test_dod4_stale_served_but_flagged_and_no_data(app):
    publish_and_apply(app, [txn(1, T0, device=None)])
    response = serve(app, request([("account", "a1"), ("device", "d9")],
                                  [("txn_velocity", "1.0"), ("device_reuse", "1.0")], T0 + 601 * S))
    assert response["kind"] == "get_features_response"
    fresh = {f["group_name"]: f for f in response["provenance"]["freshness"]}
    assert fresh["txn_velocity"]["stale"] is True and fresh["txn_velocity"]["age_seconds"] == 601
    assert fresh["device_reuse"]["last_update_event_time"] is None and fresh["device_reuse"]["stale"] is True
    codes = [(w["group_name"], w["code"]) for w in response["provenance"]["warnings"]]
    assert codes == [("txn_velocity", "STALE_GROUP"), ("device_reuse", "NO_DATA")]
    # exactly at the ttl boundary it is not stale (stale means age > ttl)
    edge = serve(app, request([("account", "a1")], [("txn_velocity", "1.0")], T0 + 600 * S))
    assert edge["provenance"]["freshness"][0]["stale"] is False and edge["provenance"]["warnings"] == []


def test_dod5_duplicates_do_not_double_count(app):
    event = txn(1, T0)
    publish_and_apply(app, [event])
    app.bus.append(TRAFFIC, [(event["payload"]["flow_id"], json.dumps(event).encode())])  # producer retry
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()
    response = serve(app, request([("account", "a1")], [("txn_velocity", "1.0")], T0))
    assert response["snapshot"]["by_key"][0]["by_group"][0]["features"]["txn_count_5m"] == 1
    assert sum(response["provenance"]["input_basis"]["watermark_basis"].values()) == 2


def test_dod6_out_of_order_is_event_time_driven(app):
    events = [txn(i, T0 - i * 30 * S) for i in range(6)]  # published newest first
    publish_and_apply(app, events, batch_size=2)
    response = serve(app, request([("account", "a1")], [("txn_velocity", "1.0")], T0 - 60 * S))
    features = response["snapshot"]["by_key"][0]["by_group"][0]["features"]
    assert features["txn_count_5m"] == 4  # T0-60s, -90s, -120s, -150s; later events never count
    assert response["provenance"]["freshness"][0]["last_update_event_time"].startswith("2026-01-03T11:59:00")


def test_dod8_unavailable_is_retryable_and_invents_nothing(app):
    from featureplane.runtime.postgres import Database
    from featureplane.runtime.secrets import Secret

    publish_and_apply(app, [txn(1, T0)])
    server = FeatureServer(Database(Secret("postgresql://nobody@127.0.0.1:9/x?connect_timeout=1")), app.bus,
                           app.registry)
    response = server.get_features(request([("account", "a1")], [("txn_velocity", "1.0")], T0))
    assert response["error_code"] == "UNAVAILABLE" and response["retryable"] is True
    assert "snapshot" not in response and "nobody" not in json.dumps(response)


def test_snapshot_persisted_by_hash_once(app):
    publish_and_apply(app, [txn(1, T0)])
    req = request([("account", "a1")], [("txn_velocity", "1.0")], T0)
    response = serve(app, req)
    serve(app, req)
    assert flush_outbox(app.db, app.store, app.lake) == 1
    digest = response["snapshot"]["feature_snapshot_hash"]
    assert get_snapshot(app.db, app.store, digest) == response
    objects = list((app.settings.home / "lake" / "snapshots").rglob("*.json"))
    assert len(objects) == 1


def test_served_values_agree_with_brute_force_on_a_simulated_run(app):
    from featureplane.runtime.simulate import SimulationPlan, simulate

    plan = SimulationPlan(seed=3, transactions=300)
    events = [e for s, e in simulate(plan) if s == TRAFFIC]
    publish_and_apply(app, events, batch_size=64)
    flat = [reference.flatten(e) for e in events]
    rng = random.Random(5)
    for _ in range(6):
        e = rng.choice(flat)
        as_of = e["ts_us"] + rng.choice([0, 1, 120 * S])
        keys = [("account", e["account_id"]), ("card", e["card_id"]), ("merchant", e["merchant_id"]),
                ("customer", e["customer_id"])] + ([("device", e["device_id"])] if e["device_id"] else [])
        req = request([(t, i.split("_", 2)[2]) for t, i in keys],
                      [g for g in ALL_GROUPS if g[0] != "device_reuse" or e["device_id"]], as_of,
                      pins=plan.pins())
        response = serve(app, req)
        for entry in response["snapshot"]["by_key"]:
            for group in entry["by_group"]:
                label = f"{group['group']['group_name']}@{group['group']['group_version']}"
                expected, _ = reference.features(flat, label, entry["feature_key"]["key_id"], as_of)
                assert group["features"] == expected


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order_seed=st.integers(0, 10_000), batch=st.integers(1, 7), dup_fraction=st.sampled_from([0.0, 0.3, 1.0]))
def test_property_duplicates_disorder_and_batch_size_never_change_the_hash(pg_server, tmp_path_factory,
                                                                           order_seed, batch, dup_fraction):
    from featureplane.runtime.app import App
    from featureplane.runtime.settings import load_settings
    from tests.conftest import fresh_database

    rng = random.Random(order_seed)
    events = [txn(i, T0 - rng.randrange(0, 7200) * S, account=f"a{i % 3}", card=f"c{i % 4}",
                  merchant=f"m{i % 2}", amount=rng.randrange(1000)) for i in range(14)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    responses = []
    injected = []
    # in order in one batch; shuffled in small batches; shuffled in small batches with producer retries
    for variant, size, dups in ((events, 5000, 0.0), (shuffled, batch, 0.0), (shuffled, batch, dup_fraction)):
        db = fresh_database(pg_server)
        home = tmp_path_factory.mktemp("home")
        app = App(load_settings({"FP_HOME": str(home), "FP_PG_DSN": db.dsn.reveal()}))
        app.__dict__["db"] = db
        app.init()
        result = Publisher(app.db, app.bus).publish(TRAFFIC, lines(variant), "p", inject_bus_duplicates=dups)
        injected.append(result.injected_bus_duplicates)
        OfpWorker(app.db, app.bus, app.registry, batch_size=size).run_until_idle()
        responses.append(serve(app, request([("account", "a0"), ("card", "c1"), ("merchant", "m0")],
                                            [("txn_velocity", "2.0"), ("card_velocity", "1.0"),
                                             ("merchant_activity", "1.0")], T0)))
    ordered, shuffled_small, with_retries = responses
    # order and batch size change nothing: the same bus offsets per partition, so the very same hash
    assert ordered["snapshot"]["feature_snapshot_hash"] == shuffled_small["snapshot"]["feature_snapshot_hash"]
    assert snapshot_hash(shuffled_small) == shuffled_small["snapshot"]["feature_snapshot_hash"]
    # producer retries add records to the bus, so the basis (and with it the hash) names more
    # offsets; everything else the hash covers is identical
    basis = [sum(r["provenance"]["input_basis"]["watermark_basis"].values()) for r in responses]
    assert basis[2] == basis[0] + injected[2]
    same = {k: v for k, v in hashed_payload(ordered).items() if k != "input_basis"}
    assert same == {k: v for k, v in hashed_payload(with_retries).items() if k != "input_basis"}
    if injected[2] == 0:
        assert with_retries["snapshot"]["feature_snapshot_hash"] == ordered["snapshot"]["feature_snapshot_hash"]


def test_fenced_worker_cannot_apply_twice(app):
    from featureplane.online.checkpoints import Fenced, claim
    from featureplane.online.ofp_state import CONSUMER

    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(i, T0, event_id=f"x{i}") for i in range(8)]), "t")
    partition = next(p for p in app.bus.partitions(TRAFFIC) if app.bus.end_offsets(TRAFFIC)[p])
    stale = OfpWorker(app.db, app.bus, app.registry, owner="stale")
    with app.db.transaction() as conn:
        stale_lease = claim(conn, CONSUMER, TRAFFIC, partition, "stale")
        conn.execute("UPDATE consumer_checkpoints SET lease_until = now() - interval '1 hour'")
    fresh = OfpWorker(app.db, app.bus, app.registry, owner="fresh")
    fresh.run_until_idle()
    batch = app.bus.read(TRAFFIC, partition, 0, 100)
    from featureplane.online.ofp_worker import WorkerStats

    try:
        stale.apply_batch(stale_lease, [(r.partition, r.offset, r.value) for r in batch.records],
                          batch.next_offset, WorkerStats())
        raise AssertionError("a fenced worker applied a batch")
    except Fenced:
        pass
    with app.db.transaction() as conn:
        (count,) = conn.execute("SELECT count(*) FROM ofp_event_ids").fetchone()
    assert count == 8


def test_bad_record_goes_to_the_failure_ledger_and_the_worker_continues(app):
    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(1, T0)]), "t")
    app.bus.append(TRAFFIC, [("flow_x", b"{not json"), ("flow_x", json.dumps(txn(2, T0)).encode())])
    stats = OfpWorker(app.db, app.bus, app.registry).run_until_idle()
    assert stats.failures == 1 and stats.applied == 2
    with app.db.transaction() as conn:
        rows = conn.execute('SELECT stream, partition, "offset", reason_code FROM apply_failures').fetchall()
    assert len(rows) == 1 and rows[0][3] == "MALFORMED_RECORD"


def test_kill_9_during_apply_then_restart_counts_every_event_exactly_once(app, fp_home):
    events = [txn(i, T0 + i * S, account=f"a{i % 13}", device=None if i % 5 == 0 else f"d{i % 7}")
              for i in range(3000)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "test")
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events[:500]), "test")  # admission dedupes these
    app.bus.append(TRAFFIC, [(e["payload"]["flow_id"], json.dumps(e).encode()) for e in events[:300]])
    script = (
        "from featureplane.runtime.app import App\nfrom featureplane.online.ofp_worker import OfpWorker\n"
        "app = App()\n"
        "w = OfpWorker(app.db, app.bus, app.registry, batch_size=37, owner='crashy',"
        " bucketed={('merchant_activity', '1.0'): 3600_000_000})\n"
        "print('ready', flush=True)\n"
        "while True:\n    w.run_until_idle()\n"
    )
    kill_9_repeatedly(app, fp_home, script, (0.3, 0.8, 1.5))
    # the restarted worker has the same identity, so it re-claims the partitions at once
    OfpWorker(app.db, app.bus, app.registry, owner="crashy",
              bucketed={("merchant_activity", "1.0"): 3600_000_000}).run_until_idle()
    with app.db.transaction() as conn:
        applied = conn.execute("SELECT sum(applied) FROM consumer_counters WHERE consumer = 'ofp'").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM ofp_events").fetchone()[0]
        claimed = conn.execute("SELECT count(*) FROM ofp_event_ids").fetchone()[0]
    with_device = sum(1 for e in events if e["payload"]["device_id"] is not None)
    assert (applied, claimed) == (3000, 3000)
    assert rows == 3000 and with_device > 0  # one state row per event, whichever groups read it
    flat = [reference.flatten(e) for e in events]
    as_of = T0 + 2999 * S
    response = serve(app, request(ALL_KEYS, ALL_GROUPS, as_of))
    for entry in response["snapshot"]["by_key"]:
        for group in entry["by_group"]:
            label = f"{group['group']['group_name']}@{group['group']['group_version']}"
            expected, _ = reference.features(flat, label, entry["feature_key"]["key_id"], as_of)
            assert group["features"] == expected, label


def test_a_failed_flush_is_counted_and_the_snapshot_stays_in_the_outbox(app, monkeypatch):
    import pytest

    from featureplane.pipelines.errors import TransientError

    publish_and_apply(app, [txn(1, T0)])
    response = serve(app, request([("account", "a1")], [("txn_velocity", "1.0")], T0 + S))
    original = app.store.put
    monkeypatch.setattr(app.store, "put", lambda key, data: (_ for _ in ()).throw(OSError("store down")))
    with pytest.raises(TransientError):
        flush_outbox(app.db, app.store, app.lake)
    with app.db.transaction() as conn:
        failures = conn.execute("SELECT value FROM serve_counters WHERE name = 'snapshot_failures'").fetchone()[0]
    assert failures == 1
    monkeypatch.setattr(app.store, "put", original)
    assert flush_outbox(app.db, app.store, app.lake) == 1
    digest = response["snapshot"]["feature_snapshot_hash"]
    assert get_snapshot(app.db, app.store, digest) == json.loads(json.dumps(response))


def test_state_in_the_v1_layout_is_migrated_to_one_row_per_event(app):
    """A store written by v1 (one row per event and group version) serves the same snapshot after
    the worker migrates it to one row per event."""
    events = [txn(i, T0 - i * 7 * S, account=f"a{i % 3}", card=f"c{i % 4}", merchant=f"m{i % 2}",
                  device=None if i % 5 == 0 else f"d{i % 2}", amount=10 + i) for i in range(40)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()
    before = serve(app, request(ALL_KEYS, ALL_GROUPS, T0))
    with app.db.transaction() as conn:  # rewrite the state in the v1 layout, by hand
        for group in app.registry.all():
            gid = conn.execute("SELECT group_id FROM ofp_groups WHERE group_name = %s AND group_version = %s",
                               group.ref).fetchone()[0]
            fields = "".join(f', "{f}"' for f in group.fields)
            conn.execute(f"""INSERT INTO ofp_contributions (partition, "offset", group_id, key_id, scope_id, ts_us
                                                            {fields})
                             SELECT partition, "offset", %s, {group.key_field}, scope_id, ts_us {fields}
                               FROM ofp_events WHERE {group.key_field} IS NOT NULL""", (gid,))
        conn.execute("DELETE FROM ofp_events")
    OfpWorker(app.db, app.bus, app.registry)  # migrates on start
    after = serve(app, request(ALL_KEYS, ALL_GROUPS, T0))
    assert after["snapshot"]["feature_snapshot_hash"] == before["snapshot"]["feature_snapshot_hash"]
    with app.db.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM ofp_contributions").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ofp_events").fetchone()[0] == 40


def test_concurrent_identical_requests_all_succeed_with_one_stored_snapshot(app):
    """Several clients asking the same question at once: every one is answered (a concurrent insert of
    the same snapshot is retried from a fresh snapshot, never surfaced), and it is stored once."""
    import threading

    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(i, T0 - i * S) for i in range(20)]), "t")
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()
    req = request(ALL_KEYS, ALL_GROUPS, T0)
    answers: list[dict] = []
    barrier = threading.Barrier(8)

    def client() -> None:
        from featureplane.online.serving import FeatureServer

        server = FeatureServer(app.db, app.bus, app.registry)
        try:
            server.get_features(req)  # warm: connection and caches
            for n in range(6):  # each round a new as-of, so every round races to store a new snapshot
                barrier.wait()
                answers.append(server.get_features({**req, "as_of_time_utc": format_ts(T0 + (n + 1) * S)}))
        finally:
            server.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 48 and {a.get("error_code") for a in answers} == {None}
    assert len({a["snapshot"]["feature_snapshot_hash"] for a in answers}) == 6
    with app.db.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM snapshot_outbox").fetchone()[0] == 7


def test_retention_drops_old_weeks_and_refuses_windows_reaching_before_the_horizon(app):
    import dataclasses

    from featureplane.online.ofp_state import WEEK_US
    from featureplane.runtime.workers import run_workers

    day = 86_400 * S
    events = [txn(i, T0 - i * (day // 4), account="a1", card=f"c{i % 3}") for i in range(4 * 28)]  # 28 days
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    app.settings = dataclasses.replace(app.settings, retention_us=14 * day)
    run_workers(app, until_idle=True)
    horizon = (T0 - 14 * day) // WEEK_US * WEEK_US
    with app.db.transaction() as conn:
        assert conn.execute("SELECT horizon_us FROM ofp_retention").fetchone()[0] == horizon
        oldest = conn.execute("SELECT min(ts_us) FROM ofp_events").fetchone()[0]
        kept = conn.execute("SELECT count(*) FROM ofp_events").fetchone()[0]
    assert oldest >= horizon and kept == sum(1 for e in events if reference.flatten(e)["ts_us"] >= horizon)
    flat = [reference.flatten(e) for e in events]
    inside = serve(app, request([("account", "a1"), ("card", "c1")], [("txn_velocity", "2.0"),
                                                                        ("card_velocity", "1.0")], T0))
    for entry in inside["snapshot"]["by_key"]:
        for group in entry["by_group"]:
            ref = group["group"]
            expected, _ = reference.features(flat, f"{ref['group_name']}@{ref['group_version']}",
                                             entry["feature_key"]["key_id"], T0)
            assert group["features"] == expected  # the whole window is after the horizon: exact
    before = serve(app, request([("account", "a1")], [("txn_velocity", "2.0")], T0 - 20 * day))
    assert before["error_code"] == "INVALID_REQUEST" and format_ts(horizon) in before["message"]
    edge = horizon - 1 + 7 * day  # the 7-day window (edge - 7d, edge] starts exactly at the horizon
    assert serve(app, request([("account", "a1")], [("txn_velocity", "2.0")], edge))["kind"] == \
        "get_features_response"
    assert serve(app, request([("account", "a1")], [("txn_velocity", "2.0")], edge - 1))["error_code"] == \
        "INVALID_REQUEST"


def test_the_statistics_refresh_runs_beside_the_archive_and_the_pass_waits_for_it(app, monkeypatch):
    """`fp worker` refreshes the planner's statistics after applying many rows, on a thread while it
    archives: the pass returns only once the refresh has finished, and an error in it is not lost."""
    from featureplane.runtime import workers

    monkeypatch.setattr(workers, "ANALYZE_AFTER_ROWS", 1)
    publisher = Publisher(app.db, app.bus)
    publisher.publish(TRAFFIC, lines([txn(i, T0 + i * S) for i in range(40)]), "test")
    workers.run_workers(app, until_idle=True)
    with app.db.transaction() as conn:
        analyzed = conn.execute("""SELECT count(*) FROM pg_stat_user_tables
                                    WHERE relname LIKE 'ofp_events_w%' AND last_analyze IS NOT NULL""").fetchone()[0]
    assert analyzed >= 1

    def broken(app, stats):
        raise RuntimeError("the statistics refresh failed")

    monkeypatch.setattr(workers, "refresh_statistics", broken)
    publisher.publish(TRAFFIC, lines([txn(i, T0 + i * S) for i in range(40, 60)]), "test")
    with pytest.raises(RuntimeError, match="statistics refresh failed"):
        workers.run_workers(app, until_idle=True)
