"""``mati2sentinel suppress add|remove|list``: keep one indicator out of a destination's
workspace now, whatever MATI reports, until an analyst says otherwise (issue 14).

- ``add`` finds the record in MATI (``services.cli.lookup``, as ``explain`` does), stores the
  suppression (``shared.adapters.suppressions``), and revokes every observable of the record
  the workspace holds live, the way the filter revokes (``services.filter.revoking``): the
  revocation takes the claim whoever holds it (``DestinationState.claim_over``), so an
  ordinary upload of the same id still queued is skipped as superseded, and goes to the
  destination's priority lane (``revocation_queue``), not behind a back-fill. From then on
  the filter drops the record (``services.filter.suppressing``).
- ``remove`` deletes it and hands MATI's current record to the filter again as a full sync's
  re-judging (``raw_message(full=True)``): it comes back, under its next generation's id
  (a revoked id is never un-revoked), if it passes the filters and MATI reported it within
  its expiration; not as a fresh report that would extend its validity.
- ``list`` prints them, newest first.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import orjson

from services.cli.lookup import find
from services.cli.query import Query
from services.filter.config import CLAIM_TTL_S
from services.filter.revoking import Revocable, queued_revocation, revocation
from services.filter.suppressing import SUPPRESSED
from shared.adapters.destination_state import DestinationState
from shared.adapters.mati_client import MatiClient
from shared.adapters.suppressions import Suppression, describe
from shared.contract.bus import Bus
from shared.contract.messages import (
    INDICATORS,
    UploadRequest,
    raw_message,
    revocation_queue,
    upload_message,
)
from shared.core.errors import OperatorRefused
from shared.core.events import get_logger
from shared.core.filters import every_observable
from shared.core.indicator import Indicator
from shared.core.parsing import Rejection, parse_indicator
from shared.core.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Added:
    suppression: Suppression
    new: bool
    #: Revocations queued: the observables the workspace held live, or whose upload is
    #: queued or in flight.
    revoking: int
    #: Why nothing could be revoked although MATI knows the record ("" when not the case).
    note: str = ""


@dataclass(frozen=True)
class Removed:
    suppression: Suppression
    #: Whether MATI's record was handed to the filter again.
    republished: bool


def _run_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(6)}"


async def add(
    query: Query,
    reason: str,
    *,
    settings: Settings,
    bus: Bus,
    state: DestinationState,
    mati: MatiClient,
    now: datetime,
) -> Added:
    """Suppress the indicator ``query`` names and queue the revocation of what is live."""
    record = await find(query, mati, settings)
    if record is None:
        raise OperatorRefused(f"MATI knows no indicator {query.text}")
    parsed = parse_indicator(record)
    mati_id = parsed.id if isinstance(parsed, Indicator) else parsed.indicator_id
    if not mati_id:
        raise OperatorRefused(f"MATI's record of {query.text} has no id: nothing to suppress")
    suppression = Suppression(
        mati_id=mati_id,
        value=parsed.value if isinstance(parsed, Indicator) else str(record.get("value", "")),
        type=parsed.type.value if isinstance(parsed, Indicator) else str(record.get("type", "")),
        reason=reason,
        added_at=now,
    )
    new = await state.suppressions.add(suppression)
    if isinstance(parsed, Rejection):
        # Without the observable there is no object to reissue; nothing from this record can
        # be uploaded either, and the filter drops it once it parses again.
        note = f"MATI's record cannot be parsed ({parsed.reason}: {parsed.detail})"
        return Added(suppression, new, 0, note)
    revoking = await _revoke(parsed, suppression, settings=settings, bus=bus, state=state, now=now)
    log.info("cli.suppressed", indicator_id=mati_id, new=new, revoking=revoking)
    return Added(suppression, new, revoking)


#: What ``suppress add`` claims an id it has no revocation for with: no fingerprint is all
#: zeros, so every upload of the indicator still queued, or waiting for the quota, is skipped
#: by the uploader as superseded (``services.uploader.batching``) instead of going live.
SUPPRESSED_CLAIM: Final = "0" * 32


def _revocable(indicator: Indicator, suppression: Suppression | None = None) -> list[Revocable]:
    """Every observable of ``indicator`` (all hashes of an md5, the ``HASH_TYPE`` of the day
    notwithstanding), as a suppression revokes it. No source tag: these bytes were not
    judged by the filter, so none may be recorded. The revocations carry the suppression
    into the workspace, so a cache rebuilt after a lost Redis knows it again."""
    note = None if suppression is None else suppression.note()
    return [
        Revocable(o, SUPPRESSED, indicator.type.value, b"", note)
        for o in every_observable(indicator)
    ]


async def _revoke(
    indicator: Indicator,
    suppression: Suppression,
    *,
    settings: Settings,
    bus: Bus,
    state: DestinationState,
    now: datetime,
) -> int:
    """Queue the revocation of every observable of ``indicator`` whose seen entry is live;
    returns how many.

    Every observable's claim is taken, live or not: an upload of it may be queued (a first
    upload in a back-fill, a re-publication under its next id) and must not go live. One
    whose claim an upload holds while the workspace does not hold it live is revoked too,
    under the id that upload carries, as the filter does (``queued_revocation``): that upload
    may already be in Sentinel with its answer on the way, or lost with an uploader that died
    before committing, and the seen cache cannot know; if it never arrives, Sentinel holds
    the object revoked, never live. A claim ``add`` itself left (``SUPPRESSED_CLAIM``) is no
    upload."""
    candidates = _revocable(indicator, suppression)
    held, entries = await state.claims_and_seen([candidate.lineage for candidate in candidates])
    policy = settings.stix_policy()
    claims: list[tuple[str, str]] = []
    requests: list[UploadRequest] = []
    for candidate, claim, entry in zip(candidates, held, entries, strict=True):
        request = revocation(candidate, entry, now, policy)
        if request is None and claim not in (None, SUPPRESSED_CLAIM):
            request = queued_revocation(candidate, entry, policy)
        if request is not None:
            requests.append(request)
        claims.append((candidate.lineage, request.fingerprint if request else SUPPRESSED_CLAIM))
    await state.claim_over(claims, ttl_s=CLAIM_TTL_S)
    if not requests:
        return 0
    target = revocation_queue(settings.destination)
    await bus.ensure(target)
    run_id = _run_id("suppress")
    await bus.publish(
        target, [upload_message(r, run_id=run_id, source_message_id=run_id) for r in requests]
    )
    queued = len(requests)
    await state.count(
        {"forwarded": queued, "forwarded_revoke": queued, f"revoked_{SUPPRESSED}": queued}
    )
    return queued


async def _cancel_revocations(indicator: Indicator, state: DestinationState) -> None:
    """Before ``remove`` hands the record to the filter: a revocation ``add`` queued that has
    not reached Sentinel yet is called off, by claiming each still-live id with what
    Sentinel holds (the uploader skips the revocation as superseded). Otherwise the filter
    would find the indicator live and unchanged, forward nothing, and the late revocation
    would take it out although nothing suppresses it any more."""
    lineages = [candidate.lineage for candidate in _revocable(indicator)]
    claims, entries = await state.claims_and_seen(lineages)
    held = [
        (lineage, entry.fingerprint)
        for lineage, claim, entry in zip(lineages, claims, entries, strict=True)
        if entry is not None and not entry.revoked and claim not in (None, entry.fingerprint)
    ]
    await state.claim_over(held, ttl_s=CLAIM_TTL_S)


async def remove(
    query: Query,
    *,
    settings: Settings,
    bus: Bus,
    state: DestinationState,
    mati: MatiClient,
) -> Removed:
    """Lift the suppression of ``query`` and hand MATI's current record to the filter."""
    record = await find(query, mati, settings)
    mati_id = query.indicator_id or (str(record.get("id") or "") if record else "")
    if not mati_id:  # a value MATI no longer knows: the suppression still names it
        current = await state.suppressions.snapshot()
        mati_id = next((s.mati_id for s in current.by_id.values() if _names(s, query)), "")
    suppression = await state.suppressions.get(mati_id) if mati_id else None
    if suppression is None or not await state.suppressions.remove(mati_id):
        raise OperatorRefused(
            f"{query.text} is not suppressed in destination {settings.destination}"
        )
    if record is not None:
        parsed = parse_indicator(record)
        if isinstance(parsed, Indicator):
            await _cancel_revocations(parsed, state)
        run_id = _run_id("unsuppress")
        await bus.publish(INDICATORS, [raw_message(record, run_id=run_id, full=True)])
    log.info("cli.unsuppressed", indicator_id=mati_id, republished=record is not None)
    return Removed(suppression, republished=record is not None)


