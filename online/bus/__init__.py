"""The event bus port and its adapters (embedded partitioned log, Kinesis)."""

from featureplane.online.bus.base import BusRecord, EventBus, ReadBatch, partition_for

__all__ = ["BusRecord", "EventBus", "ReadBatch", "partition_for"]
