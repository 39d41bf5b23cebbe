"""The Delta archive (each record once across crashes), the audit export and duckdb over the lakes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from featureplane.lake import archive
from featureplane.lake.archive import (
    ArchiveWriter,
    archive_progress,
    archive_schema,
    read_basis,
    table_name,
    typed_rows,
)
from featureplane.lake.delta import DeltaLake, open_lake
from featureplane.lake.query import run_query
from featureplane.online.admission import Publisher, encode_event
from featureplane.runtime.settings import AwsCredentials, S3ObjectStore
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers
from featureplane.schemas.streams import STREAMS, TRAFFIC
from tests.helpers import PINS, T0, S, kill_9_repeatedly, lines, txn

ROOT = Path(__file__).resolve().parent.parent


def _positions(lake: DeltaLake, stream: str) -> Counter:
    table = lake.read(table_name(stream), columns=["partition", "offset"])
    if table is None:
        return Counter()
    offsets = map(int, table.column("offset").to_pylist())  # decimal strings in the archive
    return Counter(zip(table.column("partition").to_pylist(), offsets, strict=True))


def _bus_positions(bus, stream: str) -> set:
    return {(p, o) for p, end in bus.end_offsets(stream).items() for o in range(end)}


def _publish(app, n: int, start: int = 0) -> None:
    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(start + i, T0 + i * S, account=f"a{i % 7}")
                                                      for i in range(n)]), "test")


def test_each_record_archived_once_across_repeated_runs(app):
    _publish(app, 120)
    writer = ArchiveWriter(app.db, app.bus, app.lake, max_records_per_commit=50)
    writer.archive_stream(TRAFFIC)
    writer.archive_stream(TRAFFIC)  # nothing new: no commit
    _publish(app, 30, start=500)
    writer.archive_stream(TRAFFIC)
    seen = _positions(app.lake, TRAFFIC)
    assert set(seen) == _bus_positions(app.bus, TRAFFIC) and max(seen.values()) == 1
    assert archive_progress(app.lake, TRAFFIC) == app.bus.end_offsets(TRAFFIC)
    raw = read_basis(app.lake, TRAFFIC, {0: 1})
    assert raw.num_rows == 1 and raw.column("value")[0].as_py() == app.bus.read(TRAFFIC, 0, 0, 1).records[0].value


def test_crash_between_file_write_and_commit_leaves_nothing_visible(app, monkeypatch):
    _publish(app, 80)
    original = DeltaLake.append

    def crashing_append(self, name, data, marker=None, marker_key="fp.progress"):
        def batches():
            yield from (data.to_batches() if isinstance(data, pa.Table) else data)
            raise RuntimeError("crash after the data files, before the commit")

        original(self, name, pa.RecordBatchReader.from_batches(data.schema, batches()), marker, marker_key)

    monkeypatch.setattr(DeltaLake, "append", crashing_append)
    with pytest.raises(Exception, match="crash"):
        ArchiveWriter(app.db, app.bus, app.lake).archive_stream(TRAFFIC)
    assert archive_progress(app.lake, TRAFFIC) == {} and not _positions(app.lake, TRAFFIC)
    monkeypatch.setattr(DeltaLake, "append", original)
    ArchiveWriter(app.db, app.bus, app.lake).archive_stream(TRAFFIC)
    seen = _positions(app.lake, TRAFFIC)
    assert set(seen) == _bus_positions(app.bus, TRAFFIC) and max(seen.values()) == 1


def test_crash_right_after_the_commit_does_not_duplicate(app):
    _publish(app, 90)
    writer = ArchiveWriter(app.db, app.bus, app.lake, max_records_per_commit=40)

    def die(stream, count):
        raise RuntimeError("crash after the commit")

    writer.on_progress = die
    with pytest.raises(RuntimeError):
        writer.archive_stream(TRAFFIC)
    assert sum(_positions(app.lake, TRAFFIC).values()) == 40
    ArchiveWriter(app.db, app.bus, app.lake, max_records_per_commit=40).archive_stream(TRAFFIC)
    seen = _positions(app.lake, TRAFFIC)
    assert set(seen) == _bus_positions(app.bus, TRAFFIC) and max(seen.values()) == 1


def test_a_second_writer_on_the_same_stream_is_kept_out(app):
    _publish(app, 20)
    with app.db.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(7301, hashtext(%s))", (TRAFFIC,))
        stats = ArchiveWriter(app.db, app.bus, app.lake).archive_stream(TRAFFIC)
        assert stats.records == 0
    assert ArchiveWriter(app.db, app.bus, app.lake).archive_stream(TRAFFIC).records == 20


def test_kill_9_during_archiving_then_restart_archives_each_record_once(app, fp_home):
    run_simulation(transactions=1500, seed=5, out=None, publish=True, progress=False, app=app)
    script = (
        "import os\n"
        "from featureplane.runtime.app import App\nfrom featureplane.lake.archive import ArchiveWriter\n"
        "from featureplane.schemas.streams import STREAMS\n"
        "app = App()\nw = ArchiveWriter(app.db, app.bus, app.lake, max_records_per_commit=97, read_batch=97)\n"
        "w.on_progress = lambda s, n: print('c', flush=True)\n"
        "while True:\n    w.archive_all(list(STREAMS))\n"
    )
    kill_9_repeatedly(app, fp_home, script, (0.0, 0.4, 0.9), wait_lines=3)  # a few commits landed first
    ArchiveWriter(app.db, app.bus, app.lake).archive_all(list(STREAMS))
    for stream in STREAMS:
        seen = _positions(app.lake, stream)
        assert set(seen) == _bus_positions(app.bus, stream), stream
        assert max(seen.values()) == 1, stream


def _archived_rows(lake: DeltaLake, stream: str) -> list[dict]:
    rows = lake.read(table_name(stream)).to_pylist()
    return sorted(rows, key=lambda row: (row["partition"], int(row["offset"])))


def _rows_of_the_bus(app, stream: str, decoder) -> list[dict]:
    """The archive rows of every record on the bus, made here from a read of the bus and `decoder`."""
    records = [r for p in app.bus.partitions(stream) for r in app.bus.read(stream, p, 0, 10**6).triples()]
    rows = typed_rows(stream, records, archive_schema(stream), decoder(records)).to_pylist()
    return sorted(rows, key=lambda row: (row["partition"], int(row["offset"])))


def test_the_worker_archives_the_traffic_it_applies_from_what_ofp_read_and_decoded(app, monkeypatch):
    """`fp worker` archives the traffic OFP applies from OFP's own reads and decoded frames (the
    tap): the archive holds exactly what an archive pass alone makes of the bus (bytes, positions,
    typed columns and reasons of rejected records), each position once, and the archive never
    decodes the traffic a second time."""
    decode = archive.TYPED_DECODERS[TRAFFIC]
    events = [txn(1, T0, amount=2**63), *[txn(10 + i, T0 + i * S, account=f"a{i % 3}") for i in range(60)]]
    app.bus.append(TRAFFIC, [(e["payload"]["flow_id"], encode_event(e)) for e in events])
    app.bus.append(TRAFFIC, [("flow_x", b"{not json")])

    def decoded_again(records):
        raise AssertionError(f"the archive decoded {len(records)} traffic records a second time")

    monkeypatch.setitem(archive.TYPED_DECODERS, TRAFFIC, decoded_again)
    monkeypatch.setattr(archive, "TAP_COMMIT_RECORDS", 9)  # several commits, some spanning partitions
    run_workers(app, until_idle=True)
    rows = _archived_rows(app.lake, TRAFFIC)
    assert rows == _rows_of_the_bus(app, TRAFFIC, decode)
    assert {r["reject_reason"] for r in rows} == {None, "AMOUNT_OUT_OF_RANGE", "MALFORMED_RECORD"}
    assert archive_progress(app.lake, TRAFFIC) == app.bus.end_offsets(TRAFFIC)
    assert len(app.lake.table(table_name(TRAFFIC)).history()) > 2


def test_what_the_tap_cannot_take_the_archive_pass_reads_from_the_bus(app, monkeypatch):
    """Batches that do not continue the archive where it ends (it is ahead of OFP), and everything
    after a tap commit that failed, are archived by the archive's own pass: nothing lost, nothing
    twice."""
    decode = archive.TYPED_DECODERS[TRAFFIC]
    decoded: list[int] = []

    def counted(records):
        decoded.append(len(records))
        return decode(records)

    monkeypatch.setitem(archive.TYPED_DECODERS, TRAFFIC, counted)
    _publish(app, 40)
    ArchiveWriter(app.db, app.bus, app.lake).archive_stream(TRAFFIC)  # the archive is ahead of OFP
    _publish(app, 30, start=100)
    decoded.clear()
    run_workers(app, until_idle=True)
    assert sum(decoded) == 30  # OFP's batches start before the archive's end: the pass read the 30
    assert _archived_rows(app.lake, TRAFFIC) == _rows_of_the_bus(app, TRAFFIC, decode)

    original, failed = DeltaLake.append, []

    def fails_once(self, *args, **kwargs):
        if not failed:
            failed.append(True)
            raise OSError("the object store is away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaLake, "append", fails_once)
    monkeypatch.setattr(archive, "TAP_COMMIT_RECORDS", 5)
    _publish(app, 50, start=200)
    decoded.clear()
    run_workers(app, until_idle=True)
    assert failed and sum(decoded) == 50  # the tap's first commit failed: the pass read all 50 again
    assert _archived_rows(app.lake, TRAFFIC) == _rows_of_the_bus(app, TRAFFIC, decode)
    assert archive_progress(app.lake, TRAFFIC) == app.bus.end_offsets(TRAFFIC)


def test_archive_on_s3_through_moto(app, moto_endpoint):
    settings = S3ObjectStore("s3", bucket="fp-archive-test", prefix="fp", region="us-east-1",
                             endpoint_url=moto_endpoint, credentials=AwsCredentials(None, None, None))
    from featureplane.lake.object_store import s3_client

    s3_client(settings).create_bucket(Bucket="fp-archive-test")
    lake = open_lake(settings)
    assert lake.root_uri == "s3://fp-archive-test/fp/delta" and "AWS_ENDPOINT_URL" not in repr(lake)
    _publish(app, 60)
    ArchiveWriter(app.db, app.bus, lake, max_records_per_commit=25).archive_stream(TRAFFIC)
    ArchiveWriter(app.db, app.bus, lake).archive_stream(TRAFFIC)
    seen = _positions(lake, TRAFFIC)
    assert set(seen) == _bus_positions(app.bus, TRAFFIC) and max(seen.values()) == 1
    assert archive_progress(lake, TRAFFIC) == app.bus.end_offsets(TRAFFIC)


def test_duckdb_views_over_archive_snapshots_audit_and_datasets(app):
    from featureplane.online.serving import FeatureServer
    from featureplane.online.snapshot_store import flush_outbox
    from tests.helpers import request

    _publish(app, 40)
    app.bus.append(TRAFFIC, [("k", b"not json")])
    run_workers(app, until_idle=True)
    server = FeatureServer(app.db, app.bus, app.registry)
    response = server.get_features(request([("account", "a1")], [("txn_velocity", "2.0")], T0 + 100 * S))
    server.close()
    flush_outbox(app.db, app.store, app.lake)
    run_workers(app, until_idle=True)
    q = lambda sql: run_query(app.lake, app.store, sql)["rows"]  # noqa: E731
    assert q("SELECT count(*), count(DISTINCT event_id) FROM archive_traffic") == [[41, 40]]
    assert q("SELECT reason_code, \"offset\" IS NOT NULL FROM apply_failures") == [["MALFORMED_RECORD", True]]
    digest = response["snapshot"]["feature_snapshot_hash"]
    assert q("SELECT snapshot_hash FROM snapshots") == [[digest]]
    expected = response["snapshot"]["by_key"][0]["by_group"][0]["features"]["txn_count_24h"]
    assert q("SELECT value FROM snapshot_features WHERE feature_name = 'txn_count_24h'") == [[float(expected)]]
    with pytest.raises(Exception, match="views here now"):
        q("SELECT * FROM no_such_view")


def test_an_archive_with_int64_offsets_is_appended_in_its_type_and_read_as_text(app):
    """An archive written before decimal offsets keeps its column type; replay reads it as text."""
    from featureplane.schemas.streams import FLOW_ANCHOR

    app.bus.append(FLOW_ANCHOR, [("k", b"a"), ("k", b"b")])
    app.lake.append(table_name(FLOW_ANCHOR), pa.table({"partition": pa.array([], pa.int32()),
                                                       "offset": pa.array([], pa.int64()),
                                                       "value": pa.array([], pa.binary())}))
    ArchiveWriter(app.db, app.bus, app.lake).archive_stream(FLOW_ANCHOR)
    table = app.lake.table(table_name(FLOW_ANCHOR))
    assert pa.schema(table.schema().to_arrow()).field("offset").type == pa.int64()
    partition = next(p for p, end in app.bus.end_offsets(FLOW_ANCHOR).items() if end)
    read = read_basis(app.lake, FLOW_ANCHOR, app.bus.end_offsets(FLOW_ANCHOR)).to_pylist()
    assert read == [{"partition": partition, "offset": "0", "value": b"a"},
                    {"partition": partition, "offset": "1", "value": b"b"}]


def test_fp_archive_rebuild_moves_an_old_archive_to_the_current_layout_and_changes_no_answer(app, fp_home):
    """An archive from before typed columns and decimal offsets (int64 offsets, bytes only) is
    rewritten in the current layout by `fp archive rebuild`: the same records at the same positions,
    the same progress, typed columns filled by the decoder, the same dataset before and after."""
    import json

    from featureplane.lake.archive import archive_schema, has_typed_columns
    from featureplane.offline.ofs import run_intent
    from featureplane.offline.parity import run_parity
    from featureplane.online.snapshot_store import flush_outbox
    from tests.helpers import request, run_fp, serve

    _publish(app, 30)
    app.bus.append(TRAFFIC, [("k", b"not json")])
    old = pa.schema([("partition", pa.int32()), ("offset", pa.int64()), ("value", pa.binary())])
    app.lake.append(table_name(TRAFFIC), old.empty_table())
    run_workers(app, until_idle=True)
    assert not has_typed_columns(app.lake, TRAFFIC)
    ends = app.bus.end_offsets(TRAFFIC)
    before = read_basis(app.lake, TRAFFIC, ends).to_pylist()
    progress = archive_progress(app.lake, TRAFFIC)
    intent = {"request_id": "before", "intent_kind": "dataset_build",
              "context_pins": PINS,
              "replay_basis": {"stream_name": TRAFFIC, "watermark_basis": {str(p): o for p, o in ends.items()}},
              "feature_groups": [{"group_name": "txn_velocity", "group_version": "2.0"}],
              "label_as_of_utc": "2026-12-31T00:00:00Z",
              "observation_scope": {"ts_from_utc": "2020-01-01T00:00:00Z", "ts_to_utc": "2030-01-01T00:00:00Z"}}
    first = run_intent(app, intent)
    first_bytes = [app.store.get(f["key"]) for f in first["files"]]
    for account in ("a1", "a3"):  # parity rebuilds served snapshots from the old layout too
        served = serve(app, request([("account", account)], [("txn_velocity", "2.0")], T0 + 40 * S))
        assert served["kind"] == "get_features_response", served
    flush_outbox(app.db, app.store, app.lake)
    checked = run_parity(app.db, app.store, app.lake, app.registry)
    assert (checked["checked"], checked["matched"]) == (2, 2), checked

    code, out, err = run_fp(app, fp_home, "archive", "rebuild", "--stream", TRAFFIC)
    assert code == 0, out + err
    assert json.loads(out)["archives"] == [{"stream": TRAFFIC, "rebuilt": True, "records": 31}]
    table = app.lake.table(table_name(TRAFFIC))
    assert pa.schema(table.schema().to_arrow()).names == archive_schema(TRAFFIC).names
    assert has_typed_columns(app.lake, TRAFFIC)
    assert read_basis(app.lake, TRAFFIC, ends).to_pylist() == before
    assert archive_progress(app.lake, TRAFFIC) == progress
    rejected = table.to_pyarrow_dataset().to_table(columns=["reject_reason"]).column(0).drop_null().to_pylist()
    assert rejected == ["MALFORMED_RECORD"]
    again = run_intent(app, {**intent, "request_id": "after"})
    assert again["dataset_fingerprint"] == first["dataset_fingerprint"]
    assert [app.store.get(f["key"]) for f in again["files"]] == first_bytes
    checked = run_parity(app.db, app.store, app.lake, app.registry)
    assert (checked["checked"], checked["matched"]) == (2, 2), checked
    code, out, _ = run_fp(app, fp_home, "archive", "rebuild", "--stream", TRAFFIC)  # nothing left to do
    assert json.loads(out)["archives"][0]["rebuilt"] is False
    _publish(app, 5, start=30)  # and the worker appends to it in the new layout
    run_workers(app, until_idle=True)
    assert archive_progress(app.lake, TRAFFIC) == app.bus.end_offsets(TRAFFIC)