def _names(suppression: Suppression, query: Query) -> bool:
    """Whether ``query`` (a value) names ``suppression``; only URLs are case-sensitive."""
    if query.indicator_type is None or suppression.type != query.indicator_type.value:
        return False
    value = (query.value or "").strip()
    if suppression.type == "url":
        return suppression.value == value
    return suppression.value.lower() == value.lower()


# ---- output --------------------------------------------------------------------------------


def _named(s: Suppression) -> str:
    return f"{s.type} {s.value} ({s.mati_id})"


def render_added(added: Added, destination: str) -> str:
    verb = "suppressed" if added.new else "suppression updated"
    head = f"{verb}: {_named(added.suppression)} in destination {destination}"
    if added.revoking:
        queue = revocation_queue(destination).name
        return f"{head}; {added.revoking} object(s) queued for revocation in {queue}"
    if added.note:
        return f"{head}; {added.note}, so nothing was revoked; kept out from now on"
    return f"{head}; not live in the workspace; kept out from now on"


def render_removed(removed: Removed, destination: str) -> str:
    head = f"suppression removed: {_named(removed.suppression)} in destination {destination}"
    if removed.republished:
        return (
            f"{head}; MATI's record handed to the filter again: it comes back under a new id "
            "if it passes the filters and MATI reported it within its expiration"
        )
    return f"{head}; MATI no longer knows it, so nothing was handed to the filter"


def to_json(destination: str, suppressions: list[Suppression]) -> bytes:
    """``{"destination": …, "suppressions": [{mati_id, value, type, reason, added_at}]}``,
    newest first; ``added_at`` is ISO 8601 with its UTC offset (README documents it)."""
    listed = [s.to_dict() for s in suppressions]
    return orjson.dumps(
        {"destination": destination, "suppressions": listed}, option=orjson.OPT_INDENT_2
    )


def render_list(destination: str, suppressions: list[Suppression]) -> str:
    if not suppressions:
        return f"no suppressions in destination {destination}"
    lines = [f"{len(suppressions)} suppression(s) in destination {destination}, newest first"]
    lines += [f"  {describe(s.to_dict())}" for s in suppressions]
    return "\n".join(lines)
