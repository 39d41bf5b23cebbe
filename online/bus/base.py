"""The bus port: append records by partition key, read a partition from an offset in batches.

A position `(stream, partition, offset)` is the identity of a delivered record. Offsets are
Python ints of any size (Kinesis sequence numbers reach 10^56; see pipelines/positions.py for how
they are stored); a watermark is the exclusive-next offset of a partition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple, Protocol

from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.positions import OffsetStyle
from featureplane.schemas.records import SKIPPED_RECORD

__all__ = ["SKIPPED_RECORD", "Backlog", "BusCorrupt", "BusRecord", "EventBus", "ReadBatch", "partition_for"]


class BusCorrupt(TerminalError):
    """A stored record fails its checksum or framing: the partition cannot go past it on its own.

    Reported with its byte range; only an explicit, audited operator skip (`fp bus skip`) moves a
    consumer past it, and then the record is delivered as `SKIPPED_RECORD` to every consumer alike.
    """

    def __init__(self, stream: str, partition: int, offset: int, byte_start: int, byte_end: int, why: str) -> None:
        super().__init__("BUS_CORRUPT", f"{stream}/{partition} offset {offset} (bytes {byte_start}-{byte_end}): {why}")
        self.stream = stream
        self.partition = partition
        self.offset = offset
        self.byte_start = byte_start
        self.byte_end = byte_end


def partition_for(partition_key: str, partitions: int) -> int:
    """Stable partitioner: the first 8 bytes of sha256(key), modulo the partition count."""
    digest = hashlib.sha256(partition_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions


class BusRecord(NamedTuple):
    stream: str
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True)
class ReadBatch:
    """Consecutive records of one partition, as columns (no object per record: consumers read a
    million records a pass)."""

    stream: str
    partition: int
    offsets: list[int]
    values: list[bytes]
    next_offset: int  # exclusive-next offset after this batch
    caught_up: bool  # nothing more was visible in the partition when read

    def __len__(self) -> int:
        return len(self.values)

    @property
    def records(self) -> list[BusRecord]:
        return [BusRecord(self.stream, self.partition, o, v) for o, v in zip(self.offsets, self.values, strict=True)]

    def triples(self) -> list[tuple[int, int, bytes]]:
        """(partition, offset, value) per record, what the decoders take."""
        return list(zip(repeat(self.partition, len(self.values)), self.offsets, self.values, strict=True))


@dataclass(frozen=True)
class Backlog:
    """What waits in a partition after a consumer's position."""

    waiting: bool  # at least one record is there
    records: int | None  # how many, where the backend can count them cheaply (Kinesis cannot)
    millis_behind: int | None  # how far the first waiting record is behind the newest, where known


class EventBus(Protocol):
    """What producers and consumers need from a bus, whichever backend carries it."""

    offset_style: OffsetStyle  # how its offsets appear in a JSON basis

    def ensure_stream(self, stream: str) -> None: ...

    def partitions(self, stream: str) -> list[int]: ...

    def append(self, stream: str, items: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        """Append (partition_key, value) items; return their (partition, offset), in input order."""
        ...

    def read(self, stream: str, partition: int, from_offset: int, max_records: int) -> ReadBatch: ...

    def end_offsets(self, stream: str) -> dict[int, int] | None:
        """Exclusive-next offset per partition, or None where the backend cannot tell cheaply."""
        ...

    def backlog(self, stream: str, partition: int, from_offset: int) -> Backlog:
        """What waits after `from_offset` (a consumer's exclusive-next offset)."""
        ...

    def skip_corrupt(self, stream: str, partition: int, offset: int) -> tuple[int, int]:
        """Mark the corrupt record at `offset` as skipped (operator action); return its byte range.
        Raises `TerminalError(NOT_CORRUPT)` when the record there is intact."""
        ...
