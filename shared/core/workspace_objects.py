"""One indicator as the workspace holds it, read back through Log Analytics (DESIGN §5,
reconciliation), and how it maps onto the seen cache.

The seen cache keys every lineage by its generation-0 STIX id (``shared.core.stix.stix_id``);
a lineage revoked and published again lives in the workspace under generation g's id. To
compare the two, each object read back is given its lineage: the MATI id (from our property
extension) and the hash type (from the pattern's left side) name the lineage, and the
generation is whichever ``stix_id(mati_id, hash_type, g)`` reproduces the object's own id.
An object whose id no generation reproduces was not minted by us from what it claims (a
foreign or tampered object under our source system): it has no lineage and is never keyed
into the cache.

Pure: the reader (``shared.adapters.workspace_reader``) hands over one row as a dict of column
to value as azure-monitor-query returns it (datetime columns already ``datetime``, bools,
strings); garbage becomes an ``UnreadableRow`` with a reason the caller counts, never an
exception, because one odd row in a workspace of millions must not stop a reconciliation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from shared.core.fingerprint import EXTENSION_ID, FINGERPRINT_PROPERTY, MAX_GENERATION, SeenEntry
from shared.core.indicator import HashType
from shared.core.stix import _OBJECT_PATHS, MATI_ID_PROPERTY, SUPPRESSED_PROPERTY, stix_id

#: How many generations are tried to find the one that reproduces an object's id. Each try
#: costs a SHA-1; a lineage revoked and re-published more than 64 times is far outside any
#: real feed (a generation moves only when an analyst or a settings change revokes it and it
#: then passes again), and a foreign id costs every try, so the bound stays small.
MAX_GENERATION_SEARCHED: Final = min(64, MAX_GENERATION)

#: The columns the reader's query projects (``shared.adapters.workspace_reader``).
COLUMNS: Final = (
    "StixId",
    "TimeGenerated",
    "ValidUntil",
    "Revoked",
    "IsDeleted",
    "IsActive",
    "Pattern",
    "MatiId",
    "Fingerprint",
    "Suppressed",
)

#: A uuid's first group is 8 hex digits: partition prefixes never reach its ``-``.
MAX_PREFIX_DIGITS: Final = 8
#: The digits partition prefixes are made of, in order (STIX ids are lower-case uuids).
HEX_DIGITS: Final = "0123456789abcdef"
_STIX_PREFIX: Final = "indicator--"

#: Pattern left sides we emit, to the hash type they carry (``None``: not a hash). Inverted
#: from the mapping ``shared.core.stix`` builds patterns with, so the two never drift apart.
_HASH_OF_PATH: Final[dict[str, HashType | None]] = {
    path: hash_type for (_, hash_type), path in _OBJECT_PATHS.items()
}
#: ``[<left side> = '...']``: the left side is everything up to the comparison operator.
_LEFT_SIDE: Final = re.compile(r"\[\s*([^\s=]+)\s*=")
_FINGERPRINT: Final = re.compile(r"[0-9a-f]{32}")
_STIX_ID: Final = re.compile(r"[a-z][a-z0-9-]*--[0-9A-Fa-f-]{36}")
_MAX_REASON_ID_CHARS: Final = 120


@dataclass(frozen=True, slots=True)
class UnreadableRow:
    """A row that cannot be an object: ``reason`` says which column is wrong (for the count
    and a debug line), ``stix_id`` names the object when that much was readable."""

    reason: str
    stix_id: str | None = None


@dataclass(frozen=True, slots=True)
class WorkspaceObject:
    """The latest row of one STIX object in ``ThreatIntelIndicators``.

    ``lineage`` is the generation-0 id (the seen cache's key) and ``generation`` the
    revocation generation of this object's id; both are ``None`` when the id is not one we
    would mint for the MATI id and pattern it carries. ``fingerprint`` is ours, from our
    property extension (``None`` when absent or not a fingerprint). ``valid_until`` is ``None``
    when the object has none (Sentinel then never expires it). ``active`` is Sentinel's
    ``IsActive``, computed once at ``time_generated``; it is kept for reports only, because it
    does not move when the object expires later (``live`` recomputes from the facts instead).
    """

    stix_id: str
    lineage: str | None
    mati_id: str | None
    generation: int | None
    fingerprint: str | None
    valid_until: datetime | None
    revoked: bool
    deleted: bool
    time_generated: datetime
    active: bool = True
    #: The suppression a revocation by ``suppress add`` carries (``SUPPRESSED_PROPERTY``), as
    #: the JSON text Log Analytics returns; ``None`` on every other object.
    suppressed: str | None = None

    def live(self, now: datetime) -> bool:
        """Whether Sentinel matches on this object at ``now``: not revoked, not deleted, and not
        expired. No ``valid_until`` counts as live, as Sentinel's own analytics rules treat it
        (``ValidUntil > now() or isempty(ValidUntil)``)."""
        if self.revoked or self.deleted:
            return False
        return self.valid_until is None or self.valid_until > now

    def seen_entry(self) -> SeenEntry | None:
        """The entry a seen cache rebuilt from the workspace holds for this object's lineage,
        or ``None`` when it cannot be rebuilt (not ours, no fingerprint, no ``valid_until``).

        The source tag is unknown (``b""``): the filter then takes its full path once for the
        record, which is the price of a rebuild, never a wrong skip. A deleted object rebuilds
        nothing: the workspace no longer holds it, so the cache must not claim it does.
        """
        if (
            self.lineage is None
            or self.generation is None
            or self.fingerprint is None
            or self.valid_until is None
            or self.deleted
        ):
            return None
        try:
            return SeenEntry(self.fingerprint, self.valid_until, b"", self.revoked, self.generation)
        except ValueError:  # e.g. a revoked entry with valid_until before 1970
            return None


def lineage_of(object_id: str, mati_id: str, hash_type: HashType | None) -> tuple[str, int] | None:
    """``(generation-0 id, generation)`` of ``object_id`` if it is ``stix_id(mati_id,
    hash_type, g)`` for some g up to ``MAX_GENERATION_SEARCHED``, else ``None``."""
    wanted = object_id.lower()
    for generation in range(MAX_GENERATION_SEARCHED + 1):
        if stix_id(mati_id, hash_type, generation) == wanted:
            return stix_id(mati_id, hash_type, 0), generation
    return None


def hash_type_of(pattern: str) -> tuple[bool, HashType | None]:
    """``(known, hash type)`` from a pattern's left side: ``known`` is False when the left side
    is not one we emit (then no lineage can be derived)."""
    match = _LEFT_SIDE.match(pattern.strip())
    if match is None or match.group(1) not in _HASH_OF_PATH:
        return False, None
    return True, _HASH_OF_PATH[match.group(1)]


def parse_row(row: Mapping[str, object]) -> WorkspaceObject | UnreadableRow:
    """The object one result row describes, or why it cannot be one.

    Required: ``StixId`` (a STIX id) and ``TimeGenerated`` (a datetime). ``ValidUntil`` may be
    empty; ``Revoked``/``IsDeleted``/``IsActive`` may be null (KQL bools can be); ``MatiId``,
    ``Fingerprint`` and ``Pattern`` may be empty (the object is then not keyed, or cannot
    rebuild an entry), but must be strings when present.
    """
    raw_id = row.get("StixId")
    if not isinstance(raw_id, str) or _STIX_ID.fullmatch(raw_id) is None:
        return UnreadableRow(f"StixId is not a STIX id: {_describe(raw_id)}")
    object_id = raw_id
    generated = _instant(row.get("TimeGenerated"))
    if not isinstance(generated, datetime):
        return UnreadableRow(f"TimeGenerated is not a timestamp: {generated}", object_id)
    valid_until = _instant(row.get("ValidUntil"), empty_ok=True)
    if isinstance(valid_until, str):
        return UnreadableRow(f"ValidUntil is not a timestamp: {valid_until}", object_id)
    flags: dict[str, bool] = {}
    for column, default in (("Revoked", False), ("IsDeleted", False), ("IsActive", True)):
        flag = _flag(row.get(column), default)
        if flag is None:
            return UnreadableRow(
                f"{column} is not a boolean: {_describe(row.get(column))}", object_id
            )
        flags[column] = flag
    texts: dict[str, str] = {}
    for column in ("Pattern", "MatiId", "Fingerprint", "Suppressed"):
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            return UnreadableRow(f"{column} is not a string: {_describe(value)}", object_id)
        texts[column] = (value or "").strip()
    mati_id = texts["MatiId"] or None
    lineage: tuple[str, int] | None = None
    known, hash_type = hash_type_of(texts["Pattern"])
    if mati_id is not None and known:
        lineage = lineage_of(object_id, mati_id, hash_type)
    fingerprint = texts["Fingerprint"]
    return WorkspaceObject(
        stix_id=object_id,
        lineage=None if lineage is None else lineage[0],
        mati_id=mati_id,
        generation=None if lineage is None else lineage[1],
        fingerprint=fingerprint if _FINGERPRINT.fullmatch(fingerprint) else None,
        valid_until=valid_until,
        revoked=flags["Revoked"],
        deleted=flags["IsDeleted"],
        time_generated=generated,
        active=flags["IsActive"],
        suppressed=texts["Suppressed"] or None,
    )


def newer(current: WorkspaceObject | None, candidate: WorkspaceObject) -> WorkspaceObject:
    """Of two objects of one lineage, the one the lineage is judged on: the highest
    generation (a revoked generation 0 next to a live generation 1 is a lineage published
    again), then the latest row. For folding objects into a dict as they are read: the
    generations of one lineage have unrelated ids, so they arrive in different partitions."""
    if current is None:
        return candidate
    if _rank(candidate) > _rank(current):
        return candidate
    return current


def latest(objects: Iterable[WorkspaceObject]) -> WorkspaceObject | None:
    """``newer`` folded over ``objects`` (all of one lineage); ``None`` for none."""
    found: WorkspaceObject | None = None
    for obj in objects:
        found = newer(found, obj)
    return found


def _rank(obj: WorkspaceObject) -> tuple[int, datetime]:
    generation = -1 if obj.generation is None else obj.generation
    return generation, obj.time_generated


def _instant(value: object, *, empty_ok: bool = False) -> datetime | str | None:
    """An aware datetime, ``None`` for empty (when allowed), else a description of the garbage.

    The SDK converts datetime columns; text it could not parse is left as text, and ISO text
    is still accepted here. A naive datetime is read as UTC (Log Analytics speaks UTC)."""
    if empty_ok and (value is None or value == ""):
        return None
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if moment is None:
        return _describe(value)
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _flag(value: object, default: bool) -> bool | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _describe(value: object) -> str:
    """A short, safe rendering of a bad value for a reason: type and clipped text."""
    text = repr(value)
    if len(text) > _MAX_REASON_ID_CHARS:
        text = text[: _MAX_REASON_ID_CHARS - 1] + "…"
    return f"{type(value).__name__} {text}"


# -- the query whose rows these are -----------------------------------------------------------
#
# Pure text, kept next to ``COLUMNS`` and ``parse_row`` because the three must agree; the reader
# (``shared.adapters.workspace_reader``) only sends it. The shape is the one the Log Analytics
# simulator is taught (simulators/kql.py): changing it here without there fails the client tests.


def kql_string(text: str) -> str:
    """``text`` as a double-quoted KQL string literal (backslash and quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def base_query(source_system: str, prefix: str | None) -> str:
    """The latest row per object of ``source_system`` (those whose STIX id starts with
    ``indicator--<prefix>`` when a prefix is given), up to and including ``summarize``."""
    lines = [
        "ThreatIntelIndicators",
        f"| where SourceSystem == {kql_string(source_system)}",
        "| extend StixId = tostring(Data.id)",
    ]
    if prefix is not None:
        lines.append(f"| where StixId startswith {kql_string(_STIX_PREFIX + prefix)}")
    lines.append("| summarize arg_max(TimeGenerated, *) by Id")
    return "\n".join(lines)


def objects_query(source_system: str, prefix: str | None) -> str:
    """``base_query`` with our extension's properties lifted out and ``COLUMNS`` projected."""
    ours = f"Data.extensions[{kql_string(EXTENSION_ID)}]"
    return "\n".join(
        [
            base_query(source_system, prefix),
            f"| extend MatiId = tostring({ours}.{MATI_ID_PROPERTY}), "
            f"Fingerprint = tostring({ours}.{FINGERPRINT_PROPERTY}), "
            f"Suppressed = tostring({ours}.{SUPPRESSED_PROPERTY})",
            "| project " + ", ".join(COLUMNS),
        ]
    )


def count_query(source_system: str) -> str:
    """How many objects ``objects_query`` over every prefix would return together."""
    return base_query(source_system, None) + "\n| count"


def prefix_digits(count: int, target: int) -> int:
    """The fewest hex digits k such that ``count / 16**k <= target`` (at most 8)."""
    digits = 0
    while count > target * 16**digits and digits < MAX_PREFIX_DIGITS:
        digits += 1
    return digits


def prefixes(digits: int) -> list[str]:
    """Every hex prefix of ``digits`` digits, in order (``[""]`` for none)."""
    found = [""]
    for _ in range(digits):
        found = [head + digit for head in found for digit in HEX_DIGITS]
    return found
