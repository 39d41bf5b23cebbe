"""The admission boundary (`fp publish`): validate envelopes, admit each event identity once.

Identity is (platform_run_id, event_type, event_id). The same event again is a duplicate and is
not appended; the same identity with a different payload is quarantined (`PAYLOAD_MISMATCH`);
every invalid line is quarantined with its reason. Claims are made in Postgres inside the same
transaction that records the bus positions, so concurrent publishers admit an identity once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from featureplane.online.bus.base import EventBus
from featureplane.pipelines.errors import RejectedEvent
from featureplane.runtime.postgres import Database
from featureplane.schemas.envelope import may_hold_forbidden_text, normalize_event
from featureplane.schemas.streams import stream_spec

CHUNK = 2000
MAX_LINE_BYTES = 1 << 20  # SPEC §2: a longer line is LINE_TOO_LONG and is never held or stored whole
QUARANTINE_KEEP_CHARS = 4096  # how much of a bad line the quarantine keeps as evidence


def encode_event(event: dict[str, Any]) -> bytes:
    """The bytes an admitted event carries on the bus: compact JSON with sorted keys."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def payload_hash(event: dict[str, Any]) -> str:
    """Hash of the normalised event minus `emitted_at_utc` (a producer retry may restamp it)."""
    body = {k: v for k, v in event.items() if k != "emitted_at_utc"}
    return hashlib.sha256(encode_event(body)).hexdigest()


@dataclass
class Quarantined:
    line_no: int
    reason_code: str
    detail: str
    raw_line: str
    identity: tuple[str | None, str | None, str | None] = (None, None, None)


@dataclass
class PublishResult:
    published: int = 0
    duplicates: int = 0
    rejected: int = 0
    injected_bus_duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {"published": self.published, "duplicates": self.duplicates, "rejected": self.rejected}


@dataclass(frozen=True)
class BadLine:
    """A line that cannot even be decoded as text: too long, or not UTF-8."""

    reason_code: str
    detail: str
    evidence: str


