"""Point-in-time datasets: rows, features and labels against a plain-Python reference; intents,
ledger, determinism and fail-closed replay bases."""

from __future__ import annotations

import json
import random

import pytest

from featureplane.lake.archive import archive_progress
from featureplane.offline.intents import IntentRejected, parse_intent
from featureplane.offline.ledger import IllegalTransition, RunLedger, run_key_for
from featureplane.offline.ofs import run_intent
from featureplane.pipelines.errors import FpError
from featureplane.pipelines.timefmt import parse_rfc3339
from featureplane.runtime.simulate import SimulationPlan, simulate
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers
from featureplane.schemas.streams import LABELS, TRAFFIC
from tests import reference

GROUPS = [("card_velocity", "1.0"), ("customer_spend", "1.0"), ("device_reuse", "1.0"),
          ("merchant_activity", "1.0"), ("txn_velocity", "1.0"), ("txn_velocity", "2.0")]
KEY_FIELD = {"card_velocity": "card_id", "customer_spend": "customer_id", "device_reuse": "device_id",
             "merchant_activity": "merchant_id", "txn_velocity": "account_id"}


def intent(plan: SimulationPlan, app, *, request_id: str = "ds1", label_as_of: str = "2026-01-10T00:00:00Z",
           scope=("2026-01-03T02:00:00Z", "2026-01-03T20:00:00Z"), basis=None) -> dict:
    return {
        "request_id": request_id, "intent_kind": "dataset_build", "context_pins": plan.pins(),
        "replay_basis": basis or {"stream_name": TRAFFIC, "watermark_basis": {
            str(p): o for p, o in sorted(app.bus.end_offsets(TRAFFIC).items())}},
        "feature_groups": [{"group_name": g, "group_version": v} for g, v in GROUPS],
        "label_as_of_utc": label_as_of,
        "observation_scope": {"ts_from_utc": scope[0], "ts_to_utc": scope[1]},
    }


@pytest.fixture()
def run(app):
    plan = SimulationPlan(seed=21, transactions=700)
    run_simulation(transactions=700, seed=21, out=None, publish=True, duplicates=0.05, disorder=0.1,
                   progress=False, app=app)
    run_workers(app, until_idle=True)
    return plan


def test_dataset_rows_features_and_labels_match_a_plain_python_reference(app, run):
    manifest = run_intent(app, intent(run, app))
    import polars as pl

    frame = pl.read_parquet(app.store.get(manifest["files"][0]["key"]))
    events = [e for s, e in simulate(run) if s == TRAFFIC]
    flat = {e["payload"]["flow_id"]: reference.flatten(e) for e in events}
    lo, hi = parse_rfc3339("2026-01-03T02:00:00Z"), parse_rfc3339("2026-01-03T20:00:00Z")
    in_scope = [f for f in flat.values() if lo <= f["ts_us"] < hi]
    assert frame.height == len(in_scope) == manifest["row_count"]  # bus duplicates counted once
    assert set(frame["flow_id"].to_list()) == {f["flow_id"] for f in in_scope}
    assert frame["ts_utc"].to_list() == sorted(frame["ts_utc"].to_list())
    cut = parse_rfc3339("2026-01-10T00:00:00Z")
    labels: dict[str, tuple[int, str]] = {}
    for stream, e in simulate(run):
        if stream == LABELS:
            observed = parse_rfc3339(e["payload"]["observed_time"])
            flow = e["payload"]["flow_id"]
            if observed <= cut and (flow not in labels or observed >= labels[flow][0]):
                labels[flow] = (observed, e["payload"]["label"])
    all_events = list(flat.values())
    rows = frame.to_dicts()
    for row in random.Random(2).sample(rows, 40):
        expected_label = labels.get(row["flow_id"], (None, None))[1]
        assert row["label"] == expected_label
        ts = parse_rfc3339(row["ts_utc"])
        for name, version in GROUPS:
            key = row[KEY_FIELD[name]]
            if key is None:
                continue
            expected, _ = reference.features(all_events, f"{name}@{version}", key, ts)
            for feature, value in expected.items():
                assert row[f"{name}__v{version.replace('.', '_')}__{feature}"] == value, (feature, row["flow_id"])


def test_labels_observed_after_the_cut_off_never_leak(app, run):
    early = run_intent(app, intent(run, app, request_id="early", label_as_of="2026-01-03T06:00:00Z"))
    late = run_intent(app, intent(run, app, request_id="late", label_as_of="2026-02-01T00:00:00Z"))
    import polars as pl

    early_rows = pl.read_parquet(app.store.get(early["files"][0]["key"]))
    late_rows = pl.read_parquet(app.store.get(late["files"][0]["key"]))
    cut = "2026-01-03T06:00:00.000000Z"
    observed = early_rows["label_observed_time_utc"].drop_nulls().to_list()
    assert observed and all(t <= cut for t in observed)
    assert late_rows["label"].null_count() < early_rows["label"].null_count()
    assert early["dataset_fingerprint"] != late["dataset_fingerprint"]


