"""Postgres access: the embedded server under FP_HOME or a DSN, as a connection factory.

Adapters receive a `Database` (a factory), never a raw DSN, so credentials stay in one place
and connection failures surface as `Unavailable` without the DSN in the message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg.adapt import Loader

from featureplane.pipelines.errors import Unavailable
from featureplane.runtime.secrets import Secret
from featureplane.runtime.settings import DsnPostgres, EmbeddedPostgres


def start_embedded(data_dir: Path, *, stop_at_exit: bool = False, settings: dict[str, str] | None = None) -> Secret:
    """Start (or join) the embedded server whose data lives in `data_dir`; return its DSN."""
    from featureplane.runtime.embedded_pg import EmbeddedServer

    server = EmbeddedServer(data_dir, settings)
    dsn = Secret(server.ensure_running())
    if stop_at_exit:
        import atexit

        atexit.register(server.stop)
    return dsn


class WholeNumericLoader(Loader):
    """numeric as an exact int when it is whole (bus offsets are numeric: Kinesis sequence numbers
    exceed bigint), a Decimal otherwise."""

    def load(self, data: bytes | bytearray | memoryview) -> int | Decimal:
        text = bytes(data).decode("ascii")
        return Decimal(text) if "." in text or not text.lstrip("-").isdigit() else int(text)


@dataclass(frozen=True)
class Database:
    """A connection factory over one DSN."""

    dsn: Secret
    source: str = "the embedded Postgres"  # what an operator checks when it is unreachable

    @classmethod
    def from_settings(cls, pg: EmbeddedPostgres | DsnPostgres) -> Database:
        if isinstance(pg, DsnPostgres):
            return cls(pg.dsn, "FP_PG_DSN")
        return cls(start_embedded(pg.data_dir, settings=pg.settings))

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn.reveal(), autocommit=autocommit, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"postgres is unreachable ({type(exc).__name__}): check {self.source}") from None
        conn.adapters.register_loader("numeric", WholeNumericLoader)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """One connection, one transaction: committed on success, rolled back on error."""
        with self.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def try_advisory_lock(self, namespace: int, name: str) -> Iterator[bool]:
        """Hold the session advisory lock (namespace, hashtext(name)) for the block, if free.

        Yields False (and holds nothing) when another session has it: single-writer jobs skip.
        """
        with self.connect(autocommit=True) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (namespace, name)).fetchone()
            if not row or not row[0]:
                yield False
                return
            try:
                yield True
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (namespace, name))

    def with_database(self, name: str) -> Database:
        """The same server, another database (used by tests to isolate each test)."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.dsn.reveal())
        params["dbname"] = name
        return Database(Secret(make_conninfo(**params)))
