"""Build the bus a profile asks for."""

from __future__ import annotations

from online.bus.base import EventBus
from runtime.settings import EmbeddedBus, KinesisBus


def open_bus(settings: EmbeddedBus | KinesisBus) -> EventBus:
    if isinstance(settings, EmbeddedBus):
        from online.bus.embedded import EmbeddedBus as EmbeddedLog

        return EmbeddedLog(settings.root, settings.partitions)
    from online.bus.kinesis import KinesisEventBus, kinesis_client

    return KinesisEventBus(kinesis_client(settings), settings.partitions)