def test_same_intent_twice_gives_the_same_fingerprint_and_identical_bytes(app, run):
    first = run_intent(app, intent(run, app, request_id="a"))
    data_a = app.store.get(first["files"][0]["key"])
    again = run_intent(app, intent(run, app, request_id="a"))  # idempotent: the finished run's manifest
    assert again == first
    other = intent(run, app, request_id="b")
    from featureplane.offline.datasets import build_dataset

    rebuilt = build_dataset(app.lake, parse_intent(other, app.registry))
    assert rebuilt.manifest["dataset_fingerprint"] == first["dataset_fingerprint"]
    assert rebuilt.paths[0].read_bytes() == data_a
    rebuilt.discard()
    assert run_intent(app, other)["files"] == first["files"]


def test_request_id_conflict_and_stable_rejections(app, run):
    run_intent(app, intent(run, app, request_id="c1"))
    changed = intent(run, app, request_id="c1", label_as_of="2026-01-20T00:00:00Z")
    with pytest.raises(IntentRejected) as exc:
        run_intent(app, changed)
    assert exc.value.reason_code == "REQUEST_ID_CONFLICT"
    bad_cases = {
        "UNKNOWN_INTENT_KIND": {"intent_kind": "train_model"},
        "UNKNOWN_GROUP": {"feature_groups": [{"group_name": "txn_velocity", "group_version": "9.9"}]},
        "INVALID_PINS": {"context_pins": {**run.pins(), "run_id": "../etc"}},
        "INVALID_SCOPE": {"observation_scope": {"ts_from_utc": "2026-01-04T00:00:00Z",
                                                "ts_to_utc": "2026-01-03T00:00:00Z"}},
        "MISSING_REPLAY_BASIS": {"replay_basis": None},
        "INVALID_BASIS": {"replay_basis": {"stream_name": TRAFFIC, "watermark_basis": {"0": -1}}},
    }
    for code, change in bad_cases.items():
        body = {**intent(run, app, request_id="x"), **change}
        if change.get("replay_basis", 0) is None:
            body.pop("replay_basis")
        with pytest.raises(IntentRejected) as exc:
            parse_intent(body, app.registry)
        assert exc.value.reason_code == code


