"""Gathering a batch and deciding, per message, what it needs before anything is uploaded.

Kept apart from the worker because it is the part a reader checks against DESIGN §4 line by
line: a message that is not the contract's shape is dead-lettered with its reason (never
dropped, never retried forever); a message a newer version superseded, or one already uploaded
(a redelivery after a crash between Sentinel's answer and ``complete``), is completed without a
second upload; everything else is uploaded.

Each message carries the STIX object the filter mapped and fingerprinted
(``shared.contract.messages``), so the uploader only stamps it with the upload time: one mapping per
indicator, in one place, and the fingerprint always describes what Sentinel receives.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry.trace import Span

from services.uploader.reasons import MALFORMED_MESSAGE, REJECTED_BY_SENTINEL
from shared.adapters.destination_state import DestinationState
from shared.contract.bus import Bus, Delivery, Queue
from shared.contract.messages import UploadRequest, read_upload
from shared.core.errors import BusUnavailable, LockLost, MalformedMessage, StateUnavailable
from shared.core.fingerprint import SeenEntry, decide, refresh_after_for
from shared.core.stix import UploadTime
from shared.telemetry import logs, tracing

log = logs.get_logger(__name__)


@dataclass(slots=True)
class Item:
    """One message that maps to one STIX indicator: the filter's draft, stamped anew on each
    request that carries it (a retry or a split half only moves the timestamps)."""

    delivery: Delivery
    request: UploadRequest

    @property
    def stix_id(self) -> str:
        return self.request.stix_id

    @property
    def fingerprint(self) -> str:
        return self.request.fingerprint

    @property
    def claim(self) -> tuple[str, str]:
        return (self.request.stix_id, self.request.fingerprint)

    def build(self, time: UploadTime) -> tuple[dict[str, object], datetime]:
        """The object to upload at ``time`` and its ``valid_until`` as Sentinel stores it
        (milliseconds, truncated), which is what the seen entry must hold."""
        return self.request.draft.at(time)


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that can never be uploaded: dead-letter it with ``reason``."""

    delivery: Delivery
    reason: str
    description: str


@dataclass(slots=True)
class Prepared:
    """A received batch sorted by what each message needs."""

    upload: list[Item] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    superseded: list[Item] = field(default_factory=list)
    already_uploaded: list[Item] = field(default_factory=list)


def decode(delivery: Delivery) -> Item | Invalid:
    """The item a message stands for, or why it cannot be uploaded."""
    try:
        return Item(delivery, read_upload(delivery.body))
    except MalformedMessage as exc:
        return Invalid(delivery, MALFORMED_MESSAGE, str(exc))


async def prepare(
    deliveries: Sequence[Delivery],
    state: DestinationState,
    *,
    now: datetime,
    refresh_ratio: float,
    skip_uploaded: bool = True,
) -> Prepared:
    """Sort ``deliveries``; one Redis round trip for the whole batch (claims and seen).

    - superseded: the in-flight claim now holds another fingerprint, so a newer version of
      this indicator is queued behind us and uploading ours would only be overwritten;
      or the seen entry is of a later revocation generation, or revoked this very one (a
      message that waited out its claim): uploading ours would undo what Sentinel holds;
    - already uploaded: the seen cache says this very version went up recently enough that
      the filter would not forward it now (``decide`` is None): a redelivery after a crash
      between Sentinel's answer and ``complete`` must not cost a second request.
    """
    prepared = Prepared()
    items: list[Item] = []
    for delivery in deliveries:
        decoded = decode(delivery)
        if isinstance(decoded, Invalid):
            prepared.invalid.append(decoded)
        else:
            items.append(decoded)
    if not items:
        return prepared
    claims, seen = await state.claims_and_seen([item.stix_id for item in items])
    for item, claim, entry in zip(items, claims, seen, strict=True):
        if _superseded(item, claim, entry):
            prepared.superseded.append(item)
            continue
        if not skip_uploaded:
            prepared.upload.append(item)
            continue
        if entry is not None and entry.revoked:
            # A revocation Sentinel already accepted (redelivered): revoking again is waste.
            if item.request.revoked and entry.fingerprint == item.fingerprint:
                prepared.already_uploaded.append(item)
                continue
        elif entry is not None:
            expiration = item.request.draft.expiration
            refresh_after = refresh_after_for(expiration, refresh_ratio)
            if decide(entry, item.fingerprint, now, now + expiration, refresh_after) is None:
                prepared.already_uploaded.append(item)
                continue
        prepared.upload.append(item)
    return prepared


def _superseded(item: Item, claim: str | None, entry: SeenEntry | None) -> bool:
    """A newer version of the indicator is queued (the claim holds another fingerprint), or
    what Sentinel holds overtook this message (``_overtaken``): sending it would only be
    overwritten, or would undo a revocation."""
    return (claim is not None and claim != item.fingerprint) or _overtaken(item, entry)


def _overtaken(item: Item, entry: SeenEntry | None) -> bool:
    request = item.request
    if entry is None or request.generation > entry.generation:
        return False
    return request.generation < entry.generation or (entry.revoked and not request.revoked)


