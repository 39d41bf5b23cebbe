"""The wiring of one process: settings, and lazily the database, bus and object store."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from featureplane.online.bus.base import EventBus
from featureplane.runtime.migrations import migrate
from featureplane.runtime.postgres import Database
from featureplane.runtime.settings import LocalObjectStore, Settings, load_settings


@dataclass
class App:
    settings: Settings = field(default_factory=load_settings)

    @cached_property
    def db(self) -> Database:
        return Database.from_settings(self.settings.postgres)

    @cached_property
    def bus(self) -> EventBus:
        from featureplane.online.bus.factory import open_bus

        return open_bus(self.settings.bus)

    @cached_property
    def store(self):  # -> lake.object_store.ObjectStore
        from featureplane.lake.object_store import open_store

        return open_store(self.settings.object_store)

    @cached_property
    def lake(self):  # -> lake.delta.DeltaLake
        from featureplane.lake.delta import open_lake

        return open_lake(self.settings.object_store)

    @cached_property
    def registry(self):  # -> pipelines.registry.Registry
        from featureplane.config import default_registry

        return default_registry()

    def init(self) -> list[str]:
        """Create or migrate everything the profile needs; idempotent. Returns the migrations applied
        now (`provision` says everything that was done)."""
        return self.provision()["migrations_applied"]

    def provision(self) -> dict[str, object]:
        """Create or migrate everything the profile needs (home, database schema, streams, the object
        store's bucket); idempotent; returns what it found and did."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        applied = migrate(self.db)
        from featureplane.schemas.streams import STREAMS

        for stream in STREAMS:
            self.bus.ensure_stream(stream)
        self.store  # noqa: B018 - opening the store creates its bucket when missing
        where = self.settings.object_store
        store = str(where.root) if isinstance(where, LocalObjectStore) else f"s3://{where.bucket}/{where.prefix}"
        return {"home": str(self.settings.home), "profile": self.settings.profile, "migrations_applied": applied,
                "streams": sorted(STREAMS), "object_store": store}