def test_replay_basis_beyond_the_archive_fails_closed_and_the_run_is_failed(app, run):
    ends = app.bus.end_offsets(TRAFFIC)
    beyond = {"stream_name": TRAFFIC, "watermark_basis": {str(p): o + 1 for p, o in sorted(ends.items())}}
    body = intent(run, app, request_id="too_far", basis=beyond)
    with pytest.raises(FpError) as exc:
        run_intent(app, body)
    assert exc.value.reason_code == "REPLAY_BASIS_INCOMPLETE"
    ledger = RunLedger(app.db)
    key = run_key_for("too_far")
    assert ledger.get(key).state == "FAILED"
    assert [e[1] for e in ledger.events(key)] == ["QUEUED", "RUNNING", "FAILED"]
    with pytest.raises(IllegalTransition):
        ledger.transition(key, "RUNNING")
    with app.db.transaction() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM ofs_run_events")
    # a basis inside the archive (a prefix of it) builds, and only from events inside it
    half = {"stream_name": TRAFFIC, "watermark_basis": {str(p): o // 2 for p, o in sorted(ends.items())}}
    manifest = run_intent(app, intent(run, app, request_id="half", basis=half))
    assert manifest["row_count"] > 0
    assert archive_progress(app.lake, TRAFFIC) == ends


def test_publish_failure_leaves_publish_pending_and_a_publish_retry_finishes(app, run, monkeypatch):
    body = intent(run, app, request_id="pub")
    original = app.store.put

    def failing_put(key, data):
        if key.endswith("manifest.json"):
            raise OSError("disk full")
        return original(key, data)

    monkeypatch.setattr(app.store, "put", failing_put)
    with pytest.raises(FpError) as exc:
        run_intent(app, body)
    assert exc.value.reason_code == "PUBLISH_FAILED"
    ledger = RunLedger(app.db)
    assert ledger.get(run_key_for("pub")).state == "PUBLISH_PENDING"
    monkeypatch.setattr(app.store, "put", original)
    manifest = run_intent(app, body)
    run_row = ledger.get(run_key_for("pub"))
    assert (run_row.state, run_row.full_attempts, run_row.publish_attempts) == ("DONE", 1, 1)
    assert json.loads(app.store.get(f"datasets/{manifest['manifest_id']}/manifest.json")) == manifest
    from tests.test_contracts import validator

    check = validator("dataset_manifest.schema.json")
    assert check.is_valid(manifest), list(check.iter_errors(manifest))[:1]


def test_key_shards_and_time_chunks_change_no_row_and_a_process_pool_no_byte(app, run, monkeypatch):
    """The build in many units (3 key shards, chunks of 60 rows, units in 2 spawned processes)
    writes, file after file, exactly the rows of the build in one unit; the same units run
    sequentially write the same bytes."""
    import polars as pl

    import featureplane.offline.datasets as datasets
    from featureplane.offline.shards import chunk_bounds

    parsed = parse_intent(intent(run, app), app.registry)
    whole = datasets.build_dataset(app.lake, parsed)
    assert len(whole.paths) == 1
    expected = pl.read_parquet(whole.paths[0])
    whole.discard()

    monkeypatch.setattr(datasets, "shard_count", lambda events: 3)
    monkeypatch.setattr(datasets, "chunk_bounds", lambda times, lo, hi: chunk_bounds(times, lo, hi, rows=60))
    steps: list[tuple[str, int]] = []
    pooled = datasets.build_dataset(app.lake, parsed, lambda name, total: steps.append((name, total)), jobs=2)
    sequential = datasets.build_dataset(app.lake, parsed)
    try:
        assert len(pooled.paths) >= 4  # several chunks
        assert [p.read_bytes() for p in pooled.paths] == [p.read_bytes() for p in sequential.paths]
        assert pooled.manifest == sequential.manifest
        parts = [pl.read_parquet(p) for p in pooled.paths]
        assert all(part.height > 0 for part in parts)
        assert pl.concat(parts).equals(expected)
        assert pooled.manifest["row_count"] == expected.height
        assert pooled.manifest["dataset_fingerprint"] == whole.manifest["dataset_fingerprint"]
        # the progress: every unit reported once, against the total the plan announced
        total = steps[0][1]
        assert len(steps) == total == 4 + 3 * 5 + len(pooled.paths)
    finally:
        pooled.discard()
        sequential.discard()


@pytest.mark.parametrize("colliding", [False, True])
def test_a_chunk_finds_exactly_its_labels(colliding):
    """`labels_of` + the join on the flow give each row the label of its own flow, as a plain join
    does, also when every flow hash collides (then every label is a candidate and the join on the
    flow itself decides)."""
    from unittest import mock

    import polars as pl

    from featureplane.offline import shards

    rng = random.Random(5)
    labels = pl.DataFrame({"platform_run_id": [rng.choice(["r1", "r2"]) for _ in range(300)],
                           "flow_id": [f"f{i}" for i in range(300)],
                           "label": [rng.choice(["fraud", "legit"]) for _ in range(300)],
                           "label_observed_us": list(range(300))}).unique(["platform_run_id", "flow_id"])
    rows = pl.DataFrame({"platform_run_id": [rng.choice(["r1", "r2"]) for _ in range(500)],
                         "flow_id": [f"f{rng.randrange(450)}" for _ in range(500)]}).with_row_index("uid")
    expected = rows.join(labels, on=["platform_run_id", "flow_id"], how="left").sort("uid")
    hashed = (lambda: pl.lit(7, pl.UInt64).alias(shards.FLOW_HASH)) if colliding else shards._flow_hash
    with mock.patch.object(shards, "_flow_hash", hashed):
        index = shards.label_index(labels)
        got = rows.join(shards.labels_of(rows, index), on=["platform_run_id", "flow_id"], how="left").sort("uid")
    assert got.equals(expected)
    assert expected["label"].null_count() not in (0, rows.height)  # rows with and without a label


def test_units_run_two_at_a_time_in_order_and_a_failure_stops_the_rest():
    """`run_units` in process: results in the order of the units whatever order they finish in, one
    `done` per unit; a unit that fails raises, and units not yet started never start."""
    import threading
    import time

    from featureplane.offline.shards import run_units

    started: list[int] = []
    lock = threading.Lock()

    def unit(n: int, fail: bool = False) -> int:
        with lock:
            started.append(n)
        time.sleep(0.05 if n == 0 else 0.01)  # the first finishes last
        if fail:
            raise ValueError(n)
        return n * n

    done: list[None] = []
    assert run_units(unit, [(n,) for n in range(6)], 1, lambda: done.append(None)) == [0, 1, 4, 9, 16, 25]
    assert len(done) == 6
    started.clear()
    with pytest.raises(ValueError):
        run_units(unit, [(0, True), *[(n,) for n in range(1, 200)]], 1)
    assert len(started) < 199  # the failure cancelled what had not started
