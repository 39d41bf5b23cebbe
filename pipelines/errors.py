"""Typed errors with stable reason codes; retryability lives in the type, not in the message."""

from __future__ import annotations


class FpError(Exception):
    """Base error: a stable `reason_code` a program can branch on, and a human message."""

    retryable: bool = False

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


class TerminalError(FpError):
    """Retrying the same input cannot succeed (malformed data, contract violation)."""


class TransientError(FpError):
    """The same input may succeed later (a dependency is down, a serialization conflict)."""

    retryable = True


class ConfigError(TerminalError):
    """The profile or environment is incomplete or contradictory."""


class RejectedEvent(TerminalError):
    """An event failed admission or apply validation; it is ledgered, never dropped."""


class Unavailable(TransientError):
    """A dependency (Postgres, the bus, the object store) cannot be reached."""

    def __init__(self, message: str) -> None:
        super().__init__("UNAVAILABLE", message)
