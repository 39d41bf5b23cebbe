"""One contract suite for every bus backend (embedded log, Kinesis on moto), plus crash safety."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featureplane.online.bus import embedded
from featureplane.online.bus.base import Backlog, BusCorrupt, partition_for
from featureplane.online.bus.embedded import EmbeddedBus
from featureplane.schemas.streams import TRAFFIC


@pytest.fixture(params=["embedded", "kinesis", "kinesis-56-digit"])
def bus(request, tmp_path):
    """Each backend; Kinesis twice: moto's own numbering (1, 2, 3) and real 56-digit sequence numbers."""
    if request.param == "embedded":
        return EmbeddedBus(tmp_path / "bus", 4)
    endpoint = request.getfixturevalue("moto_endpoint" if request.param == "kinesis" else "realistic_moto_endpoint")
    import boto3

    from featureplane.online.bus.kinesis import KinesisEventBus

    client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=endpoint)
    name_bus = KinesisEventBus(client, 4)
    # each test its own stream state: delete leftovers from earlier tests
    with contextlib.suppress(client.exceptions.ResourceNotFoundException):
        client.delete_stream(StreamName=TRAFFIC, EnforceConsumerDeletion=True)
    return name_bus


def read_all(bus, stream, partition, start=0, batch=3):
    out, offset = [], start
    while True:
        b = bus.read(stream, partition, offset, batch)
        out.extend(b.records)
        offset = b.next_offset
        if b.caught_up:
            return out


def test_partitioner_is_stable_and_not_pythons_hash():
    # golden values (first 8 bytes of sha256, big-endian, mod n), pinned so that a change of the
    # partitioner, which would reroute every key of a running system, fails here
    assert [partition_for(k, 4) for k in ("flow_1", "flow_2", "flow_3", "e_merchant_m1", "abc")] == [2, 2, 2, 1, 2]
    assert [partition_for(k, 7) for k in ("flow_1", "flow_2", "flow_3")] == [6, 0, 5]
    spread = [partition_for(f"flow_{i}", 4) for i in range(4000)]
    assert all(900 < spread.count(p) < 1100 for p in range(4))  # keys spread evenly


def test_append_and_read_back_in_order(bus):
    bus.ensure_stream(TRAFFIC)
    items = [(f"k{i % 7}", f"v{i}".encode()) for i in range(40)]
    positions = bus.append(TRAFFIC, items)
    assert len(positions) == 40
    by_key = {key: partition for (key, _), (partition, _) in zip(items, positions, strict=True)}
    assert len(set(by_key.values())) > 1 and all(  # every record of a key lands in one partition
        partition == by_key[key] for (key, _), (partition, _) in zip(items, positions, strict=True))
    for partition in bus.partitions(TRAFFIC):
        records = read_all(bus, TRAFFIC, partition)
        expected = [v for (k, v), (p, _) in zip(items, positions, strict=True) if p == partition]
        assert [r.value for r in records] == expected
        offsets = [r.offset for r in records]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        # positions reported by append are the ones read back
        assert {(partition, r.offset) for r in records} == {pos for pos in positions if pos[0] == partition}


def test_read_from_offset_resumes_exactly(bus):
    bus.ensure_stream(TRAFFIC)
    positions = bus.append(TRAFFIC, [("same-key", f"v{i}".encode()) for i in range(10)])
    partition = positions[0][0]
    first = bus.read(TRAFFIC, partition, 0, 4)
    rest = read_all(bus, TRAFFIC, partition, first.next_offset)
    assert [r.value for r in first.records + rest] == [f"v{i}".encode() for i in range(10)]


def test_backlog_says_what_waits_after_a_position(bus):
    bus.ensure_stream(TRAFFIC)
    positions = bus.append(TRAFFIC, [("same-key", f"v{i}".encode()) for i in range(5)])
    partition = positions[0][0]
    start = bus.backlog(TRAFFIC, partition, 0)
    assert start.waiting and start.records in (5, None)  # Kinesis cannot count without reading
    middle = bus.read(TRAFFIC, partition, 0, 2)
    assert bus.backlog(TRAFFIC, partition, middle.next_offset).waiting
    end = read_all(bus, TRAFFIC, partition, middle.next_offset)[-1].offset + 1
    assert end == positions[-1][1] + 1
    assert bus.backlog(TRAFFIC, partition, end) == Backlog(False, 0, bus.backlog(TRAFFIC, partition, end).millis_behind)
    assert bus.backlog(TRAFFIC, partition, end).millis_behind in (0, None)


def test_real_kinesis_sequence_numbers_stay_exact(realistic_moto_endpoint):
    """56-digit sequence numbers: beyond int64 and 2^53, read back and resumed from exactly."""
    import boto3

    from featureplane.online.bus.kinesis import KinesisEventBus

    client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=realistic_moto_endpoint)
    with contextlib.suppress(client.exceptions.ResourceNotFoundException):
        client.delete_stream(StreamName=TRAFFIC, EnforceConsumerDeletion=True)
    bus = KinesisEventBus(client, 4)
    bus.ensure_stream(TRAFFIC)
    positions = bus.append(TRAFFIC, [("one-key", f"v{i}".encode()) for i in range(6)])
    offsets = [o for _, o in positions]
    assert all(len(str(o)) == 56 and o > 2**63 for o in offsets)
    assert all(b - a > 1 for a, b in itertools.pairwise(offsets))  # gaps, as on Kinesis
    partition = positions[0][0]
    resumed = bus.read(TRAFFIC, partition, offsets[2] + 1, 10)  # exclusive-next of the third record
    assert [r.offset for r in resumed.records] == offsets[3:]
    assert resumed.next_offset == offsets[-1] + 1


