import json

from featureplane.online.admission import Publisher
from featureplane.online.bus.embedded import EmbeddedBus
from featureplane.schemas.streams import LABELS, TRAFFIC
from tests.helpers import T0, lines, txn


def quarantine(db):
    with db.transaction() as conn:
        return conn.execute("SELECT line_no, reason_code FROM admission_quarantine ORDER BY quarantine_id").fetchall()


def bus_values(bus):
    out = []
    for p in bus.partitions(TRAFFIC):
        out += [json.loads(r.value) for r in bus.read(TRAFFIC, p, 0, 10_000).records]
    return out


def test_publish_is_idempotent_and_quarantines(db, tmp_path):
    bus = EmbeddedBus(tmp_path / "bus", 2)
    pub = Publisher(db, bus)
    events = [txn(i, T0 + i) for i in range(5)]
    bad = ["{not json", json.dumps({**txn(9, T0), "schema_version": "v9"})]
    first = pub.publish(TRAFFIC, lines(events) + bad, "f1")
    assert first.summary() == {"published": 5, "duplicates": 0, "rejected": 2}
    assert [r for _, r in quarantine(db)] == ["MALFORMED_JSON", "UNKNOWN_SCHEMA_VERSION"]
    # the same events again: duplicates, nothing appended
    again = pub.publish(TRAFFIC, lines(events), "f2")
    assert again.summary() == {"published": 0, "duplicates": 5, "rejected": 0}
    assert len(bus_values(bus)) == 5
    # same identity, other payload: quarantined as PAYLOAD_MISMATCH, the first admission stands
    changed = txn(0, T0, amount=999)
    mismatch = pub.publish(TRAFFIC, lines([changed]), "f3")
    assert mismatch.summary() == {"published": 0, "duplicates": 0, "rejected": 1}
    assert quarantine(db)[-1][1] == "PAYLOAD_MISMATCH"
    assert {e["payload"]["amount_minor"] for e in bus_values(bus)} == {100}


def test_in_file_duplicates_and_restamped_emit_time(db, tmp_path):
    bus = EmbeddedBus(tmp_path / "bus", 2)
    event = txn(1, T0)
    retry = {**event, "emitted_at_utc": "2026-01-03T12:00:05Z"}
    result = Publisher(db, bus).publish(TRAFFIC, lines([event, retry]), "f")
    assert result.summary() == {"published": 1, "duplicates": 1, "rejected": 0}


def test_wrong_stream_for_event_type_is_rejected(db, tmp_path):
    bus = EmbeddedBus(tmp_path / "bus", 2)
    result = Publisher(db, bus).publish(LABELS, lines([txn(1, T0)]), "f")
    assert result.summary() == {"published": 0, "duplicates": 0, "rejected": 1}
    assert quarantine(db)[0][1] == "STREAM_EVENT_TYPE_MISMATCH"


def test_positions_are_recorded_for_admitted_events(db, tmp_path):
    bus = EmbeddedBus(tmp_path / "bus", 2)
    Publisher(db, bus).publish(TRAFFIC, lines([txn(i, T0) for i in range(4)]), "f")
    with db.transaction() as conn:
        rows = conn.execute('SELECT event_id, partition, "offset" FROM admissions').fetchall()
    for event_id, partition, offset in rows:
        record = bus.read(TRAFFIC, partition, offset, 1).records[0]
        assert json.loads(record.value)["event_id"] == event_id
