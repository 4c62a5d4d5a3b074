"""``mati2sentinel explain <value or MATI id>``: where one indicator is, and why.

Nothing here stores anything per indicator (memory stays flat however large the feed): the
answer is re-derived from what the pipeline already keeps. ``gather`` asks MATI for the
indicator as it is now and reads its suppression and, for its STIX ids, the seen cache, the
in-flight claims, the first ``scan_limit`` messages of the subscription, the upload queue and
its priority lane (``Bus.peek``: nothing is locked or counted) and their dead letters.
``services.cli.explain_core.judge`` (pure) turns those facts into the verdict; ``render``
prints it. The scans are bounded, and the answer says when one was cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from services.cli.explain_core import (
    DEFAULT_SCAN_LIMIT,
    Explanation,
    Facts,
    Found,
    Scan,
    Verdict,
    candidates,
    judge,
)
from services.cli.lookup import find
from services.cli.query import Query, read_query
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.mati_client import MatiClient
from shared.contract.bus import Bus, DeadLetter, Peeked, Source
from shared.contract.messages import read_upload, revocation_queue, subscription, upload_queue
from shared.core.errors import MalformedMessage
from shared.core.parsing import format_timestamp, parse_indicator
from shared.core.settings import Settings
from shared.telemetry.gauges import entity_name

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "Explanation",
    "Facts",
    "Found",
    "Query",
    "Verdict",
    "gather",
    "judge",
    "read_query",
    "render",
]


# ---- reading the facts (I/O) ---------------------------------------------------------------


async def gather(
    query: Query,
    *,
    settings: Settings,
    bus: Bus,
    state: DestinationState,
    feed: FeedState,
    mati: MatiClient,
    now: datetime,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> Facts:
    """Ask MATI, then read this indicator's traces in Redis and on the bus (bounded)."""
    record = await find(query, mati, settings)
    indicator_id = str(record.get("id") or "") if record else (query.indicator_id or "")
    parsed = parse_indicator(record) if record is not None else None
    stix_ids = [sid for sid, _ in candidates(indicator_id, parsed)]
    raw = subscription(settings.destination)
    # The priority lane first: a revocation there is the indicator's most current place.
    queues = (revocation_queue(settings.destination), upload_queue(settings.destination))
    scans: list[Scan] = []

    async def peek(source: Source) -> list[Peeked]:
        messages = await bus.peek(source, limit=scan_limit)
        scans.append(Scan(entity_name(source), len(messages), len(messages) >= scan_limit))
        return messages

    async def letters(source: Source) -> list[DeadLetter]:
        found = await bus.dead_letters(source, limit=scan_limit)
        scans.append(
            Scan(f"{entity_name(source)} (dead letters)", len(found), len(found) >= scan_limit)
        )
        return found

    def mine(properties: Mapping[str, str]) -> bool:
        return bool(indicator_id) and (
            properties.get("indicator_id") == indicator_id or properties.get("stix_id") in stix_ids
        )

    suppression = await state.suppressions.get(indicator_id) if indicator_id else None
    seen = await state.seen(stix_ids)
    claims = await state.claims(stix_ids)
    checkpoint = await feed.checkpoint()
    return Facts(
        now=now,
        destination=settings.destination,
        record=record,
        seen=dict(zip(stix_ids, seen, strict=True)),
        claims=dict(zip(stix_ids, claims, strict=True)),
        waiting=[_raw(raw, m) for m in await peek(raw) if mine(m.properties)],
        queued=[_upload(q, m) for q in queues for m in await peek(q) if mine(m.properties)],
        refused=[_raw(raw, m) for m in await letters(raw) if mine(m.properties)],
        rejected=[_upload(q, m) for q in queues for m in await letters(q) if mine(m.properties)],
        scans=scans,
        checkpoint=checkpoint.last_updated if checkpoint else None,
        suppression=suppression,
    )


def _raw(source: Source, message: Peeked | DeadLetter) -> Found:
    at = message.enqueued_at if isinstance(message, Peeked) else message.dead_lettered_at
    return Found(
        entity=entity_name(source),
        message_id=message.message_id,
        at=format_timestamp(at),
        locked=isinstance(message, Peeked) and message.locked,
        reason=message.reason if isinstance(message, DeadLetter) else "",
        description=message.description if isinstance(message, DeadLetter) else "",
    )


def _upload(source: Source, message: Peeked | DeadLetter) -> Found:
    found = _raw(source, message)
    try:
        request = read_upload(message.body)
    except MalformedMessage:
        return replace(found, stix_id=message.properties.get("stix_id"))
    return replace(
        found,
        stix_id=request.stix_id,
        fingerprint=request.fingerprint,
        forward_reason=request.reason.value,
    )


# ---- output --------------------------------------------------------------------------------


def render(explanation: Explanation) -> str:
    """A few lines, the verdict first."""
    e = explanation
    lines = [f"{e.verdict.value.upper()}: {e.headline}"]
    info = e.indicator
    if info:
        lines.append(f"  indicator    {info.get('id')} ({info.get('type')} {info.get('value')})")
        if "mscore" in info:
            lines.append(
                f"  MATI         mscore {info['mscore']}, threat score {info['threat_score']}, "
                f"{'OSINT only' if info['osint'] else 'not OSINT-only'}, categories "
                f"{', '.join(info['categories']) or 'none'}; updated {info['last_updated']}"
            )
        actors = info.get("threat_actors")
        if actors:
            named = ", ".join(f"{actor['name']} ({actor['id']})" for actor in actors)
            lines.append(f"  attributed   {named}")
    if e.filter_detail and e.verdict is not Verdict.DROPPED:
        lines.append(f"  filters      {e.filter_detail}")
    for story in e.stories:
        hashed = f" [{story.hash_type}]" if story.hash_type else ""
        if len(e.stories) == 1 and story.summary == e.headline:
            lines.append(f"  STIX id      {story.stix_id}{hashed}")
        else:
            lines.append(f"  {story.stix_id}{hashed}: {story.summary}")
    for note in e.notes:
        lines.append(f"  note: {note}")
    lines.append(f"  destination {e.destination}, checked {e.checked_at}")
    return "\n".join(lines)
