"""The embedded bus: a durable, partitioned, append-only log under FP_HOME.

Layout per partition: `<root>/<stream>/<p>.log` holds records framed as
`[u32 length][u32 crc32][payload]`; `<p>.idx` holds one u64 byte position per offset. A record
is visible only once its index entry is complete, and the index entry is written only after
the record bytes are on disk. A crash (kill -9) mid-append therefore leaves at most an
invisible tail, which the next appender truncates under the partition's lock.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featureplane.online.bus.base import SKIPPED_RECORD, Backlog, BusCorrupt, ReadBatch, partition_for
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.positions import OffsetStyle
from featureplane.schemas.streams import stream_spec

HEADER = struct.Struct(">II")
INDEX_ENTRY = struct.Struct(">Q")


class EmbeddedBus:
    offset_style = OffsetStyle.INTEGER

    def __init__(self, root: Path | str, partitions: int) -> None:
        self.root = Path(root)
        self.partition_count = partitions

    def _dir(self, stream: str) -> Path:
        stream_spec(stream)  # only known stream names ever become paths
        return self.root / stream

    def ensure_stream(self, stream: str) -> None:
        directory = self._dir(stream)
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / "partitions"
        if meta.exists():
            existing = int(meta.read_text())
            if existing != self.partition_count:
                raise TerminalError(
                    "BUS_PARTITIONS_MISMATCH",
                    f"stream {stream} has {existing} partitions on disk, profile says {self.partition_count}",
                )
            return
        tmp = directory / "partitions.tmp"
        tmp.write_text(str(self.partition_count))
        os.replace(tmp, meta)
        for p in range(self.partition_count):
            (directory / f"{p}.log").touch()
            (directory / f"{p}.idx").touch()

    def partitions(self, stream: str) -> list[int]:
        return list(range(self.partition_count))

    # -- writing -----------------------------------------------------------------------
    def append(self, stream: str, items: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        self.ensure_stream(stream)
        by_partition: dict[int, list[int]] = defaultdict(list)
        for i, (key, _) in enumerate(items):
            by_partition[partition_for(key, self.partition_count)].append(i)
        positions: list[tuple[int, int]] = [(0, 0)] * len(items)
        for partition in sorted(by_partition):
            indices = by_partition[partition]
            first = self._append_partition(stream, partition, [items[i][1] for i in indices])
            for n, i in enumerate(indices):
                positions[i] = (partition, first + n)
        return positions

    def _append_partition(self, stream: str, partition: int, values: list[bytes]) -> int:
        directory = self._dir(stream)
        with open(directory / f"{partition}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            log_fd = os.open(directory / f"{partition}.log", os.O_RDWR | os.O_CREAT, 0o644)
            idx_fd = os.open(directory / f"{partition}.idx", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                count, data_end = self._recover(log_fd, idx_fd)
                frames = bytearray()
                entries = bytearray()
                position = data_end
                for value in values:
                    entries += INDEX_ENTRY.pack(position)
                    frames += HEADER.pack(len(value), zlib.crc32(value)) + value
                    position += HEADER.size + len(value)
                os.pwrite(log_fd, bytes(frames), data_end)
                os.fsync(log_fd)
                os.pwrite(idx_fd, bytes(entries), count * INDEX_ENTRY.size)
                os.fsync(idx_fd)
                return count
            finally:
                os.close(log_fd)
                os.close(idx_fd)

    @staticmethod
    def _recover(log_fd: int, idx_fd: int) -> tuple[int, int]:
        """Drop any torn tail; return (visible record count, end of visible data).

        A torn tail (bytes after the last indexed record, from a crash mid-append) is truncated. If
        the last indexed record itself is corrupt its true end is unknown: nothing is truncated and
        appends go after every byte on disk, so the corrupt record stays reportable.
        """
        idx_size = os.fstat(idx_fd).st_size
        count = idx_size // INDEX_ENTRY.size
        if idx_size != count * INDEX_ENTRY.size:
            os.ftruncate(idx_fd, count * INDEX_ENTRY.size)
        log_size = os.fstat(log_fd).st_size
        if count == 0:
            data_end = 0
        else:
            (last,) = INDEX_ENTRY.unpack(os.pread(idx_fd, INDEX_ENTRY.size, (count - 1) * INDEX_ENTRY.size))
            head = os.pread(log_fd, HEADER.size, last) if last <= log_size else b""
            length, crc = HEADER.unpack(head) if len(head) == HEADER.size else (log_size, None)
            data_end = last + HEADER.size + length
            intact = data_end <= log_size and zlib.crc32(os.pread(log_fd, length, last + HEADER.size)) == crc
            if not intact:
                return count, log_size
        if log_size != data_end:
            os.ftruncate(log_fd, data_end)
            os.fsync(log_fd)
        return count, data_end

    # -- reading -----------------------------------------------------------------------
    def _visible_count(self, directory: Path, partition: int) -> int:
        try:
            return (directory / f"{partition}.idx").stat().st_size // INDEX_ENTRY.size
        except FileNotFoundError:
            return 0

    def end_offsets(self, stream: str) -> dict[int, int]:
        directory = self._dir(stream)
        return {p: self._visible_count(directory, p) for p in self.partitions(stream)}

    def backlog(self, stream: str, partition: int, from_offset: int) -> Backlog:
        records = max(0, self._visible_count(self._dir(stream), partition) - from_offset)
        return Backlog(records > 0, records, None)

    def _skipped(self, directory: Path, partition: int) -> frozenset[int]:
        try:
            text = (directory / f"{partition}.skips").read_text()
        except FileNotFoundError:
            return frozenset()
        return frozenset(int(line) for line in text.split() if line.isdigit())

    def read(self, stream: str, partition: int, from_offset: int, max_records: int) -> ReadBatch:
        """Records from `from_offset`; stops before the first corrupt one, and raises `BusCorrupt`
        when the batch would start at it (unless an operator skipped it)."""
        directory = self._dir(stream)
        if not 0 <= partition < self.partition_count:
            raise TerminalError("UNKNOWN_PARTITION", f"stream {stream} has no partition {partition}")
        if from_offset < 0 or max_records < 1:
            raise TerminalError("INVALID_READ", "from_offset must be >= 0 and max_records >= 1")
        visible = self._visible_count(directory, partition)
        if from_offset >= visible:
            return ReadBatch(stream, partition, [], [], from_offset, True)
        until = min(visible, from_offset + max_records)
        with open(directory / f"{partition}.idx", "rb") as idx:
            idx.seek(from_offset * INDEX_ENTRY.size)
            # one entry past the batch (when visible) bounds the last record
            extra = 1 if until < visible else 0
            raw = idx.read((until - from_offset + extra) * INDEX_ENTRY.size)
        entries = np.frombuffer(raw, dtype=">u8").astype(np.int64)
        log_path = directory / f"{partition}.log"
        log_size = log_path.stat().st_size
        count = until - from_offset
        starts, ends = entries[:count], entries[1:]  # the last record's end is known only if one follows
        lo = min(int(starts[0]), log_size)
        hi = max(lo, min(int(np.where(ends == 0, log_size, ends).max()) if extra else log_size, log_size))
        with open(log_path, "rb") as log:
            log.seek(lo)
            blob = log.read(hi - lo)
        values = _intact_payloads(blob, lo, starts, ends, log_size)
        if values is not None:  # the common case: every frame intact, checked a batch at a time
            return ReadBatch(stream, partition, list(range(from_offset, until)), values, until, until == visible)
        skipped = self._skipped(directory, partition)
        values = []
        view = memoryview(blob)
        for n, start in enumerate(starts.tolist()):
            end = int(ends[n]) if n < len(ends) else None
            offset = from_offset + n
            framed = _frame(blob, view, lo, start, end, log_size)
            if type(framed) is slice:
                values.append(blob[framed])
                continue
            problem = str(framed)
            if offset in skipped:
                values.append(SKIPPED_RECORD)
                continue
            if values:  # deliver what precedes the corrupt record; the next read reports it
                return ReadBatch(stream, partition, list(range(from_offset, offset)), values, offset, False)
            raise BusCorrupt(stream, partition, offset, start, end if end is not None else log_size, problem)
        return ReadBatch(stream, partition, list(range(from_offset, until)), values, until, until == visible)

    def skip_corrupt(self, stream: str, partition: int, offset: int) -> tuple[int, int]:
        directory = self._dir(stream)
        try:
            self.read(stream, partition, offset, 1)
        except BusCorrupt as exc:
            with open(directory / f"{partition}.lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                with open(directory / f"{partition}.skips", "a") as skips:
                    skips.write(f"{offset}\n")
                    skips.flush()
                    os.fsync(skips.fileno())
            return exc.byte_start, exc.byte_end
        raise TerminalError("NOT_CORRUPT", f"{stream}/{partition} offset {offset} is intact (or not visible); "
                                           "nothing to skip")


def _intact_payloads(blob: bytes, base: int, starts: np.ndarray, ends: np.ndarray, log_size: int,
                     ) -> list[bytes] | None:
    """The payloads of the records framed at `starts` (each ending at the next entry of `ends`, the
    last one, when `ends` is shorter, wherever its own length says), when every frame is intact:
    the checks of `_frame`, made for the whole batch at once. None when any frame fails one of
    them: `_frame` then finds which, and why."""
    if (starts < base).any() or (starts + HEADER.size > min(log_size, base + len(blob))).any():
        return None
    known = ends[: len(starts)]
    if (known < starts[: len(known)] + HEADER.size).any():
        return None
    heads = np.frombuffer(blob, dtype=np.uint8)[(starts - base)[:, None] + np.arange(HEADER.size)]
    lengths, crcs = heads.view(">u4").astype(np.int64).T  # [u32 length][u32 crc32], big-endian
    stops = starts + HEADER.size + lengths
    if (stops > min(log_size, base + len(blob))).any() or (stops[: len(known)] != known).any():
        return None
    first, last = (starts - base + HEADER.size).tolist(), (stops - base).tolist()
    view = memoryview(blob)
    crc32 = zlib.crc32
    if [crc32(view[a:b]) for a, b in zip(first, last, strict=True)] != crcs.tolist():
        return None
    return [blob[a:b] for a, b in zip(first, last, strict=True)]


def _frame(blob: bytes, view: memoryview, base: int, start: int, end: int | None, log_size: int) -> slice | str:
    """Where the payload of the record framed at [start, end) of the log lies in `blob`, or why the
    frame is not intact."""
    if start < base or start + HEADER.size > log_size or (end is not None and end < start + HEADER.size):
        return "index entry points outside the log"
    length, crc = HEADER.unpack_from(blob, start - base)
    stop = start + HEADER.size + length
    if stop > log_size or (end is not None and stop != end):
        return "frame length disagrees with the index"
    payload = slice(start - base + HEADER.size, stop - base)
    if zlib.crc32(view[payload]) != crc:
        return "checksum mismatch"
    return payload
