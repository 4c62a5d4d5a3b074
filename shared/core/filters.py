"""A destination's filters (DESIGN §5): which indicators it takes, as which observables.

``evaluate`` either accepts an indicator as one or more observables (one observable becomes one
STIX indicator) or names the single reason it was dropped. The checks run in a fixed order and
the first failing one is the reason, so "dropped by reason" counts are comparable across runs:

1. ``TYPE_EXCLUDED``      the destination does not take this indicator type (``INCLUDE_*``)
2. ``LOW_CONFIDENCE``     ``mscore`` below ``MINIMUM_CONFIDENCE`` (or missing, unless it is 0)
3. ``LOW_THREAT_SCORE``   ``threat_rating.threat_score`` below ``MINIMUM_THREAT_SCORE`` (idem)
4. ``OSINT``              every source is OSINT and ``EXCLUDE_OSINT`` is on
5. ``UNCATEGORIZED``      no category anywhere and ``INCLUDE_UNCATEGORIZED`` is off
6. ``WARNINGLIST``        MATI found the value on a MISP warning list ``EXCLUDE_WARNINGLISTS``
                          names (or on any list, with ``all``); ``WARNINGLIST_UNKNOWN`` when
                          lists are excluded but the record carries no flags to tell (the
                          fetcher ran without the setting): not sent on a guess
7. ``HASH_TYPE_MISSING``  an md5 indicator lacks the hash ``HASH_TYPE`` selects
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.core.indicator import HashType, Indicator, IndicatorType


class DropReason(StrEnum):
    """Why a destination's filters dropped an indicator; each value is a metric label."""

    LOW_CONFIDENCE = "low_confidence"
    LOW_THREAT_SCORE = "low_threat_score"
    OSINT = "osint"
    UNCATEGORIZED = "uncategorized"
    TYPE_EXCLUDED = "type_excluded"
    WARNINGLIST = "warninglist"
    WARNINGLIST_UNKNOWN = "warninglist_unknown"
    HASH_TYPE_MISSING = "hash_type_missing"


#: ``EXCLUDE_WARNINGLISTS=all``: every warning list excludes (no MISP list is named "all").
ALL_WARNINGLISTS: Final = "all"


class HashSelection(StrEnum):
    """``HASH_TYPE``: one hash algorithm per md5 indicator, or every hash it carries."""

    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    ALL = "all"


class ObservableKind(StrEnum):
    """What a STIX pattern matches on. Hashes are one kind because they share one expiration
    setting and one ``INCLUDE_HASH`` switch, whatever the algorithm."""

    IPV4 = "ipv4"
    FQDN = "fqdn"
    URL = "url"
    HASH = "hash"


_KIND_OF: dict[IndicatorType, ObservableKind] = {
    IndicatorType.IPV4: ObservableKind.IPV4,
    IndicatorType.FQDN: ObservableKind.FQDN,
    IndicatorType.URL: ObservableKind.URL,
    IndicatorType.MD5: ObservableKind.HASH,
}


@dataclass(frozen=True, slots=True)
class FilterPolicy:
    """One destination's filters; defaults are the vendor integration's (seed settings table).
    A score minimum of 0 lets indicators without that score through; any higher minimum
    drops them, because an unknown score cannot be shown to meet it."""

    minimum_confidence: int = 80
    minimum_threat_score: int = 80
    exclude_osint: bool = True
    include_uncategorized: bool = True
    hash_selection: HashSelection = HashSelection.MD5
    include_ipv4: bool = True
    include_fqdn: bool = True
    include_url: bool = True
    include_hash: bool = True
    #: MISP warning-list names (lower case) whose indicators are dropped; ``{ALL_WARNINGLISTS}``
    #: for any.
    exclude_warninglists: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("minimum_confidence", "minimum_threat_score"):
            minimum = getattr(self, name)
            if not 0 <= minimum <= 100:
                raise ValueError(f"{name} must be within 0..100, got {minimum}")

    def includes(self, kind: ObservableKind) -> bool:
        return {
            ObservableKind.IPV4: self.include_ipv4,
            ObservableKind.FQDN: self.include_fqdn,
            ObservableKind.URL: self.include_url,
            ObservableKind.HASH: self.include_hash,
        }[kind]


@dataclass(frozen=True, slots=True)
class Observable:
    """One thing Sentinel should match: an indicator's value, or one of an md5 indicator's
    hashes. ``hash_type`` is set exactly for ``HASH`` observables (checked on construction)."""

    indicator: Indicator
    kind: ObservableKind
    value: str
    hash_type: HashType | None = None

    def __post_init__(self) -> None:
        if (self.kind is ObservableKind.HASH) != (self.hash_type is not None):
            raise ValueError(f"hash_type must be set exactly for hash observables: {self.kind}")


def kind_of(indicator_type: IndicatorType) -> ObservableKind:
    """What an indicator type's observables match on."""
    return _KIND_OF[indicator_type]


def evaluate(indicator: Indicator, policy: FilterPolicy) -> tuple[Observable, ...] | DropReason:
    """Accept ``indicator`` as observables, or give the first failing check in module order.
    An accepted indicator always yields at least one observable."""
    kind = _KIND_OF[indicator.type]
    if not policy.includes(kind):
        return DropReason.TYPE_EXCLUDED
    if not _meets(indicator.mscore, policy.minimum_confidence):
        return DropReason.LOW_CONFIDENCE
    if not _meets(indicator.threat_score, policy.minimum_threat_score):
        return DropReason.LOW_THREAT_SCORE
    if policy.exclude_osint and indicator.is_osint:
        return DropReason.OSINT
    if not policy.include_uncategorized and not indicator.categories:
        return DropReason.UNCATEGORIZED
    if policy.exclude_warninglists:
        if indicator.warning_lists is None:
            return DropReason.WARNINGLIST_UNKNOWN
        if excluded_lists(indicator, policy):
            return DropReason.WARNINGLIST
    if kind is not ObservableKind.HASH:
        return (Observable(indicator, kind, indicator.value),)
    hashes = _selected_hashes(indicator, policy.hash_selection)
    if not hashes:
        return DropReason.HASH_TYPE_MISSING
    return tuple(Observable(indicator, kind, value, hash_type) for hash_type, value in hashes)


def every_observable(indicator: Indicator) -> tuple[Observable, ...]:
    """Every observable ``indicator`` could be uploaded as under any settings (each hash it
    carries): what a workspace may hold of it, so what may need revoking once it fails."""
    kind = _KIND_OF[indicator.type]
    if kind is not ObservableKind.HASH:
        return (Observable(indicator, kind, indicator.value),)
    return tuple(Observable(indicator, kind, value, h) for h, value in indicator.hashes)


def excluded_lists(indicator: Indicator, policy: FilterPolicy) -> tuple[str, ...]:
    """The warning lists of ``indicator`` that ``policy`` excludes, in name order."""
    excluded, lists = policy.exclude_warninglists, indicator.warning_lists or ()
    if ALL_WARNINGLISTS in excluded:
        return lists
    return tuple(name for name in lists if name in excluded)


def _meets(score: int | None, minimum: int) -> bool:
    return score >= minimum if score is not None else minimum == 0


def _selected_hashes(
    indicator: Indicator, selection: HashSelection
) -> tuple[tuple[HashType, str], ...]:
    if selection is HashSelection.ALL:
        return indicator.hashes
    hash_type = HashType(selection.value)
    value = indicator.hash_value(hash_type)
    return ((hash_type, value),) if value is not None else ()
