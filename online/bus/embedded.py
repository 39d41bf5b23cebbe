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

from online.bus.base import BusRecord, ReadBatch, partition_for
from runtime.errors import TerminalError
from schemas.streams import stream_spec

HEADER = struct.Struct(">II")
INDEX_ENTRY = struct.Struct(">Q")


class EmbeddedBus:
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
        """Drop any torn tail; return (visible record count, end of visible data)."""
        idx_size = os.fstat(idx_fd).st_size
        count = idx_size // INDEX_ENTRY.size
        if idx_size != count * INDEX_ENTRY.size:
            os.ftruncate(idx_fd, count * INDEX_ENTRY.size)
        if count == 0:
            data_end = 0
        else:
            (last,) = INDEX_ENTRY.unpack(os.pread(idx_fd, INDEX_ENTRY.size, (count - 1) * INDEX_ENTRY.size))
            length, _ = HEADER.unpack(os.pread(log_fd, HEADER.size, last))
            data_end = last + HEADER.size + length
        if os.fstat(log_fd).st_size != data_end:
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

    def read(self, stream: str, partition: int, from_offset: int, max_records: int) -> ReadBatch:
        directory = self._dir(stream)
        if not 0 <= partition < self.partition_count:
            raise TerminalError("UNKNOWN_PARTITION", f"stream {stream} has no partition {partition}")
        if from_offset < 0 or max_records < 1:
            raise TerminalError("INVALID_READ", "from_offset must be >= 0 and max_records >= 1")
        visible = self._visible_count(directory, partition)
        if from_offset >= visible:
            return ReadBatch([], from_offset, True)
        until = min(visible, from_offset + max_records)
        with open(directory / f"{partition}.idx", "rb") as idx:
            idx.seek(from_offset * INDEX_ENTRY.size)
            # one entry past the batch (when visible) bounds the bytes to read
            extra = 1 if until < visible else 0
            raw = idx.read((until - from_offset + extra) * INDEX_ENTRY.size)
        starts = [s for (s,) in INDEX_ENTRY.iter_unpack(raw)]
        end = starts.pop() if extra else None
        records: list[BusRecord] = []
        with open(directory / f"{partition}.log", "rb") as log:
            log.seek(starts[0])
            blob = log.read(end - starts[0]) if end is not None else log.read()
        base = starts[0]
        for n, start in enumerate(starts):
            at = start - base
            length, crc = HEADER.unpack_from(blob, at)
            value = bytes(blob[at + HEADER.size : at + HEADER.size + length])
            if len(value) != length or zlib.crc32(value) != crc:
                raise TerminalError(
                    "BUS_CORRUPT", f"{stream}/{partition} offset {from_offset + n} fails its checksum"
                )
            records.append(BusRecord(stream, partition, from_offset + n, value))
        return ReadBatch(records, until, until == visible)
