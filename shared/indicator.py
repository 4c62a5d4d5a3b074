"""The indicator model: one MATI indicator as the rest of the pipeline sees it.

Only ``shared.parsing`` builds these from the wire; everything downstream (filters, fingerprint,
STIX mapping) reads them and can rely on the invariants the parser guarantees: strings are
non-empty where required, scores are ``None`` or in 0..100, timestamps are aware UTC, and at
most one value is held per hash type.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    would collide on one STIX id).
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
    last_updated: datetime | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    @property
    def is_osint(self) -> bool:
        """True iff every source is OSINT (DESIGN §5).

        An indicator without sources is *not* OSINT: nothing says it came from open sources,
        and MATI's own ``exclude_osint`` already ran server-side, so excluding it here would
        silently lose Mandiant's data on a missing optional field.
        """
        return bool(self.sources) and all(source.osint for source in self.sources)

    @property
    def categories(self) -> tuple[str, ...]:
        """Union of per-source and top-level categories, lower-cased, sorted for stable labels."""
        found = {name.strip().lower() for name in self.category}
        for source in self.sources:
            found.update(name.strip().lower() for name in source.categories)
        found.discard("")
        return tuple(sorted(found))

    def hash_value(self, hash_type: HashType) -> str | None:
        return next((value for kind, value in self.hashes if kind == hash_type), None)

    @property
    def actors(self) -> tuple[str, ...]:
        return self._names(THREAT_ACTOR)

    @property
    def malware(self) -> tuple[str, ...]:
        return self._names(MALWARE)

    def _names(self, kind: str) -> tuple[str, ...]:
        # dict.fromkeys de-duplicates while keeping MATI's order.
        return tuple(dict.fromkeys(a.name for a in self.associations if a.kind == kind))
