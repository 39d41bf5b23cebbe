"""The Kinesis adapter behind the bus port (parity profile; tested against moto's server).

Partition i is the i-th shard by starting hash key; records are routed there with an explicit
hash key computed by the same stable partitioner as the embedded bus, so a partition key lands
in the same partition on both backends. Offsets are the shards' sequence numbers (Python ints,
56 digits in practice; written as decimal strings wherever they leave Python); the exclusive-next
offset of a record is its sequence number + 1.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from featureplane.online.bus.base import Backlog, ReadBatch, partition_for
from featureplane.pipelines.errors import TerminalError, Unavailable
from featureplane.pipelines.positions import OffsetStyle
from featureplane.runtime.settings import KinesisBus, boto3_client
from featureplane.schemas.streams import stream_spec

PUT_BATCH = 500
PUT_ATTEMPTS = 8


def _unavailable_on_network_errors(method: Callable) -> Callable:
    """botocore's connection and credential errors become `Unavailable` (retryable, no traceback)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError

        try:
            return method(*args, **kwargs)
        except BotoCoreError as exc:
            raise Unavailable(f"kinesis is unreachable ({type(exc).__name__}): check FP_KINESIS_ENDPOINT_URL "
                              "(unset for AWS) and AWS_DEFAULT_REGION") from None

    return wrapper


def kinesis_client(settings: KinesisBus) -> Any:
    return boto3_client("kinesis", settings.region, settings.endpoint_url, settings.credentials)


class KinesisEventBus:
    offset_style = OffsetStyle.DECIMAL_STRING

    def __init__(self, client: Any, partitions: int) -> None:
        self.client = client
        self.partition_count = partitions
        self._shards: dict[str, list[dict[str, Any]]] = {}

    @_unavailable_on_network_errors
    def ensure_stream(self, stream: str) -> None:
        stream_spec(stream)
        with contextlib.suppress(self.client.exceptions.ResourceInUseException):
            self.client.create_stream(StreamName=stream, ShardCount=self.partition_count)
        for _ in range(100):
            status = self.client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
            if status["StreamStatus"] == "ACTIVE":
                break
            time.sleep(0.1)
        shards = self._shard_list(stream)
        if len(shards) != self.partition_count:
            raise TerminalError(
                "BUS_PARTITIONS_MISMATCH",
                f"stream {stream} has {len(shards)} shards, profile says {self.partition_count}",
            )

    def _shard_list(self, stream: str) -> list[dict[str, Any]]:
        if stream not in self._shards:
            shards = self.client.list_shards(StreamName=stream)["Shards"]
            shards.sort(key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
            self._shards[stream] = shards
        return self._shards[stream]

    @_unavailable_on_network_errors
    def partitions(self, stream: str) -> list[int]:
        return list(range(len(self._shard_list(stream))))

    @_unavailable_on_network_errors
    def append(self, stream: str, items: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        shards = self._shard_list(stream)
        index_of = {s["ShardId"]: i for i, s in enumerate(shards)}
        positions: list[tuple[int, int]] = [(0, 0)] * len(items)
        for start in range(0, len(items), PUT_BATCH):
            pending = list(range(start, min(start + PUT_BATCH, len(items))))
            for attempt in range(PUT_ATTEMPTS):
                entries = []
                for i in pending:
                    key, value = items[i]
                    shard = shards[partition_for(key, len(shards))]
                    entries.append(
                        {"Data": value, "PartitionKey": key[:256],
                         "ExplicitHashKey": shard["HashKeyRange"]["StartingHashKey"]}
                    )
                result = self.client.put_records(StreamName=stream, Records=entries)
                retry = []
                for i, rec in zip(pending, result["Records"], strict=True):
                    if "SequenceNumber" in rec:
                        positions[i] = (index_of[rec["ShardId"]], int(rec["SequenceNumber"]))
                    else:
                        retry.append(i)
                if not retry:
                    break
                pending = retry
                time.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                raise Unavailable(f"kinesis kept refusing {len(pending)} records on {stream}")
        return positions

    @_unavailable_on_network_errors
    def read(self, stream: str, partition: int, from_offset: int, max_records: int) -> ReadBatch:
        shards = self._shard_list(stream)
        if not 0 <= partition < len(shards):
            raise TerminalError("UNKNOWN_PARTITION", f"stream {stream} has no partition {partition}")
        result = self.client.get_records(ShardIterator=self._iterator(stream, partition, from_offset),
                                         Limit=min(max_records, 10_000))
        offsets = [int(r["SequenceNumber"]) for r in result["Records"]]
        values = [bytes(r["Data"]) for r in result["Records"]]
        next_offset = offsets[-1] + 1 if offsets else from_offset
        caught_up = not offsets or (result.get("MillisBehindLatest", 0) == 0 and len(offsets) < max_records)
        return ReadBatch(stream, partition, offsets, values, next_offset, caught_up)

    def _iterator(self, stream: str, partition: int, from_offset: int) -> str:
        """A shard iterator at the exclusive-next offset `from_offset` (sequence numbers as text:
        they exceed every fixed-width integer)."""
        shard_id = self._shard_list(stream)[partition]["ShardId"]
        if from_offset == 0:
            return self.client.get_shard_iterator(
                StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        return self.client.get_shard_iterator(
            StreamName=stream, ShardId=shard_id, ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=str(from_offset - 1))["ShardIterator"]

    @_unavailable_on_network_errors
    def end_offsets(self, stream: str) -> dict[int, int] | None:
        """Kinesis has no cheap "latest sequence number" per shard: see `backlog`."""
        return None

    @_unavailable_on_network_errors
    def backlog(self, stream: str, partition: int, from_offset: int) -> Backlog:
        """One GetRecords of one record at the consumer's position: whether anything waits, and
        MillisBehindLatest (how far that record is behind the shard's newest). Counting the records
        would mean reading them all; health counts them from the admission ledger instead."""
        if not 0 <= partition < len(self._shard_list(stream)):
            raise TerminalError("UNKNOWN_PARTITION", f"stream {stream} has no partition {partition}")
        result = self.client.get_records(ShardIterator=self._iterator(stream, partition, from_offset), Limit=1)
        waiting = bool(result["Records"])
        return Backlog(waiting, None if waiting else 0, int(result.get("MillisBehindLatest", 0)) if waiting else 0)

    def skip_corrupt(self, stream: str, partition: int, offset: int) -> tuple[int, int]:
        """Kinesis checksums records itself: nothing stored here can be corrupt."""
        raise TerminalError("NOT_CORRUPT", "Kinesis records are checked by the service; there is nothing to skip")