@dataclass(slots=True)
class Received:
    """One batch as received, each part with the queue its messages are settled on: the
    priority lane's revocations first, then ordinary uploads."""

    parts: list[tuple[Queue, list[Delivery]]] = field(default_factory=list)

    @classmethod
    def of(cls, queue: Queue, deliveries: Sequence[Delivery]) -> Received:
        return cls([(queue, list(deliveries))] if deliveries else [])

    @property
    def deliveries(self) -> list[Delivery]:
        return [delivery for _, part in self.parts for delivery in part]

    def __len__(self) -> int:
        return sum(len(part) for _, part in self.parts)


async def receive_batch(
    bus: Bus,
    priority: Queue,
    queue: Queue,
    *,
    max_messages: int,
    first_wait_s: float,
    linger_s: float,
    stop: asyncio.Event,
) -> Received:
    """Up to ``max_messages``: whatever waits in the ``priority`` lane (revocations), without
    waiting for it, then ordinary uploads from ``queue``: wait ``first_wait_s`` for the first
    (none when the lane gave some: they must not wait), then keep taking more for at most
    ``linger_s`` so a trickle still fills a request (the quota counts requests, not records).
    A bus failure once the batch holds something ends it with what it holds.

    The lane costs one receive per batch that finds it empty, a round trip (Redis) or the
    shortest wait (Service Bus): small beside a request to Sentinel, which the quota paces. A
    revocation never waits behind a back-fill, and it rides in a request the quota already
    counts, so the lane needs no budget of its own."""
    urgent = await bus.receive(priority, max_messages=max_messages, max_wait_s=0.0)
    received = Received.of(priority, urgent)
    room = max_messages - len(urgent)
    if not room:
        return received
    try:
        batch = await bus.receive(
            queue, max_messages=room, max_wait_s=0.0 if urgent else first_wait_s
        )
    except BusUnavailable:
        if urgent:
            return received
        raise
    if not batch:
        return received
    loop = asyncio.get_running_loop()
    deadline = loop.time() + linger_s
    while len(batch) < room and not stop.is_set():
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            more = await bus.receive(queue, max_messages=room - len(batch), max_wait_s=remaining)
        except BusUnavailable:
            break
        batch.extend(more)
    received.parts.append((queue, batch))
    return received


