"""The pure half of ``mati2sentinel explain``: from the facts about one indicator to a
verdict, with no I/O (DESIGN §10: the core is tested without any server).

``judge`` applies the destination's filters to the record MATI holds now and, for each STIX id
the indicator has (or may have had, under another ``HASH_TYPE``), says where it is, the most
current place first: held or queued for upload, claimed, waiting for the filter, in Sentinel
(up to date, refresh due, or stale), dead-lettered, or nowhere, and why. ``services.cli.explain``
reads the facts (``gather``) and prints the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import orjson

from services.cli.explain_drops import drop_detail
from services.cli.query import Query
from services.uploader.reasons import REJECTED_BY_SENTINEL
from shared.adapters.suppressions import Suppression
from shared.contract.messages import revocation_queue, subscription, upload_queue
from shared.core.context import actors_of
from shared.core.filters import DropReason, FilterPolicy, Observable, evaluate
from shared.core.fingerprint import SeenEntry, decide, fingerprint, refresh_after_for
from shared.core.indicator import HashType, Indicator, IndicatorType
from shared.core.parsing import Rejection, format_timestamp, parse_indicator
from shared.core.stix import StixPolicy, content, stix_id
from shared.telemetry.gauges import entity_name

#: How many messages of each queue and dead-letter queue one ``explain`` reads at most.
DEFAULT_SCAN_LIMIT: Final = 1000


class Verdict(StrEnum):
    """Where an indicator (or one of its STIX ids) is; the first word of the answer."""

    UNKNOWN = "unknown"  # MATI does not know it
    SUPPRESSED = "suppressed"  # an analyst suppressed it (``suppress add``)
    REFUSED = "refused"  # the parser refused the record
    DROPPED = "dropped"  # a filter drops it
    WAITING_FOR_FILTER = "waiting_for_filter"  # raw message in the subscription
    QUEUED = "queued"  # in the upload queue, nobody holds it yet
    IN_FLIGHT = "in_flight"  # an uploader holds it, or it is claimed for upload
    UPLOADED = "uploaded"  # seen entry, up to date
    STALE = "stale"  # seen entry, but MATI's current version differs
    REVOKED = "revoked"  # uploaded with ``revoked: true``: in the workspace, matching nothing
    REJECTED = "rejected"  # in the upload dead-letter queue
    NOT_UPLOADED = "not_uploaded"  # accepted, and nothing anywhere


#: When several STIX ids disagree (``HASH_TYPE=all``), the one that needs attention leads.
_URGENCY: Final = (
    Verdict.REJECTED,
    Verdict.REFUSED,
    Verdict.STALE,
    Verdict.REVOKED,
    Verdict.NOT_UPLOADED,
    Verdict.WAITING_FOR_FILTER,
    Verdict.QUEUED,
    Verdict.IN_FLIGHT,
    Verdict.UPLOADED,
)


@dataclass(frozen=True)
class Found:
    """A message of this indicator in a queue (``locked``: a receiver holds it) or in a
    dead-letter queue (``reason``, ``description``)."""

    entity: str
    message_id: str
    at: str
    stix_id: str | None = None
    fingerprint: str | None = None
    forward_reason: str | None = None
    locked: bool = False
    reason: str = ""
    description: str = ""


@dataclass(frozen=True)
class Scan:
    entity: str
    scanned: int
    truncated: bool


@dataclass(frozen=True)
class Facts:
    """Everything ``judge`` needs, read by ``gather`` (or built by a test)."""

    now: datetime
    destination: str
    record: Mapping[str, Any] | None
    seen: Mapping[str, SeenEntry | None] = field(default_factory=dict)
    claims: Mapping[str, str | None] = field(default_factory=dict)
    waiting: Sequence[Found] = ()  # raw messages in the subscription
    queued: Sequence[Found] = ()  # upload messages
    refused: Sequence[Found] = ()  # subscription dead letters
    rejected: Sequence[Found] = ()  # upload dead letters
    scans: Sequence[Scan] = ()
    checkpoint: datetime | None = None
    suppression: Suppression | None = None


@dataclass(frozen=True)
class Story:
    """One STIX id: its verdict, one line saying why, and what was found for it."""

    stix_id: str
    hash_type: str | None
    verdict: Verdict
    summary: str
    accepted: bool
    #: The id the object has in Sentinel: ``stix_id`` (the lineage the state is keyed by)
    #: until a revocation, then the generation's (``shared.core.stix.stix_id``).
    object_id: str | None = None
    fingerprint: str | None = None
    uploaded_fingerprint: str | None = None
    uploaded_at_approx: str | None = None
    valid_until: str | None = None
    claim: str | None = None
    found: list[Found] = field(default_factory=list)


@dataclass(frozen=True)
class Explanation:
    query: str
    destination: str
    checked_at: str
    verdict: Verdict
    headline: str
    indicator: dict[str, Any] | None
    filter_reason: str | None
    filter_detail: str
    stories: list[Story]
    notes: list[str]
    #: ``Suppression.to_dict()`` when the indicator is suppressed.
    suppression: dict[str, str] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)


# ---- the decision (pure) -------------------------------------------------------------------


def judge(
    query: Query,
    facts: Facts,
    policy: FilterPolicy,
    stix_policy: StixPolicy,
    refresh_ratio: float,
) -> Explanation:
    """The verdict on ``facts``: what the filters say now, then per STIX id where it is."""
    notes = [
        f"{s.entity}: only the first {s.scanned} were scanned" for s in facts.scans if s.truncated
    ]
    indicator_id = query.indicator_id
    parsed: Indicator | Rejection | None = None
    if facts.record is not None:
        parsed = parse_indicator(facts.record)
        indicator_id = str(facts.record.get("id") or indicator_id or "")
    ids = candidates(indicator_id, parsed)

    def result(
        verdict: Verdict,
        headline: str,
        stories: list[Story],
        reason: str | None = None,
        detail: str = "",
    ) -> Explanation:
        return Explanation(
            query=query.text,
            destination=facts.destination,
            checked_at=format_timestamp(facts.now),
            verdict=verdict,
            headline=headline,
            indicator=_describe(parsed, facts.record),
            filter_reason=reason,
            filter_detail=detail,
            stories=stories,
            notes=notes,
            suppression=facts.suppression.to_dict() if facts.suppression else None,
        )

    if facts.suppression is not None:
        # Whatever MATI and the filters say, it stays out; its stories say what is left of it
        # (a revocation not uploaded yet shows as its claim).
        s = facts.suppression
        stories = _leftovers(indicator_id or "", ids, facts, stix_policy, refresh_ratio, notes)
        headline = (
            f"suppressed since {format_timestamp(s.added_at)}: {s.reason} "
            "(kept out of the workspace until `suppress remove`)"
        )
        return result(Verdict.SUPPRESSED, headline, stories)
    if parsed is None or isinstance(parsed, Rejection):
        stories = _leftovers(indicator_id or "", ids, facts, stix_policy, refresh_ratio, notes)
        if parsed is None:
            return result(Verdict.UNKNOWN, f"unknown to MATI: no indicator {query.text}", stories)
        detail = f"{parsed.reason}: {parsed.detail}"
        return result(Verdict.REFUSED, f"refused by the parser: {detail}", stories, detail=detail)
    verdict = evaluate(parsed, policy)
    if isinstance(verdict, DropReason):
        detail = drop_detail(verdict, parsed, policy)
        stories = _leftovers(indicator_id or "", ids, facts, stix_policy, refresh_ratio, notes)
        headline = f"dropped by {verdict}: {detail}"
        return result(Verdict.DROPPED, headline, stories, reason=str(verdict), detail=detail)
    stories = [
        _story(
            parsed.id,
            stix_id(parsed.id, o.hash_type),
            o.hash_type,
            o,
            parsed,
            facts,
            stix_policy,
            refresh_ratio,
        )
        for o in verdict
    ]
    lead = min(stories, key=lambda s: _URGENCY.index(s.verdict))
    detail = f"accepted as {len(stories)} STIX indicator(s)"
    return result(lead.verdict, lead.summary, stories, detail=detail)


def _leftovers(
    mati_id: str,
    ids: Sequence[tuple[str, HashType | None]],
    facts: Facts,
    stix_policy: StixPolicy,
    refresh_ratio: float,
    notes: list[str],
) -> list[Story]:
    """What is left of an indicator the filters do not take (or MATI does not know): its
    STIX ids that are still somewhere, and its raw messages, said once in ``notes``."""
    raw = subscription(facts.destination)
    notes += [
        f"a raw message waits for the filter in {entity_name(raw)} since {f.at}"
        for f in facts.waiting
    ]
    notes += [f"refused by the parser earlier: {f.description} ({f.at})" for f in facts.refused]
    alone = replace(facts, waiting=(), refused=())
    stories = [
        _story(mati_id, sid, ht, None, None, alone, stix_policy, refresh_ratio) for sid, ht in ids
    ]
    return [s for s in stories if s.verdict is not Verdict.NOT_UPLOADED]


def candidates(
    indicator_id: str | None, parsed: Indicator | Rejection | None
) -> list[tuple[str, HashType | None]]:
    """Every STIX id this indicator can have had, whatever ``HASH_TYPE`` was then."""
    if not indicator_id:
        return []
    md5 = indicator_id.lower().startswith("md5--") or (
        isinstance(parsed, Indicator) and parsed.type is IndicatorType.MD5
    )
    hash_types: list[HashType | None] = list(HashType) if md5 else [None]
    return [(stix_id(indicator_id, ht), ht) for ht in hash_types]


def _story(
    mati_id: str,
    sid: str,
    hash_type: HashType | None,
    observable: Observable | None,
    indicator: Indicator | None,
    facts: Facts,
    stix_policy: StixPolicy,
    refresh_ratio: float,
) -> Story:
    """Where one STIX id is, most current place first: held or queued for upload, claimed,
    waiting for the filter, in Sentinel, dead-lettered, nowhere."""
    now = facts.now
    entry = facts.seen.get(sid)
    generation = entry.generation if entry is not None else 0
    object_id = stix_id(mati_id, hash_type, generation) if generation and mati_id else sid
    current = (
        fingerprint(content(observable, stix_policy, object_id=object_id)) if observable else None
    )
    # A revoked object is in the workspace but matches nothing: not "in Sentinel" here.
    seen = entry if entry is not None and entry.live(now) else None
    claim = facts.claims.get(sid)
    queued = [f for f in facts.queued if f.stix_id == sid]
    rejected = [f for f in facts.rejected if f.stix_id == sid]
    found = [*queued, *rejected, *facts.waiting, *facts.refused]
    expiration = _expiration(stix_policy, hash_type, indicator)
    uploaded = ""
    extra: dict[str, Any] = {}
    if entry is not None:
        at = format_timestamp(entry.valid_until - expiration)
        until = format_timestamp(entry.valid_until)
        uploaded = f"uploaded ≈{at}, valid until {until}"
        extra = {
            "uploaded_fingerprint": entry.fingerprint,
            "uploaded_at_approx": at,
            "valid_until": until,
        }

    def story(verdict: Verdict, summary: str) -> Story:
        return Story(
            sid, hash_type and hash_type.value, verdict, summary, observable is not None,
            object_id=object_id, fingerprint=current, claim=claim, found=found, **extra,
        )  # fmt: skip

    if any(f.locked for f in queued):
        held = next(f for f in queued if f.locked)
        return story(
            Verdict.IN_FLIGHT,
            f"in flight: an uploader holds it ({held.entity}, queued {held.at})",
        )
    if queued:
        first = queued[0]
        why = f", {first.forward_reason}" if first.forward_reason else ""
        return story(Verdict.QUEUED, f"queued for upload in {first.entity} since {first.at}{why}")
    if claim is not None:
        return story(
            Verdict.IN_FLIGHT,
            f"in flight: claimed for upload (fingerprint {claim[:12]}…), its message not among "
            f"the messages scanned in {upload_queue(facts.destination).name} and "
            f"{revocation_queue(facts.destination).name}",
        )
    if facts.waiting and observable is not None:
        name = entity_name(subscription(facts.destination))
        return story(
            Verdict.WAITING_FOR_FILTER,
            f"waiting for the filter in {name} since {facts.waiting[0].at}",
        )
    if entry is not None and entry.revoked:
        summary = f"revoked in Sentinel as {object_id} ({uploaded})"
        if observable is not None and mati_id:
            following = stix_id(mati_id, hash_type, entry.next_generation())
            summary += f"; it passes again: the next sync that reports it publishes {following}"
        return story(Verdict.REVOKED, summary)
    if seen is not None:
        due = current is not None and bool(
            decide(
                seen, current, now, now + expiration, refresh_after_for(expiration, refresh_ratio)
            )
        )
        return story(*_live(seen, current, uploaded, due, rejected))
    if rejected:
        return story(Verdict.REJECTED, _rejection(rejected[-1]))
    if facts.refused:
        letter = facts.refused[-1]
        return story(Verdict.REFUSED, f"refused by the parser: {letter.description} ({letter.at})")
    return story(Verdict.NOT_UPLOADED, _nowhere(indicator, facts.checkpoint))


def _live(
    seen: SeenEntry, current: str | None, uploaded: str, due: bool, rejected: Sequence[Found]
) -> tuple[Verdict, str]:
    """The verdict on an id live in Sentinel, against MATI's current version of it."""
    if current is None:
        return Verdict.UPLOADED, f"still in Sentinel from an earlier upload: {uploaded}"
    if seen.fingerprint == current:
        refresh = "; a refresh is due (the next sync re-uploads it)" if due else ""
        return Verdict.UPLOADED, f"{uploaded}; up to date{refresh}"
    newer = [f for f in rejected if f.fingerprint == current]
    if newer:
        return Verdict.REJECTED, f"{_rejection(newer[0])} (the version {uploaded} stays)"
    return (
        Verdict.STALE,
        f"{uploaded}, but MATI's current version differs (fingerprint {current[:12]}… ≠ "
        f"{seen.fingerprint[:12]}…): the next sync that reports it uploads it",
    )


