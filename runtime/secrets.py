"""A secret value that never prints: DSNs and credentials stay out of logs, errors and artifacts."""

from __future__ import annotations


class Secret:
    """Wraps a credential-bearing string. `str()`/`repr()` show a mask; `reveal()` is explicit."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # pickling would leak the value into whatever stores the pickle
        raise TypeError("Secret values cannot be pickled")
