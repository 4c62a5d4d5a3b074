"""How an accepted object reads back from Log Analytics: the ``ThreatIntelIndicators`` and
``ThreatIntelObjects`` rows the Sentinel simulator appends, which the Log Analytics simulator
queries (specs/sentinel-and-entra.md §4).

Timestamps are normalised to one fixed format, so string order is time order for the KQL
simulator, and the observable is split out of a single-comparison pattern, un-escaped, as
Sentinel does.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import hashlib
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from simulators.sentinel_store import Located, decode_located
from simulators.sentinel_validation import parse_timestamp, parse_timestamp_text, timestamp_text

#: One comparison, one string literal: the only shape Sentinel extracts an observable from.
_SIMPLE_PATTERN_RE = re.compile(
    r"^\[\s*([a-z0-9-]+:[A-Za-z0-9_]+(?:\.(?:[A-Za-z0-9_]+|'(?:[^'\\]|\\['\\])*'))*)"
    r"\s*=\s*'((?:[^'\\]|\\['\\])*)'\s*\]$"
)
_ESCAPE_RE = re.compile(r"\\(['\\])")
_ROW_ID_NAMESPACE = uuid.UUID("a3b9c1d7-2f44-4c1e-9d7e-5e6e7469616c")
_ROW_ID_NAMESPACE_BYTES = _ROW_ID_NAMESPACE.bytes


def indicator_row(
    obj: dict[str, Any], source: str, method: str, generated: datetime, workspace_id: str
) -> dict[str, Any]:
    """One ``ThreatIntelIndicators`` row, as Log Analytics ingested ``obj`` at ``generated``."""
    valid_until = parse_timestamp(obj.get("valid_until"))
    revoked = obj.get("revoked") is True
    key, value = split_observable(str(obj.get("pattern", "")))
    return {
        "TimeGenerated": iso_text(generated),
        "Id": _row_id(source, str(obj["id"])),
        "SourceSystem": source,
        "Source": source,
        "Created": _normalize(obj.get("created")),
        "Modified": _normalize(obj.get("modified")),
        "ValidFrom": _normalize(obj.get("valid_from")),
        "ValidUntil": _normalize(obj.get("valid_until")),
        "IsActive": not revoked and (valid_until is None or valid_until > generated),
        "IsDeleted": False,
        "Revoked": revoked,
        "Confidence": obj.get("confidence"),
        "Pattern": obj.get("pattern", ""),
        "ObservableKey": key,
        "ObservableValue": value,
        "Tags": list(obj.get("labels") or []),
        "Data": obj,
        "AdditionalFields": {},
        "LastUpdateMethod": method,
        "WorkspaceId": workspace_id,
        "Type": "ThreatIntelIndicators",
    }


def object_row(
    obj: dict[str, Any], source: str, generated: datetime, workspace_id: str
) -> dict[str, Any]:
    """One ``ThreatIntelObjects`` row: every accepted object that is not an indicator."""
    return {
        "TimeGenerated": iso_text(generated),
        "Id": _row_id(source, obj["id"]),
        "StixType": obj["type"],
        "Data": obj,
        "Source": source,
        "SourceSystem": source,
        "IsDeleted": False,
        "LastUpdateMethod": "UploadApi",
        "WorkspaceId": workspace_id,
        "Type": "ThreatIntelObjects",
    }


def split_observable(pattern: str) -> tuple[str, str]:
    """``(ObservableKey, ObservableValue)`` of a single-comparison pattern, else empty strings."""
    match = _SIMPLE_PATTERN_RE.match(pattern.strip())
    if match is None:
        return "", ""
    value = match.group(2)
    return match.group(1), _ESCAPE_RE.sub(r"\1", value) if "\\" in value else value


def iso_text(moment: datetime) -> str:
    """A moment as the rows' timestamps read (``2024-05-01T10:00:00.000000Z``)."""
    moment = moment.astimezone(UTC)
    if moment.year < 1000:  # strftime's %Y does not pad; keep its answer for those
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Same text as the strftime above, at a third of the cost.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _normalize(value: Any) -> str | None:
    """Timestamps in one fixed format, so string order is time order for the KQL simulator."""
    return _normalize_text(value) if timestamp_text(value) else None


