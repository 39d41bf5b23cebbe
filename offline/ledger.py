"""The OFS run ledger in Postgres: one run per request_id, guarded transitions, append-only events.

QUEUED -> RUNNING -> DONE | FAILED | PUBLISH_PENDING, and PUBLISH_PENDING -> RUNNING for a
publish-only retry (bounded; it does not count as a full run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg

from featureplane.offline.intents import BuildIntent, IntentRejected
from featureplane.pipelines.errors import TerminalError
from featureplane.runtime.postgres import Database

TRANSITIONS = {
    ("QUEUED", "RUNNING"), ("RUNNING", "DONE"), ("RUNNING", "FAILED"), ("RUNNING", "PUBLISH_PENDING"),
    ("PUBLISH_PENDING", "RUNNING"),
}
MAX_PUBLISH_RETRIES = 3


class IllegalTransition(TerminalError):
    def __init__(self, message: str) -> None:
        super().__init__("ILLEGAL_TRANSITION", message)


@dataclass(frozen=True)
class Run:
    run_key: str
    request_id: str
    state: str
    full_attempts: int
    publish_attempts: int
    reason_code: str | None
    manifest_id: str | None
    result: dict[str, Any] | None


def run_key_for(request_id: str) -> str:
    return "ofsrun_" + hashlib.sha256(request_id.encode()).hexdigest()[:32]


_COLUMNS = "run_key, request_id, state, full_attempts, publish_attempts, reason_code, manifest_id, result"


def _run(row: tuple) -> Run:
    return Run(*row[:7], result=row[7])


class RunLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def admit(self, intent: BuildIntent) -> tuple[Run, bool]:
        """Register the intent (QUEUED) or find its run; (run, created). A different body under the
        same request_id is REQUEST_ID_CONFLICT."""
        key = run_key_for(intent.request_id)
        with self.db.transaction() as conn:
            inserted = conn.execute(
                """INSERT INTO ofs_runs (run_key, request_id, intent_kind, body_digest, intent, state)
                   VALUES (%s, %s, %s, %s, %s, 'QUEUED') ON CONFLICT (request_id) DO NOTHING RETURNING run_key""",
                (key, intent.request_id, intent.intent_kind, intent.body_digest(), json.dumps(intent.body())),
            ).fetchone()
            if inserted:
                self._event(conn, key, None, "QUEUED", None, "admitted")
            row = conn.execute(f"SELECT {_COLUMNS}, body_digest FROM ofs_runs WHERE request_id = %s",
                               (intent.request_id,)).fetchone()
        assert row is not None
        if row[-1] != intent.body_digest():
            raise IntentRejected("REQUEST_ID_CONFLICT",
                                 f"request_id {intent.request_id} was already used with a different intent")
        return _run(row[:-1]), bool(inserted)

    def get(self, run_key: str) -> Run:
        with self.db.transaction() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM ofs_runs WHERE run_key = %s", (run_key,)).fetchone()
        if row is None:
            raise TerminalError("RUN_NOT_FOUND", f"no run {run_key}")
        return _run(row)

    def transition(self, run_key: str, to_state: str, *, reason_code: str | None = None, detail: str = "",
                   fingerprint: str | None = None, manifest_id: str | None = None,
                   result: dict[str, Any] | None = None) -> Run:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state, publish_attempts FROM ofs_runs WHERE run_key = %s FOR UPDATE",
                               (run_key,)).fetchone()
            if row is None:
                raise TerminalError("RUN_NOT_FOUND", f"no run {run_key}")
            state, publish_attempts = row
            if (state, to_state) not in TRANSITIONS:
                raise IllegalTransition(f"{run_key}: {state} -> {to_state} is not allowed")
            publish_retry = state == "PUBLISH_PENDING"
            if publish_retry and publish_attempts >= MAX_PUBLISH_RETRIES:
                raise IllegalTransition(f"{run_key}: publish retries exhausted ({MAX_PUBLISH_RETRIES})")
            conn.execute(
                """UPDATE ofs_runs SET state = %s, reason_code = %s, updated_at = now(),
                       full_attempts = full_attempts + %s, publish_attempts = publish_attempts + %s,
                       fingerprint = COALESCE(%s, fingerprint), manifest_id = COALESCE(%s, manifest_id),
                       result = COALESCE(%s, result)
                   WHERE run_key = %s""",
                (to_state, reason_code, int(to_state == "RUNNING" and not publish_retry), int(publish_retry),
                 fingerprint, manifest_id, None if result is None else json.dumps(result), run_key),
            )
            self._event(conn, run_key, state, to_state, reason_code, detail)
        return self.get(run_key)

    @staticmethod
    def _event(conn: psycopg.Connection, run_key: str, from_state: str | None, to_state: str,
               reason_code: str | None, detail: str) -> None:
        conn.execute(
            """INSERT INTO ofs_run_events (run_key, from_state, to_state, reason_code, detail)
               VALUES (%s, %s, %s, %s, %s)""",
            (run_key, from_state, to_state, reason_code, detail[:1000]),
        )

    def events(self, run_key: str) -> list[tuple[str | None, str, str | None]]:
        with self.db.transaction() as conn:
            return [tuple(r) for r in conn.execute(  # type: ignore[misc]
                "SELECT from_state, to_state, reason_code FROM ofs_run_events WHERE run_key = %s ORDER BY event_seq",
                (run_key,)).fetchall()]