def test_embedded_offsets_are_dense_integers(tmp_path):
    bus = EmbeddedBus(tmp_path / "bus", 2)
    positions = bus.append(TRAFFIC, [("k", b"a"), ("k", b"b"), ("k", b"c")])
    assert [o for _, o in positions] == [0, 1, 2]
    assert bus.end_offsets(TRAFFIC)[positions[0][0]] == 3


def test_unknown_stream_is_refused(tmp_path):
    from featureplane.pipelines.errors import TerminalError

    bus = EmbeddedBus(tmp_path / "bus", 2)
    with pytest.raises(TerminalError):
        bus.append("../../etc", [("k", b"x")])


def test_concurrent_appenders_lose_nothing(tmp_path):
    bus = EmbeddedBus(tmp_path / "bus", 2)
    bus.ensure_stream(TRAFFIC)

    def writer(w: int) -> None:
        own = EmbeddedBus(tmp_path / "bus", 2)
        for i in range(50):
            own.append(TRAFFIC, [("k", f"{w}-{i}".encode())])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    partition = partition_for("k", 2)
    values = [r.value.decode() for r in read_all(bus, TRAFFIC, partition, batch=1000)]
    assert sorted(values) == sorted(f"{w}-{i}" for w in range(4) for i in range(50))
    for w in range(4):  # each writer's own order is kept
        mine = [v for v in values if v.startswith(f"{w}-")]
        assert mine == [f"{w}-{i}" for i in range(50)]


def test_kill_9_mid_append_never_leaves_a_torn_record(tmp_path):
    root = tmp_path / "bus"
    script = textwrap.dedent(f"""
        import sys
        from featureplane.online.bus.embedded import EmbeddedBus
        bus = EmbeddedBus({str(root)!r}, 1)
        bus.ensure_stream({TRAFFIC!r})
        print("ready", flush=True)
        i = 0
        while True:
            bus.append({TRAFFIC!r}, [("k", (str(i) * 5000).encode()) for _ in range(20)])
            i += 1
    """)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                cwd=Path(__file__).parent.parent, env=os.environ.copy())
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.1 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        bus = EmbeddedBus(root, 1)
        records = read_all(bus, TRAFFIC, 0, batch=500)  # every visible record passes its checksum
        assert [r.offset for r in records] == list(range(len(records)))
        for r in records:
            if r.value == b"after-crash":
                continue
            text = r.value.decode()
            assert len(text) % 5000 == 0 and text == text[: len(text) // 5000] * 5000
        # the next appender truncates any torn tail and continues densely
        (_p, o), = bus.append(TRAFFIC, [("k", b"after-crash")])
        assert o == len(records)
        assert bus.read(TRAFFIC, 0, o, 1).records[0].value == b"after-crash"


def _outcome(bus: EmbeddedBus, partition: int, offset: int, count: int) -> tuple:
    try:
        batch = bus.read(TRAFFIC, partition, offset, count)
    except BusCorrupt as exc:
        return ("corrupt", exc.offset, exc.byte_start, exc.byte_end, str(exc))
    return ("read", batch.offsets, batch.values, batch.next_offset, batch.caught_up)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12), data=st.data())
def test_a_batch_checked_at_once_reads_as_record_by_record_checks_do(tmp_path, sizes, data):
    """The whole-batch frame checks of a read agree with `_frame`'s record-by-record ones on any
    damage (bytes of the log flipped, index entries moved, the log cut short): the same records,
    or the same corrupt position and reason."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # each example a bus of its own
    bus = EmbeddedBus(root, 1)
    bus.ensure_stream(TRAFFIC)
    bus.append(TRAFFIC, [("k", bytes([65 + n % 26]) * size) for n, size in enumerate(sizes)])
    log, idx = root / TRAFFIC / "0.log", root / TRAFFIC / "0.idx"
    damage = data.draw(st.sampled_from(["none", "log byte", "index entry", "cut"]))
    if damage == "log byte":
        blob = bytearray(log.read_bytes())
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] ^= data.draw(st.integers(1, 255))
        log.write_bytes(bytes(blob))
    elif damage == "index entry":
        entries = bytearray(idx.read_bytes())
        at, other = (data.draw(st.integers(0, len(sizes) - 1)) * 8 for _ in range(2))
        moved = data.draw(st.one_of(st.integers(0, log.stat().st_size + 20),  # anywhere, or at another record
                                    st.just(int.from_bytes(entries[other:other + 8], "big"))))
        entries[at:at + 8] = moved.to_bytes(8, "big")
        idx.write_bytes(bytes(entries))
    elif damage == "cut":
        os.truncate(log, data.draw(st.integers(0, log.stat().st_size)))
    offset = data.draw(st.integers(0, len(sizes) - 1))
    count = data.draw(st.integers(1, len(sizes) + 1))
    checked_at_once = _outcome(bus, 0, offset, count)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "_intact_payloads", lambda *_args: None)  # record by record only
        assert _outcome(bus, 0, offset, count) == checked_at_once