class HeldBatch:
    """The deliveries of one batch not settled yet, and the settling of them.

    What it still holds is what lock renewal covers and what a stop gives back. Counts go to
    the worker's ``tally`` (flushed to the destination counters by the worker). A lock lost on
    any settle means another replica owns that message now: it is counted and let go (the
    other replica may upload it again, which is idempotent by STIX id).

    Each held message has an ``upload indicator`` span, child of the context the message
    carried (the filter's span for that indicator), ended with its outcome when the message is
    let go, whichever way that happens.
    """

    def __init__(
        self,
        bus: Bus,
        received: Received,
        state: DestinationState,
        tally: Counter[str],
        now: float,
    ) -> None:
        self._bus = bus
        self._state = state
        self._tally = tally
        deliveries = received.deliveries
        #: Held messages by identity, not by lock token: tokens are only unique within one
        #: entity (two Redis streams hand out the same entry ids), and a batch spans two.
        self._held = {id(d): d for d in deliveries}
        #: The queue each message is settled on (the priority lane's or the ordinary one).
        self._queue_of = {id(d): queue for queue, part in received.parts for d in part}
        #: Loop time of the last renewal (or of receiving).
        self.renewed_at = now
        system = tracing.messaging_system(bus)
        self._attributes = {
            queue.name: tracing.destination_attributes(system, queue.name, "process")
            for queue, _ in received.parts
        }
        #: One attribute set per queue and delivery count (nearly always just 1 per queue),
        #: not one per message.
        self._per_count: dict[tuple[str, int], dict[str, str | int]] = {}
        #: Whether spans are recorded at all; when not, no per-message span is made (a
        #: dead-letter still makes one, so its log line carries the message's trace).
        self.recording = tracing.recording()
        self._spans: dict[int, Span] = (
            {id(d): self._span(d) for d in deliveries} if self.recording else {}
        )
        self._attempts: Counter[int] = Counter()

    def _span(self, delivery: Delivery) -> Span:
        """The ``upload indicator`` span of one message, child of the context it carried."""
        count = delivery.delivery_count
        queue = self._queue_of[id(delivery)].name
        attributes = self._per_count.get((queue, count))
        if attributes is None:
            attributes = self._per_count[queue, count] = {
                **self._attributes[queue],
                "messaging.message.delivery_count": count,
            }
        return tracing.consumer_span(
            "upload indicator", delivery.properties, delivery.message_id, attributes
        )

    @property
    def deliveries(self) -> list[Delivery]:
        return list(self._held.values())

    def holds(self, delivery: Delivery) -> bool:
        return id(delivery) in self._held

    def _by_queue(self, deliveries: Sequence[Delivery]) -> dict[Queue, list[Delivery]]:
        """``deliveries`` grouped by the queue each is settled on (one call per queue)."""
        grouped: dict[Queue, list[Delivery]] = {}
        for delivery in deliveries:
            grouped.setdefault(self._queue_of[id(delivery)], []).append(delivery)
        return grouped

    def _drop(self, deliveries: Sequence[Delivery], outcome: str) -> None:
        for delivery in deliveries:
            self._held.pop(id(delivery), None)
            span = self._spans.pop(id(delivery), None)
            if span is not None:
                tracing.finish(span, outcome)

    def record_request(self, deliveries: Sequence[Delivery], request: Span, outcome: str) -> None:
        """Note on each message's span one upload request that carried it, linked to that
        request's span: a retried message shows several, and ``upload.attempts`` above 1."""
        if not self._spans:
            return
        link = request.get_span_context()
        for delivery in deliveries:
            span = self._spans.get(id(delivery))
            if span is not None:
                self._attempts[id(delivery)] += 1
                span.add_link(link)
                span.add_event("upload.request", {"outcome": outcome})
                span.set_attribute("upload.attempts", self._attempts[id(delivery)])

    async def renew(self, now: float) -> None:
        """Restart every held lock; a bus hiccup is only logged (the lock may still last)."""
        self.renewed_at = now
        deliveries = self.deliveries
        if not deliveries:
            return
        for queue, group in self._by_queue(deliveries).items():
            try:
                await self._bus.renew_locks(queue, group)
            except LockLost as exc:
                self._lock_lost(exc, "renew")
                lost = set(exc.message_ids)
                self._drop([d for d in group if d.message_id in lost], "lock_lost")
            except BusUnavailable as exc:
                log.warning("upload.renew_failed", detail=str(exc))

    async def complete(self, deliveries: Sequence[Delivery], outcome: str) -> None:
        """``outcome`` (accepted, superseded, already_uploaded) goes on the messages' spans."""
        groups = self._by_queue(deliveries)
        self._drop(deliveries, outcome)
        for queue, group in groups.items():
            try:
                await self._bus.complete(queue, group)
            except LockLost as exc:
                self._lock_lost(exc, "complete")

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        description: str,
        claim: tuple[str, str] | None,
    ) -> None:
        """Set the message aside with its reason, then drop its claim so the next sync may
        queue the indicator again (a fixed record, say)."""
        span = self._spans.get(id(delivery))
        if span is None and not self.recording and self.holds(delivery):
            span = self._span(delivery)  # not recorded: only for the log line's trace ids
        rejected = reason == REJECTED_BY_SENTINEL
        queue = self._queue_of[id(delivery)]
        self._drop([delivery], "rejected" if rejected else f"dead_lettered_{reason}")
        try:
            await self._bus.dead_letter(queue, delivery, reason=reason, description=description)
        except LockLost as exc:
            self._lock_lost(exc, "dead_letter")
            return
        self._tally["dead_lettered"] += 1
        self._tally[f"dead_lettered_{reason}"] += 1
        with tracing.within(span or tracing.INVALID_SPAN):
            log.warning(
                "upload.dead_lettered",
                reason=reason,
                description=description,
                message_id=delivery.message_id,
            )
        if claim is not None:
            await self.release_claims([claim])

    async def without_overtaken(self, items: list[Item]) -> list[Item]:
        """``items`` less those overtaken while they waited (for the quota, a retry, an open
        circuit), which are completed as superseded: a revocation may have reached Sentinel
        meanwhile, through the priority lane or another replica, and sending the live version
        now would undo it. One round trip, paid only by a request that waited."""
        claims, seen = await self._state.claims_and_seen([item.stix_id for item in items])
        stale = [
            item
            for item, claim, entry in zip(items, claims, seen, strict=True)
            if _superseded(item, claim, entry)
        ]
        if not stale:
            return items
        self._tally["superseded"] += len(stale)
        await self.complete([item.delivery for item in stale], "superseded")
        return [item for item in items if self.holds(item.delivery)]

    async def release_claims(self, claims: list[tuple[str, str]]) -> None:
        """Best effort: a claim left behind only expires later (its TTL), delaying a re-queue
        of that indicator, never losing it."""
        try:
            await self._state.release(claims)
        except StateUnavailable as exc:
            log.warning("upload.release_failed", count=len(claims), detail=str(exc))

    async def abandon(self, why: str) -> None:
        """Give back everything still held (best effort: an expired lock returns it too)."""
        deliveries = self.deliveries
        self._drop(deliveries, "abandoned")
        if not deliveries:
            return
        self._tally["abandoned"] += len(deliveries)
        log.info("upload.abandoned", count=len(deliveries), why=why)
        for queue, group in self._by_queue(deliveries).items():
            try:
                await self._bus.abandon(queue, group)
            except LockLost as exc:
                self._lock_lost(exc, "abandon")
            except BusUnavailable as exc:
                log.warning("upload.abandon_failed", detail=str(exc))

    def _lock_lost(self, exc: LockLost, action: str) -> None:
        self._tally["lock_lost"] += len(exc.message_ids)
        log.warning("upload.lock_lost", action=action, count=len(exc.message_ids))
