"""The filters MATI applies for us: the fetcher sends them as query parameters, so an indicator
they leave out is never fetched and never reaches the filter service.

One definition for both sides of that fact: the fetcher builds its query from it, and
``mati2sentinel explain`` tells an operator that a dropped indicator is not even fetched. Were
the two written apart, ``explain`` would go on blaming MATI for a filter the fetcher no longer
pushes down (or miss one it newly does), and nothing would fail to say so.

Pure: no I/O, nothing of the MATI client, so the verdict of ``explain`` stays testable on plain
data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.core.indicator import Indicator


class Filters(Protocol):
    """The settings a push-down is made of (``FetcherConfig`` and ``FilterPolicy`` both hold
    them, from the same settings)."""

    @property
    def minimum_confidence(self) -> int: ...

    @property
    def exclude_osint(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class PushDown:
    """The query parameters, named as MATI names them (specs/mati-api-v4.md §3.1)."""

    gte_mscore: int
    exclude_osint: bool

    @classmethod
    def of(cls, filters: Filters) -> PushDown:
        return cls(gte_mscore=filters.minimum_confidence, exclude_osint=filters.exclude_osint)

    def leaves_out(self, indicator: Indicator) -> str | None:
        """The parameter for which MATI leaves ``indicator`` out of every page, or None. A
        ``gte_mscore`` of 0 leaves nothing out, an indicator without an mscore included."""
        mscore = indicator.mscore
        if self.gte_mscore and (mscore is None or mscore < self.gte_mscore):
            return f"gte_mscore={self.gte_mscore}"
        if self.exclude_osint and indicator.is_osint:
            return "exclude_osint=true"
        return None
