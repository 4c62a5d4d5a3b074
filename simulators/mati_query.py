"""The query parameters of ``GET /v4/indicator`` and the look-ups, as the MATI simulator reads
them (specs/mati-api-v4.md §3.1, §3.3, §4).

Apart from the server because they are what a client gets wrong most, and each rule here is
one a test pins: which ``include_*`` flags are on by default, what counts as a boolean, the
bounds of every integer, and that without ``sort_by`` the order is newest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_LIMIT = 1000
DEFAULT_LIMIT = 25
DEFAULT_REPORT_LIMIT = 25

#: ``include_*`` query flags and their defaults: only ``misp`` is on unless asked (§3.1).
INCLUDE_DEFAULTS: Mapping[str, bool] = {
    "include_misp": True,
    "include_threat_rating": False,
    "include_category": False,
    "include_campaigns": False,
    "include_reports": False,
}
#: Record key each flag controls.
_INCLUDE_KEYS = {
    "include_misp": "misp",
    "include_threat_rating": "threat_rating",
    "include_category": "category",
    "include_campaigns": "campaigns",
    "include_reports": "reports",
}

#: Every optional block: what a look-up that only needs ``value`` leaves out.
OPTIONAL_KEYS = frozenset(_INCLUDE_KEYS.values())

_TRUE = frozenset({"true", "1", "yes", "t", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "f", "n", "off"})


class BadRequest(Exception):
    """A 400 the handler answers with a JSON error body."""

    def __init__(self, message: str, error: str = "invalid_request") -> None:
        super().__init__(message)
        self.error = error


@dataclass(slots=True)
class Query:
    """Parameters of a first request (a ``next`` request takes them from its cursor)."""

    start_epoch: int
    end_epoch: int
    limit: int
    gte_mscore: int | None
    gte_threatscore: int | None
    exclude_osint: bool
    descending: bool
    report_limit: int
    include: dict[str, bool] = field(default_factory=dict)


def parse_query(
    query: Mapping[str, str], now: int, lookback_limit_days: int, lookback_clamp: bool
) -> Query:
    """The parameters of a first request (§3.1), checked as MATI checks them; ``now`` is epoch
    seconds, the default ``end_epoch`` and the point the look-back is measured from."""
    if "start_epoch" not in query:
        raise BadRequest("start_epoch is required unless next is given.")
    start = _int_param(query, "start_epoch", 0, None)
    end = _int_param(query, "end_epoch", 0, None, default=now)
    if start is None:
        raise BadRequest("start_epoch must not be empty.")
    oldest = now - lookback_limit_days * 86_400
    if start < oldest:
        if not lookback_clamp:
            raise BadRequest(f"start_epoch may not be more than {lookback_limit_days} days ago.")
        start = oldest
    if end is None or end < start:
        raise BadRequest("end_epoch must not be before start_epoch.")
    limit = _int_param(query, "limit", 1, MAX_LIMIT, default=DEFAULT_LIMIT)
    report_limit = _int_param(query, "report_limit", 0, MAX_LIMIT, DEFAULT_REPORT_LIMIT)
    return Query(
        start_epoch=start,
        end_epoch=end,
        limit=limit or DEFAULT_LIMIT,
        gte_mscore=_int_param(query, "gte_mscore", 0, 100),
        gte_threatscore=_int_param(query, "gte_threatscore", 0, 100),
        exclude_osint=_bool_param(query, "exclude_osint", default=False),
        descending=_descending(query),
        report_limit=DEFAULT_REPORT_LIMIT if report_limit is None else report_limit,
        include=include_flags(query, only_present=False),
    )


def _bool_param(query: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name} must be a boolean, not {raw!r}.")


def _int_param(
    query: Mapping[str, str],
    name: str,
    low: int,
    high: int | None,
    default: int | None = None,
) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}.") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {bound}.")
    return value


def include_flags(query: Mapping[str, str], *, only_present: bool) -> dict[str, bool]:
    return {
        name: _bool_param(query, name, default=default)
        for name, default in INCLUDE_DEFAULTS.items()
        if not only_present or name in query
    }


def _descending(query: Mapping[str, str]) -> bool:
    """``sort_by=field[:asc|desc]`` (or ``sort_order``); only ``last_updated`` sorts here."""
    sort_by = query.get("sort_by")
    order = query.get("sort_order")
    if sort_by:
        field_name, _, suffix = sort_by.partition(":")
        if field_name.strip() != "last_updated":
            raise BadRequest(f"Unsupported sort field {field_name!r}.")
        order = suffix or order
    if order is None or order == "":
        return sort_by is None  # no sort_by at all: newest first (§3.3)
    if order.lower() not in ("asc", "desc"):
        raise BadRequest(f"Unsupported sort order {order!r}.")
    return order.lower() == "desc"


def lookup_key(kind: str, value: str) -> str:
    """A value as look-ups compare it: what MATI treats as the same indicator."""
    if kind == "url":
        return value
    return value.strip() if kind == "ipv4" else value.strip().lower()


def omitted(include: Mapping[str, bool]) -> frozenset[str]:
    """The record keys of the optional blocks the query did not ask for."""
    return frozenset(
        key for flag, key in _INCLUDE_KEYS.items() if not include.get(flag, INCLUDE_DEFAULTS[flag])
    )


def cap_reports(record: dict[str, Any], report_limit: int) -> None:
    reports = record.get("reports")
    if isinstance(reports, list) and len(reports) > report_limit:
        record["reports"] = reports[:report_limit]


def shape(record: dict[str, Any], include: dict[str, bool], report_limit: int) -> dict[str, Any]:
    """Drop the optional blocks the query did not ask for; cap embedded reports."""
    for key in omitted(include):
        record.pop(key, None)
    cap_reports(record, report_limit)
    return record