def read_lines(handle: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[str | BadLine]:
    """The lines of a binary JSONL stream, holding at most `limit` bytes of any one line in memory.

    A longer line becomes `BadLine(LINE_TOO_LONG)` (its rest is skipped unread into memory); a line
    that is not UTF-8 becomes `BadLine(INVALID_ENCODING)`.
    """
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            size = len(line)
            while True:  # skip the rest of the line in bounded pieces
                rest = handle.readline(limit)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield BadLine("LINE_TOO_LONG", f"line of {size} bytes exceeds {limit}",
                          line[:QUARANTINE_KEEP_CHARS].decode("utf-8", "backslashreplace"))
            continue
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            yield BadLine("INVALID_ENCODING", "line is not UTF-8", line[:QUARANTINE_KEEP_CHARS].decode(
                "utf-8", "backslashreplace"))


def _evidence(line: str) -> str:
    """What the quarantine keeps of a bad line: bounded, and storable (no NUL, no lone surrogate)."""
    kept = line[:QUARANTINE_KEEP_CHARS]
    return kept.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _chunks(lines: Iterable[str | bytes | BadLine]) -> Iterator[list[tuple[int, str | BadLine]]]:
    chunk: list[tuple[int, str | BadLine]] = []
    for line_no, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            line = line.decode("utf-8", "surrogateescape")
        if isinstance(line, str):
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES or len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
                line = BadLine("LINE_TOO_LONG", f"line exceeds {MAX_LINE_BYTES} bytes", _evidence(line))
            else:
                line = line.rstrip("\n").removesuffix("\r")
        chunk.append((line_no, line))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _should_duplicate(event_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(b"dup:" + event_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


class Publisher:
    def __init__(self, db: Database, bus: EventBus) -> None:
        self.db = db
        self.bus = bus

    def publish(
        self,
        stream: str,
        lines: Iterable[str | bytes | BadLine],
        source: str,
        *,
        inject_bus_duplicates: float = 0.0,
    ) -> PublishResult:
        """Admit the JSONL `lines` (text, bytes, or `read_lines` output) onto `stream`.

        `inject_bus_duplicates` simulates producer retries that put an admitted event on the bus a
        second time (for testing consumers)."""
        spec = stream_spec(stream)
        self.bus.ensure_stream(stream)
        result = PublishResult()
        for chunk in _chunks(lines):
            self._publish_chunk(spec.name, spec.event_type, spec.partition_key, chunk, source,
                                inject_bus_duplicates, result)
        return result

    def _publish_chunk(
        self, stream: str, event_type: str, partition_field: str, chunk: list[tuple[int, str | BadLine]],
        source: str, inject: float, result: PublishResult,
    ) -> None:
        quarantined: list[Quarantined] = []
        candidates: dict[tuple[str, str, str], tuple[int, dict[str, Any], str]] = {}
        in_chunk_dupes = 0
        for line_no, line in chunk:
            if isinstance(line, BadLine):
                quarantined.append(Quarantined(line_no, line.reason_code, line.detail, line.evidence))
                continue
            try:
                raw = json.loads(line)
            except (ValueError, RecursionError):  # ValueError: also ints of more than 4300 digits
                quarantined.append(Quarantined(line_no, "MALFORMED_JSON", "line is not valid JSON", line))
                continue
            try:
                event = normalize_event(raw, text_checked=not may_hold_forbidden_text(line))
                if event["event_type"] != event_type:
                    raise RejectedEvent(
                        "STREAM_EVENT_TYPE_MISMATCH", f"stream {stream} carries {event_type} events only"
                    )
            except RejectedEvent as exc:
                ident = _identity_of(raw)
                quarantined.append(Quarantined(line_no, exc.reason_code, exc.message, line, ident))
                continue
            identity = (event["platform_run_id"], event["event_type"], event["event_id"])
            digest = payload_hash(event)
            if identity in candidates:
                if candidates[identity][2] == digest:
                    in_chunk_dupes += 1
                else:
                    quarantined.append(Quarantined(
                        line_no, "PAYLOAD_MISMATCH", "same event identity was seen with another payload",
                        line, identity))
                continue
            candidates[identity] = (line_no, event, digest)

        with self.db.transaction() as conn:
            keys = list(candidates)
            claimed: set[tuple[str, str, str]] = set()
            if keys:
                rows = conn.execute(
                    """INSERT INTO admissions (platform_run_id, event_type, event_id, payload_hash, stream)
                       SELECT r, t, i, h, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
                            AS u(r, t, i, h)
                       ON CONFLICT DO NOTHING
                       RETURNING platform_run_id, event_type, event_id""",
                    (stream, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                     [candidates[k][2] for k in keys]),
                ).fetchall()
                claimed = {tuple(r) for r in rows}
            known = [k for k in keys if k not in claimed]
            duplicates = in_chunk_dupes
            if known:
                existing = {
                    (r, t, i): h
                    for r, t, i, h in conn.execute(
                        """SELECT a.platform_run_id, a.event_type, a.event_id, a.payload_hash
                           FROM admissions a
                           JOIN unnest(%s::text[], %s::text[], %s::text[]) AS u(r, t, i)
                             ON a.platform_run_id = u.r AND a.event_type = u.t AND a.event_id = u.i""",
                        ([k[0] for k in known], [k[1] for k in known], [k[2] for k in known]),
                    )
                }
                for key in known:
                    line_no, _, digest = candidates[key]
                    if existing.get(key) == digest:
                        duplicates += 1
                    else:
                        raw_line = next(str(line) for n, line in chunk if n == line_no)
                        quarantined.append(Quarantined(
                            line_no, "PAYLOAD_MISMATCH",
                            "event identity already admitted with another payload", raw_line, key))
            # quarantine first: nothing reaches the bus in a transaction that could still fail on it
            if quarantined:
                with conn.cursor().copy(
                    """COPY admission_quarantine (stream, source, line_no, reason_code, detail,
                       platform_run_id, event_type, event_id, raw_line) FROM STDIN"""
                ) as copy:
                    for q in quarantined:
                        copy.write_row((stream, source, q.line_no, q.reason_code, q.detail[:1000],
                                        *(None if v is None else _evidence(v) for v in q.identity),
                                        _evidence(q.raw_line)))
            admitted = [k for k in keys if k in claimed]
            if admitted:
                items = [
                    (str(candidates[k][1]["payload"][partition_field]), encode_event(candidates[k][1]))
                    for k in admitted
                ]
                positions = self.bus.append(stream, items)
                conn.execute(
                    """UPDATE admissions a SET partition = u.p, "offset" = u.o
                       FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::numeric[])
                            AS u(r, t, i, p, o)
                       WHERE a.platform_run_id = u.r AND a.event_type = u.t AND a.event_id = u.i""",
                    ([k[0] for k in admitted], [k[1] for k in admitted], [k[2] for k in admitted],
                     [p for p, _ in positions], [o for _, o in positions]),
                )
                if inject > 0:
                    again = [item for k, item in zip(admitted, items, strict=True)
                             if _should_duplicate(k[2], inject)]
                    if again:
                        self.bus.append(stream, again)
                        result.injected_bus_duplicates += len(again)
        result.published += len(admitted)
        result.duplicates += duplicates
        result.rejected += len(quarantined)
        for q in quarantined:
            result.reasons[q.reason_code] = result.reasons.get(q.reason_code, 0) + 1


def _identity_of(raw: object) -> tuple[str | None, str | None, str | None]:
    """Best-effort identity of a rejected event, for the quarantine record (strings only)."""
    if not isinstance(raw, dict):
        return (None, None, None)

    def text(name: str) -> str | None:
        value = raw.get(name)
        return value[:128] if isinstance(value, str) else None

    return (text("platform_run_id"), text("event_type"), text("event_id"))
