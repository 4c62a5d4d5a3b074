"""Revocation and re-publication (DESIGN §5 "Revocation", issue 14): the filter's answer when
MATI reports a record again and the verdict moved.

- A record that no longer passes (any ``DropReason``), and an accepted md5's hashes that
  ``HASH_TYPE`` no longer selects, are revoked where the workspace holds them: each such
  observable whose seen entry is live (uploaded, not revoked, not expired) is forwarded again
  under the id it went out with, with ``revoked: true``. The uploader stamps a newer
  ``modified``, so Sentinel takes it as the object's next version. Counted ``revoked_<reason>``.
  So is one whose upload is still queued or in flight (its claim is held, see
  ``queued_revocation``): judged under earlier settings before ``sync --once --full``, or an
  earlier version MATI reported.
- An accepted observable whose entry is revoked goes out under the next generation's id
  (``shared.core.stix.stix_id``): STIX forbids un-revoking an id. A live entry of a later
  generation keeps its id, so ``decide`` compares like with like.

Seen entries, claims and upload messages stay keyed by the generation-0 id (the lineage);
only the object's own ``id`` carries the generation. No I/O here: the worker looks the
lineages up in the batch's one ``MGET`` and hands the entries in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from shared.contract.messages import UploadRequest
from shared.core.filters import Observable
from shared.core.fingerprint import ForwardReason, SeenEntry
from shared.core.indicator import HashType
from shared.core.stix import SUPPRESSED_PROPERTY, Draft, StixPolicy, stix_id

#: The ``revoked_<reason>`` of an accepted md5's hash that ``HASH_TYPE`` no longer selects
#: (every other reason is a ``DropReason``).
HASH_TYPE_UNSELECTED: Final = "hash_type_unselected"


@dataclass(frozen=True, slots=True)
class Revocable:
    """One observable of a record that may have to be revoked, and why."""

    observable: Observable
    reason: str
    indicator_type: str
    source: bytes
    #: A suppression's description (``Suppression.note``) when an analyst's suppression is
    #: why: the revoked object carries it (``SUPPRESSED_PROPERTY``).
    note: Mapping[str, str] | None = None

    @property
    def lineage(self) -> str:
        return stix_id(self.observable.indicator.id, self.observable.hash_type)


def revocation(
    candidate: Revocable, entry: SeenEntry | None, now: datetime, policy: StixPolicy
) -> UploadRequest | None:
    """The revocation to forward for ``candidate``, or ``None`` when the workspace does not
    hold it live (never uploaded, already revoked, or expired: nothing matches on it)."""
    if entry is None or not entry.live(now):
        return None
    return _revoking(candidate, entry.generation, policy)


def queued_revocation(
    candidate: Revocable, entry: SeenEntry | None, policy: StixPolicy
) -> UploadRequest:
    """The revocation of an upload of ``candidate`` that is queued or in flight (its claim is
    held) while the workspace does not hold it live as far as the seen cache knows: under the
    id that upload carries. Forwarded, it takes the claim, so a queued upload is skipped as
    superseded; it revokes what an upload whose answer was lost (its uploader died before
    committing) put live in Sentinel; and if nothing reached Sentinel, Sentinel holds the
    object revoked, never live."""
    return _revoking(candidate, 0 if entry is None else entry.next_generation(), policy)


def _revoking(candidate: Revocable, generation: int, policy: StixPolicy) -> UploadRequest:
    observable = candidate.observable
    object_id = stix_id(observable.indicator.id, observable.hash_type, generation)
    properties = None if candidate.note is None else {SUPPRESSED_PROPERTY: dict(candidate.note)}
    draft = Draft.of(observable, policy).reissued(object_id, revoked=True, properties=properties)
    return UploadRequest(
        draft,
        ForwardReason.REVOKE,
        source_tag=candidate.source,
        indicator_type=candidate.indicator_type,
        lineage=candidate.lineage if generation else "",
        generation=generation,
    )


def in_generation(
    draft: Draft,
    mati_id: str,
    hash_type: HashType | None,
    entry: SeenEntry | None,
) -> tuple[Draft, str, int]:
    """``draft`` (made under the lineage id) under the generation its upload goes out with,
    the lineage id to key it by ("" when that is the draft's own id), and the generation."""
    generation = 0 if entry is None else entry.next_generation()
    if not generation:
        return draft, "", 0
    lineage = draft.stix_id
    return draft.reissued(stix_id(mati_id, hash_type, generation)), lineage, generation
