"""The indicator model: one MATI indicator as the rest of the pipeline sees it.

Only ``shared.core.parsing`` builds these from the wire; everything downstream (filters,
fingerprint, STIX mapping) reads them and can rely on the invariants the parser guarantees: strings
are non-empty where required, scores are ``None`` or in 0..100, timestamps are aware UTC, and at
most one value is held per hash type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class IndicatorType(StrEnum):
    """The four indicator types ``/v4/indicator`` lists; anything else is rejected at parsing."""

    IPV4 = "ipv4"
    FQDN = "fqdn"
    URL = "url"
    MD5 = "md5"


class HashType(StrEnum):
    """Hash algorithms an md5 indicator can carry through ``associated_hashes``."""

    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"


#: The two ``attributed_associations`` kinds MATI documents; other kinds are kept verbatim.
THREAT_ACTOR = "threat-actor"
MALWARE = "malware"


@dataclass(frozen=True, slots=True)
class Source:
    """One entry of ``sources[]``; ``categories`` are already lower-cased and stripped."""

    name: str
    osint: bool
    categories: tuple[str, ...] = ()
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class Association:
    """One ``attributed_associations`` entry; ``kind`` is MATI's ``type`` as given."""

    id: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class Indicator:
    """A parsed MATI indicator.

    ``hashes`` holds every hash known for an md5 indicator, the md5 value itself first, at most
    one value per hash type (a STIX id is derived per hash type, so two values of one type
    would collide on one STIX id). ``warning_lists`` names the MISP warning lists MATI found
    the value on (its ``misp`` flags that are true), lower-cased and sorted; ``None`` when the
    record has no ``misp`` map (MATI was not asked for the flags), which is not the same as
    "on no list".
    """

    id: str
    type: IndicatorType
    value: str
    mscore: int | None = None
    threat_score: int | None = None
    sources: tuple[Source, ...] = ()
    category: tuple[str, ...] = ()
    hashes: tuple[tuple[HashType, str], ...] = ()
    associations: tuple[Association, ...] = ()
    campaigns: tuple[str, ...] = ()
    warning_lists: tuple[str, ...] | None = None
    last_updated: datetime | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    # Derived views (categories, actors, malware), computed together on first use and kept:
    # the filter and the STIX mapping read them several times per indicator. Not part of
    # equality, hash or repr, and not a constructor argument, so an ``Indicator`` compares and
    # prints exactly as its fields say. One field, not three: each field costs every
    # construction a write, used or not.
    _views: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def is_osint(self) -> bool:
        """True iff every source is OSINT (DESIGN §5).

        An indicator without sources is *not* OSINT: nothing says it came from open sources,
        so excluding it here would silently lose Mandiant's data on a missing optional field.
        """
        return bool(self.sources) and all([source.osint for source in self.sources])

    @property
    def categories(self) -> tuple[str, ...]:
        """Union of per-source and top-level categories, lower-cased, sorted for stable labels."""
        views = self._views
        return (views if views is not None else self._derive_views())[0]

    def hash_value(self, hash_type: HashType) -> str | None:
        for kind, value in self.hashes:
            if kind == hash_type:
                return value
        return None

    @property
    def actors(self) -> tuple[str, ...]:
        views = self._views
        return (views if views is not None else self._derive_views())[1]

    @property
    def malware(self) -> tuple[str, ...]:
        views = self._views
        return (views if views is not None else self._derive_views())[2]

    def _derive_views(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        names = list(self.category)
        for source in self.sources:
            names += source.categories
        found = {name.strip().lower() for name in names}
        found.discard("")
        actors: list[str] = []
        malware: list[str] = []
        for association in self.associations:
            if association.kind == THREAT_ACTOR:
                actors.append(association.name)
            elif association.kind == MALWARE:
                malware.append(association.name)
        # dict.fromkeys de-duplicates while keeping MATI's order.
        views = (tuple(sorted(found)), tuple(dict.fromkeys(actors)), tuple(dict.fromkeys(malware)))
        # The one sanctioned write to a frozen instance: filling its own cache, once.
        object.__setattr__(self, "_views", views)
        return views
