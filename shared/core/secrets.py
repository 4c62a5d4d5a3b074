"""A value that must never be printed: credentials and tokens.

``Secret`` has no ``__str__`` that reveals it; ``repr``, ``str`` and f-strings all give the
mask. Code that needs the value calls ``reveal()`` at the single point of use.
"""

from __future__ import annotations

from typing import Final

MASK: Final = "********"


class Secret:
    """Holds a credential; prints as a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
