"""Build the bus a profile asks for."""

from __future__ import annotations

from featureplane.online.bus.base import EventBus
from featureplane.runtime.settings import EmbeddedBus, KinesisBus


def open_bus(settings: EmbeddedBus | KinesisBus) -> EventBus:
    if isinstance(settings, EmbeddedBus):
        from featureplane.online.bus.embedded import EmbeddedBus as EmbeddedLog

        return EmbeddedLog(settings.root, settings.partitions)
    from featureplane.online.bus.kinesis import KinesisEventBus, kinesis_client

    return KinesisEventBus(kinesis_client(settings), settings.partitions)
