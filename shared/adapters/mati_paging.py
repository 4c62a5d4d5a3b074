"""What a MATI ``/v4/indicator`` window asks for and what one page of it answers (spec §3).

Plain values, apart from the client that sends them: the fetcher plans its windows and pages
(and its configuration caps ``limit``) with them, without an HTTP session or a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class IndicatorQuery:
    """One ``/v4/indicator`` window (spec §3.1). Epochs are Unix seconds on ``last_updated``.

    The ``include_*`` defaults are the blocks the pipeline reads (threat rating, category,
    campaigns): the fetcher and ``lookup`` ask for exactly these."""

    start_epoch: int
    end_epoch: int
    limit: int = MAX_LIMIT
    gte_mscore: int | None = None
    exclude_osint: bool | None = None
    include_threat_rating: bool = True
    include_category: bool = True
    include_misp: bool = False
    include_campaigns: bool = True
    include_reports: bool = False
    sort_by: str = "last_updated:asc"

    def __post_init__(self) -> None:
        if self.start_epoch < 0 or self.end_epoch < self.start_epoch:
            raise ValueError("need 0 <= start_epoch <= end_epoch")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        if self.gte_mscore is not None and not 0 <= self.gte_mscore <= 100:
            raise ValueError("gte_mscore must be between 0 and 100")
        if not self.sort_by:
            raise ValueError("sort_by must not be empty")

    def include_params(self) -> dict[str, str]:
        """The ``include_*`` flags: sent on every page, because the cursor does not keep them."""
        return {
            "include_threat_rating": _flag(self.include_threat_rating),
            "include_category": _flag(self.include_category),
            "include_misp": _flag(self.include_misp),
            "include_campaigns": _flag(self.include_campaigns),
            "include_reports": _flag(self.include_reports),
        }

    def first_params(self) -> dict[str, str]:
        """Parameters of the first page: the whole query."""
        params = {
            "start_epoch": str(self.start_epoch),
            "end_epoch": str(self.end_epoch),
            "limit": str(self.limit),
            "sort_by": self.sort_by,
        }
        if self.gte_mscore is not None:
            params["gte_mscore"] = str(self.gte_mscore)
        if self.exclude_osint is not None:
            params["exclude_osint"] = _flag(self.exclude_osint)
        params.update(self.include_params())
        return params


def _flag(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True, slots=True)
class RawPage:
    """One page as MATI sent it: the records undecoded beyond JSON, the cursor, the body size.

    ``indicators`` holds whatever the page's list held (normally dicts); validating them is the
    parser's job. ``index`` counts pages from 0 within one ``pages()`` call.
    """

    index: int
    indicators: list[Any]
    next: str | None
    size_bytes: int
