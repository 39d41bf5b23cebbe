"""Ordered SQL migrations with a migrations table; idempotent and safe under concurrent `fp init`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from featureplane.pipelines.errors import TerminalError
from featureplane.runtime.postgres import Database

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$", re.ASCII)
LOCK_KEY = 0x6670_6D69  # 'fpmi': one advisory lock serialises concurrent migrators


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("featureplane.runtime.sql").iterdir():
        match = MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise TerminalError("MIGRATION_DUPLICATE_VERSION", f"duplicate migration versions in {versions}")
    return found


def migrate(db: Database) -> list[str]:
    """Apply every pending migration in order; return the names applied by this call."""
    applied_now: list[str] = []
    with db.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")}
        for migration in discover():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise TerminalError(
                        "MIGRATION_CHANGED",
                        f"migration {migration.version}_{migration.name} changed after it was applied",
                    )
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now
