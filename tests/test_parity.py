"""Parity: snapshots served online are rebuilt from the Delta archive at their recorded basis."""

from __future__ import annotations

import json

from featureplane.lake.archive import archive_progress
from featureplane.offline.parity import first_difference, run_parity
from featureplane.online.serving import FeatureServer
from featureplane.online.snapshot_store import flush_outbox, object_key
from featureplane.runtime.simulate import SimulationPlan, request_mix
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers
from featureplane.schemas.streams import TRAFFIC


def _serve(app, requests):
    server = FeatureServer(app.db, app.bus, app.registry)
    try:
        responses = [server.get_features(r) for r in requests]
    finally:
        server.close()
    flush_outbox(app.db, app.store, app.lake)
    return responses


def test_parity_matches_on_a_run_with_duplicates_and_disorder(app):
    plan = SimulationPlan(seed=11, transactions=600)
    run_simulation(transactions=600, seed=11, out=None, publish=True, duplicates=0.05, disorder=0.2,
                   progress=False, app=app)
    summary = run_workers(app, until_idle=True)
    assert summary["archive"]["records"] > 0
    assert archive_progress(app.lake, TRAFFIC) == app.bus.end_offsets(TRAFFIC)
    responses = _serve(app, request_mix(plan, 40, seed=3))
    assert all(r["kind"] == "get_features_response" for r in responses)
    result = run_parity(app.db, app.store, app.lake, app.registry)
    assert (result["checked"], result["matched"], result["mismatched"]) == (40, 40, 0)


def test_parity_reports_tampered_state_and_tampered_snapshot(app):
    plan = SimulationPlan(seed=12, transactions=300)
    run_simulation(transactions=300, seed=12, out=None, publish=True, progress=False, app=app)
    run_workers(app, until_idle=True)
    requests = request_mix(plan, 6, seed=1)
    # tamper with online state: one account's amounts change, then serve from the tampered state
    account = requests[0]["feature_keys"][0]["key_id"]
    with app.db.transaction() as conn:
        changed = conn.execute("UPDATE ofp_events SET amount_minor = amount_minor + 1 WHERE account_id = %s",
                               (account,)).rowcount
    assert changed > 0
    first = _serve(app, requests[:1])[0]
    result = run_parity(app.db, app.store, app.lake, app.registry)
    assert result["mismatched"] == 1
    mismatch = result["mismatches"][0]
    assert mismatch["snapshot_hash"] == first["snapshot"]["feature_snapshot_hash"]
    assert mismatch["reason_code"] == "HASH_MISMATCH"
    assert mismatch["first_difference"].startswith("by_key[0].by_group[0].features.txn_amount_")

    # tamper with a stored snapshot object: a feature value edited in place, hash left alone
    good = _serve(app, requests[1:2])[0]
    digest = good["snapshot"]["feature_snapshot_hash"]
    key = object_key(good["snapshot"]["context_pins"], digest)
    stored = json.loads(app.store.get(key))
    features = stored["snapshot"]["by_key"][3]["by_group"][0]["features"]
    features["merchant_txn_count_24h"] += 1
    app.store.put(key, json.dumps(stored).encode())
    result = run_parity(app.db, app.store, app.lake, app.registry)
    altered = [m for m in result["mismatches"] if m["snapshot_hash"] == digest]
    assert altered and altered[0]["reason_code"] == "STORED_SNAPSHOT_ALTERED"
    assert altered[0]["first_difference"] == "by_key[3].by_group[0].features.merchant_txn_count_24h"


def test_first_difference_names_the_path():
    assert first_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "a[1].b"
    assert first_difference({"a": 1}, {"a": 1}) is None
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == "a[1]"
    assert first_difference({"a": 1}, {"a": 1.0}) == "a"


def test_a_later_copy_with_other_keys_is_skipped_online_in_datasets_and_in_parity(app):
    """An event id seen again at a later position (here with another card, straight onto the bus) is
    skipped by the online plane; a dataset has no row for it and parity, which reads only the
    requested keys, still decides by the first position over the whole basis."""
    import polars as pl

    from featureplane.offline.ofs import run_intent
    from featureplane.online.admission import encode_event
    from featureplane.runtime.simulate import simulate

    plan = SimulationPlan(seed=12, transactions=300)
    run_simulation(transactions=300, seed=12, out=None, publish=True, progress=False, app=app)
    run_workers(app, until_idle=True)
    original = next(e for s, e in simulate(plan) if s == TRAFFIC)
    copy = json.loads(json.dumps(original))
    copy["payload"]["card_id"] = "e_card_copycat"
    app.bus.append(TRAFFIC, [("copy", encode_event(copy))])
    run_workers(app, until_idle=True)

    from featureplane.pipelines.timefmt import format_ts, parse_rfc3339

    as_of = format_ts(parse_rfc3339(original["ts_utc"]) + 60_000_000)
    request = {"kind": "get_features_request", "contract_version": "ofp_public_contracts_v0",
               "context_pins": original["context_pins"], "as_of_time_utc": as_of,
               "feature_keys": [{"key_type": "card", "key_id": "e_card_copycat"},
                                {"key_type": "card", "key_id": original["payload"]["card_id"]}],
               "feature_groups": [{"group_name": "card_velocity", "group_version": "1.0"}]}
    response = _serve(app, [request])[0]
    freshness = {f["key_id"]: f["last_update_event_time"] for f in response["provenance"]["freshness"]}
    assert freshness["e_card_copycat"] is None and freshness[original["payload"]["card_id"]] is not None
    result = run_parity(app.db, app.store, app.lake, app.registry)
    assert (result["checked"], result["mismatched"]) == (1, 0)

    ends = app.bus.end_offsets(TRAFFIC)
    manifest = run_intent(app, {
        "request_id": "copies", "intent_kind": "dataset_build", "context_pins": original["context_pins"],
        "replay_basis": {"stream_name": TRAFFIC, "watermark_basis": {str(p): o for p, o in sorted(ends.items())}},
        "feature_groups": [{"group_name": "card_velocity", "group_version": "1.0"}],
        "label_as_of_utc": "2026-12-31T00:00:00Z",
        "observation_scope": {"ts_from_utc": "2020-01-01T00:00:00Z", "ts_to_utc": "2030-01-01T00:00:00Z"}})
    rows = pl.concat([pl.read_parquet(app.store.get(f["key"])) for f in manifest["files"]])
    assert rows.filter(pl.col("event_id") == original["event_id"])["card_id"].to_list() == [
        original["payload"]["card_id"]]
    assert rows.height == 300
