"""Real services once per session: one embedded Postgres (a fresh database per test) and, for the
parity adapters, moto servers on 127.0.0.1 (as it comes, and with real 56-digit Kinesis sequence
numbers). Every test gets its own FP_HOME."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from featureplane.runtime.migrations import migrate
from featureplane.runtime.postgres import Database
from featureplane.runtime.secrets import Secret

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Database]:
    from featureplane.runtime.embedded_pg import EmbeddedServer

    root = Path(tempfile.mkdtemp(prefix="fp-pg-"))
    server = EmbeddedServer(root / "pg")
    admin = Database(Secret(server.ensure_running()))
    with admin.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS fp_template")
        conn.execute("CREATE DATABASE fp_template")
    migrate(admin.with_database("fp_template"))
    yield admin
    server.stop()  # the suite leaves no server running
    shutil.rmtree(root, ignore_errors=True)


def fresh_database(server: Database, *, migrated: bool = True) -> Database:
    """A new database on the session server: a copy of the migrated template, or empty."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    template = " TEMPLATE fp_template" if migrated else ""
    with server.connect(autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}{template}")
    return server.with_database(name)


@pytest.fixture()
def db(pg_server: Database) -> Database:
    """A fresh, migrated database for this test."""
    return fresh_database(pg_server)


@pytest.fixture()
def empty_db(pg_server: Database) -> Database:
    """A fresh database with no migrations applied."""
    return fresh_database(pg_server, migrated=False)


@pytest.fixture()
def fp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fp_home"
    home.mkdir()
    monkeypatch.setenv("FP_HOME", str(home))
    monkeypatch.delenv("FP_PROFILE", raising=False)
    return home


@pytest.fixture()
def app(db: Database, fp_home: Path, monkeypatch: pytest.MonkeyPatch):
    """An App on the test's database and FP_HOME (the local profile otherwise)."""
    from featureplane.runtime.app import App
    from featureplane.runtime.settings import load_settings

    monkeypatch.setenv("FP_PG_DSN", db.dsn.reveal())
    application = App(load_settings())
    application.__dict__["db"] = db
    application.init()
    return application


@contextlib.contextmanager
def _moto_server(module: str) -> Iterator[str]:
    """A moto server (`module`: moto.server or tests.moto_realistic) on 127.0.0.1, in its own process.

    Not ThreadedMotoServer: deltalake's reads block inside Rust while holding the GIL, so an
    in-process moto can never answer them (delta-io/delta-rs#4362, #3942). A separate process
    is the same moto server without the deadlock.
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto as it comes: Kinesis records numbered 1, 2, 3."""
    with _moto_server("moto.server") as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def realistic_moto_endpoint() -> Iterator[str]:
    """moto with 56-digit Kinesis sequence numbers and gaps, as real Kinesis writes them."""
    with _moto_server("tests.moto_realistic") as endpoint:
        yield endpoint