def _rejection(letter: Found) -> str:
    if letter.reason == REJECTED_BY_SENTINEL:
        return f"rejected by Sentinel: {letter.description} ({letter.at})"
    return f"dead-lettered by the uploader ({letter.reason}): {letter.description} ({letter.at})"


def _nowhere(indicator: Indicator | None, checkpoint: datetime | None) -> str:
    text = "not in Sentinel and not on its way"
    updated = indicator.last_updated if indicator else None
    if updated is None or checkpoint is None:
        return f"{text}: the next sync that fetches it uploads it"
    when = format_timestamp(updated)
    if updated > checkpoint:
        return f"{text}: MATI updated it at {when}, after the checkpoint, so the next sync does"
    return (
        f"{text}: MATI last updated it at {when}, before the checkpoint "
        f"{format_timestamp(checkpoint)}, so no sync fetches it until MATI reports it again"
    )


def _expiration(
    policy: StixPolicy, hash_type: HashType | None, indicator: Indicator | None
) -> timedelta:
    """The type's expiration now; "uploaded at" = valid_until minus it, hence "≈"."""
    if hash_type is not None:
        return policy.hash_expiration
    kind = indicator.type if indicator else None
    return {
        IndicatorType.IPV4: policy.ipv4_expiration,
        IndicatorType.FQDN: policy.fqdn_expiration,
        IndicatorType.URL: policy.url_expiration,
    }.get(kind or IndicatorType.IPV4, policy.ipv4_expiration)


def _describe(parsed: Indicator | Rejection | None, record: Mapping[str, Any] | None) -> Any:
    if record is None:
        return None
    if not isinstance(parsed, Indicator):
        return {key: record.get(key) for key in ("id", "type", "value")}
    return {
        "id": parsed.id,
        "type": parsed.type.value,
        "value": parsed.value,
        "mscore": parsed.mscore,
        "threat_score": parsed.threat_score,
        "osint": parsed.is_osint,
        "categories": list(parsed.categories),
        # Whose infrastructure it is, as MATI attributes it: what an analyst asks first.
        "threat_actors": [{"id": actor.mati_id, "name": actor.name} for actor in actors_of(parsed)],
        "last_updated": format_timestamp(parsed.last_updated) if parsed.last_updated else None,
    }