@functools.lru_cache(maxsize=4096)
def _normalize_text(value: str) -> str | None:
    parsed = parse_timestamp_text(value)
    return iso_text(parsed) if parsed is not None else None


@functools.lru_cache(maxsize=64)
def _source_prefix(source: str) -> str:
    return base64.b64encode(source.encode()).decode()


def _row_id(source: str, stix_id: str) -> str:
    """Sentinel's own key: base64 of the source, ``---``, then an opaque per-object part."""
    return f"{_source_prefix(source)}---{_uuid5(_ROW_ID_NAMESPACE_BYTES, stix_id)}"


def _uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building the UUID object (every row)."""
    raw = bytearray(hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


#: An accepted indicator whose row is not rendered yet (``IndicatorRows.rows``): where the
#: object is, its sourcesystem, the row's ``LastUpdateMethod`` and its ingestion time.
#: A plain tuple: one is made per accepted object.
PendingRow = tuple[Located, str, str, datetime]


class IndicatorRows:
    """The ``ThreatIntelIndicators`` log of one workspace: append-only rows, each with the
    moment it was ingested (``appended``, POSIX seconds, in row order), which is what the Log
    Analytics simulator's ingestion delay measures from."""

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self._rows: list[dict[str, Any]] = []
        #: Rows accepted but not yet rendered (see ``rows``): what each one is built from.
        self._pending: list[PendingRow] = []
        #: When each row (rendered or pending, in order) was ingested: its ``TimeGenerated``.
        self.appended: list[float] = []

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first; pending ones rendered now (``SentinelSimulator.rows``)."""
        if self._pending:
            workspace = self.workspace_id
            with collector_paused():
                self._rows.extend(
                    indicator_row(decode_located(*located), source, method, generated, workspace)
                    for located, source, method, generated in self._pending
                )
            self._pending.clear()
        return self._rows

    def add(self, located: Located, source: str, method: str, generated: datetime) -> None:
        """An accepted indicator's row, rendered when first read."""
        self._pending.append((located, source, method, generated))
        self.appended.append(generated.timestamp())

    def append(self, row: dict[str, Any], generated: datetime) -> None:
        """A row already rendered (after any pending ones)."""
        self.rows.append(row)
        self.appended.append(generated.timestamp())

    def extend(self, rows: list[tuple[dict[str, Any], datetime]]) -> None:
        with collector_paused():
            self.rows.extend(row for row, _ in rows)
            self.appended.extend(generated.timestamp() for _, generated in rows)

    def visible(self, cutoff: float | None) -> list[dict[str, Any]]:
        """The rows ingested at or before ``cutoff`` (POSIX seconds); all with ``None``.

        Rows someone appended to ``rows`` directly have no ingestion time: they are visible.
        """
        rows = self.rows
        if cutoff is None:
            return list(rows)
        appended = self.appended
        seen = [row for row, at in zip(rows, appended, strict=False) if at <= cutoff]
        seen.extend(rows[len(appended) :])
        return seen

    def latest(self) -> dict[str, dict[str, Any]]:
        """STIX id -> the newest row of that object (what a republish or a delete copies)."""
        newest: dict[str, dict[str, Any]] = {}
        for row in reversed(self.rows):
            data = row.get("Data")
            stix_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(stix_id, str) and stix_id not in newest:
                newest[stix_id] = row
        return newest

    def clear(self) -> None:
        self._rows.clear()
        self._pending.clear()
        self.appended.clear()


def restamped(
    row: dict[str, Any], generated: datetime, method: str, **changes: Any
) -> dict[str, Any]:
    """A copy of ``row`` as Log Analytics would ingest the same object again at ``generated``:
    a new ``TimeGenerated`` and ``LastUpdateMethod``, ``IsActive`` as of then."""
    valid_until = row.get("ValidUntil")
    at = iso_text(generated)
    active = not row.get("Revoked") and (not valid_until or str(valid_until) > at)
    return {**row, "TimeGenerated": at, "IsActive": active, "LastUpdateMethod": method, **changes}


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Rendering rows in bulk makes long-lived containers by the hundred thousand; the cyclic
    collector would walk every one of them again and again while they are made."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
