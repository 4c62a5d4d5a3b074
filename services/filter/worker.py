"""The filter's work on one batch of raw MATI records (DESIGN.md §2 filter, §4, §5).

A batch goes through four stages, and the Redis cost is per batch, never per message: one
``seen`` (``MGET``), at most two ``claim`` scripts (first deliveries, redeliveries: the
script takes one ``redelivery`` flag per call), one ``count``; the bus adds one publish, one
complete (each chunked by 500) and one call per dead letter, which only bad input costs.

Nothing is received while the destination's seen cache is not trusted (``holding``: it was
lost with Redis and the uploader rebuilds it); the same ``MGET`` tells when it is lost again.

0. **Recognise** records already judged: each body's source tag (``shared.core.source_tag``) is
   looked up, in the same ``MGET``, under the STIX ids the message's properties predict;
   a record whose every id was uploaded from these very bytes and needs no refresh is
   ``dropped_unchanged`` without being parsed. A steady-state sync costs a hash per record.
   The same ``MGET`` reads the suppressions' version (``suppressing``): a suppressed record
   is never recognised, it is judged, dropped and revoked where live.
1. **Judge** every other record on its own (``judging``): parse, filter, fingerprint. A
   record that cannot be parsed is dead-lettered with the reason; the batch goes on.
2. **Decide** against the seen cache (``decide``: new, changed, refresh, or unchanged); ids
   the prediction missed cost a second ``MGET``.
3. **Claim** what is to be forwarded, so a second sync cannot queue the same version while the
   first is still queued. A redelivered raw message (``delivery_count > 1``) may hold a claim
   from its own earlier, possibly failed, forward: it takes its claim over instead of
   dropping itself as "in flight", which could otherwise lose the indicator.
4. **Forward** all claimed observables in one publish (revocations in a second one, to the
   uploader's priority lane), and only after that returned settle the raw messages. If the
   publish fails, the claims are released and the raw messages that had forwards are
   abandoned, so they come back; nothing is completed that was not forwarded.

Each batch is a ``filter batch`` span linking its messages, and each raw message gets a
``filter indicator`` span whose parent is the context the message carried (the fetcher's page):
its context rides on what it forwards, so one indicator's path stays one trace. When nothing
records spans (no exporter), messages get no span and the batch no links (they were half of
a steady-state batch's cost): what a message forwards carries the raw message's own trace
context, and its dead-letter log line names that trace.

Every outcome is counted in the destination's counters, per raw message (``received``,
``rejected_<reason>``, ``dropped_<filter reason>``) or per observable (``dropped_unchanged``,
``dropped_in_flight``, ``forwarded``, ``forwarded_<reason>``, ``revoked_<reason>`` for a
revocation, see ``revoking``). Counts cover the messages this
batch settled; a message that comes back is counted again when it is settled again.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from opentelemetry.trace import INVALID_SPAN, Span

from services.filter.config import UNAVAILABLE_BACKOFF, FilterConfig
from services.filter.holding import Birth
from services.filter.judging import FILTER_ERROR, INVALID_RECORD, Item, judge
from services.filter.revoking import Revocable, in_generation, queued_revocation, revocation
from services.filter.suppressing import SUPPRESSED, SuppressedIds
from shared.adapters.destination_state import Claimed, DestinationState
from shared.contract.bus import Bus, Delivery, Message
from shared.contract.messages import (
    INDICATORS,
    UploadRequest,
    revocation_queue,
    subscription,
    upload_queue,
)
from shared.core.errors import LockLost, TransientError
from shared.core.events import get_logger
from shared.core.fingerprint import ForwardReason, SeenEntry, decide
from shared.core.retrying import Retrier, Stopped, retry
from shared.core.source_tag import Shortcut, predicted_ids
from shared.core.timing import UtcClock, utc_now
from shared.telemetry import tracing

__all__ = ["FILTER_ERROR", "INVALID_RECORD", "BatchOutcome", "FilterWorker"]

log = get_logger(__name__)

_MAX_ERROR_CHARS: Final = 200


@dataclass(slots=True)
class BatchOutcome:
    """What one batch came to: counts by outcome, the names used in the counters hash."""

    counts: Counter[str] = field(default_factory=Counter)

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


class FilterWorker:
    """Filters one destination's subscription into its upload queue; see the module doc."""

    def __init__(
        self,
        config: FilterConfig,
        *,
        bus: Bus,
        state: DestinationState,
        clock: UtcClock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        if state.destination != config.destination:
            raise ValueError(
                f"state is for destination {state.destination!r}, not {config.destination!r}"
            )
        self.config = config
        self.destination = config.destination
        self.source = subscription(config.destination)
        self.target = upload_queue(config.destination)
        #: Revocations go to the uploader's priority lane, not behind a back-fill.
        self.urgent = revocation_queue(config.destination)
        self._bus = bus
        self._state = state
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._system = tracing.messaging_system(bus)
        self._shortcut = Shortcut(config.filter_policy, config.stix_policy, config.refresh_ratio)
        self._suppressed = SuppressedIds(state.suppressions)
        self._birth = Birth(state, hold=config.hold_until_born)

    # ----------------------------------------------------------------------------------------
    # The loop

    async def run(self, stop: asyncio.Event) -> None:
        """Receive, handle, repeat until ``stop``, in ``lanes`` loops at once; a batch in hand
        is finished first.

        A batch waits on Redis for a good part of its time (the seen cache, claims, publish,
        completion); with two lanes the other batch is parsed meanwhile, so the bus's server
        and this process work at the same time. A lane is like one more replica in the same
        process: claims keep concurrent batches apart exactly as they keep replicas apart.

        An unavailable bus or Redis is waited out with a stop-aware back-off, never a crash:
        the messages of a failed batch were not completed, so their locks expire and they come
        back (abandoning them instead would burn their delivery count on every retry).
        """
        async with asyncio.TaskGroup() as lanes:
            for _ in range(self.config.lanes):
                lanes.create_task(self._lane(stop))

    async def _lane(self, stop: asyncio.Event) -> None:
        retrier = Retrier(UNAVAILABLE_BACKOFF, self._rng, bounded=False)

        async def once() -> None:
            if not await self._birth.ready(stop):
                return
            deliveries = await self._receive()
            if deliveries:
                await self.handle(deliveries)

        def unavailable(exc: BaseException, wait: float) -> None:
            log.warning(
                "filter.unavailable",
                error=f"{type(exc).__name__}: {str(exc)[:_MAX_ERROR_CHARS]}",
                failures=retrier.failures,
                retry_in_s=round(wait, 3),
            )

        while not stop.is_set():
            try:
                await retry(
                    once, on=TransientError, retrier=retrier, stop=stop, on_retry=unavailable
                )
            except Stopped:
                return

    async def _receive(self) -> list[Delivery]:
        return await self._bus.receive(
            self.source,
            max_messages=self.config.batch_size,
            max_wait_s=self.config.receive_wait_s,
        )

    async def handle(self, deliveries: Sequence[Delivery]) -> BatchOutcome:
        """Filter and forward one batch, then settle it; see the module docstring.

        Raises ``StateUnavailable`` when the batch could not be decided: then nothing of it
        was settled, and it comes back when its locks expire. Raises the publish's error (after
        settling the rest of the batch and counting it) when the forward failed: the messages
        that had forwards were abandoned and their claims released. ``BusUnavailable`` while
        settling leaves the unsettled rest to lock expiry; a redelivered message takes over
        the claim its earlier forward left, so nothing is lost either way.
        """
        attributes = tracing.destination_attributes(
            self._system, INDICATORS.name, "process", subscription=self.destination
        )
        recording = tracing.recording()
        links = (
            tracing.links_to((d.properties, d.message_id) for d in deliveries) if recording else []
        )
        with tracing.batch_span("filter batch", attributes, links=links) as batch:
            now = self._clock()
            tags = [self._shortcut.tag(delivery.body) for delivery in deliveries]
            predictions = [
                self._shortcut.predict(delivery.properties) if self.config.deduplication else None
                for delivery in deliveries
            ]
            ids = predicted_ids(predictions)
            entries, version, born = await self._state.batch_view(ids)
            self._birth.check(born)
            known = dict(zip(ids, entries, strict=True))
            suppressed = await self._suppressed.at(version)
            items: list[Item] = []
            # Recognised records, when nothing records spans, are only completed and counted.
            recognised: list[Delivery] = []
            unchanged = 0
            for delivery, tag, prediction in zip(deliveries, tags, predictions, strict=True):
                if (
                    prediction is not None
                    and delivery.properties.get("indicator_id", "") not in suppressed
                    and self._shortcut.unchanged(prediction, tag, known, now)
                ):
                    if not recording:
                        recognised.append(delivery)
                        unchanged += len(prediction.stix_ids)
                        continue
                    item = Item(delivery, indicator_id=delivery.properties.get("indicator_id", ""))
                    item.counts["dropped_unchanged"] = len(prediction.stix_ids)
                    item.span = self._span(delivery, attributes, batch)
                    items.append(item)
                    continue
                span = self._span(delivery, attributes, batch) if recording else INVALID_SPAN
                with tracing.within(span):
                    item = judge(
                        delivery,
                        source=tag,
                        now=now,
                        filter_policy=self.config.filter_policy,
                        stix_policy=self.config.stix_policy,
                        refresh_ratio=self.config.refresh_ratio,
                        suppressed=suppressed,
                    )
                item.span = span
                items.append(item)
            try:
                return await self._handle(items, recognised, unchanged, known, now)
            finally:
                for item in items:
                    tracing.finish(item.span, item.outcome())

    @staticmethod
    def _span(delivery: Delivery, attributes: dict[str, str], batch: Span) -> Span:
        return tracing.consumer_span(
            "filter indicator",
            delivery.properties,
            delivery.message_id,
            {**attributes, "messaging.message.delivery_count": delivery.delivery_count},
            links=[tracing.link_span(batch)],
        )

    async def _handle(
        self,
        items: list[Item],
        recognised: list[Delivery],
        unchanged: int,
        known: dict[str, SeenEntry | None],
        now: datetime,
    ) -> BatchOutcome:
        await self._decide(items, known, now)
        await self._claim(items)
        publish_error = await self._forward(items)
        outcome = BatchOutcome()
        outcome.counts["received"] = len(items) + len(recognised)
        outcome.counts["dropped_unchanged"] = unchanged
        outcome.counts["lock_lost"] = await self._settle(items, recognised)
        for item in items:
            item.settled = True
        for item in items:
            outcome.counts.update(item.counts)
        counts = {name: amount for name, amount in outcome.counts.items() if amount}
        outcome.counts = Counter(counts)
        try:
            await self._state.count(counts)
        except TransientError as exc:
            # Counters are telemetry: the batch itself is done, so this must not redo it.
            log.warning("filter.count_failed", error=str(exc)[:_MAX_ERROR_CHARS])
        log.info("filter.batch", **counts)
        if publish_error is not None:
            raise publish_error
        return outcome

    # ----------------------------------------------------------------------------------------
    # Stages

    async def _decide(
        self, items: Sequence[Item], known: dict[str, SeenEntry | None], now: datetime
    ) -> None:
        """New, changed, refresh, or unchanged (dropped); the seen entries the shortcut's
        ``MGET`` did not fetch cost one more. What fails the filters is revoked where the
        workspace holds it live, and where an upload of it is queued or in flight (its claim
        is held: one ``MGET`` more for a batch with such records, ``_revoke_queued``)."""
        pending = [forward for item in items for forward in item.observables]
        revocable = [c.lineage for item in items for c in item.revocable]
        if not pending and not revocable:
            return
        unheld: list[tuple[Item, Revocable]] = []
        if self.config.deduplication:
            missing = [f.draft.stix_id for f in pending if f.draft.stix_id not in known]
            missing += [lineage for lineage in revocable if lineage not in known]
            missing = list(dict.fromkeys(missing))
            known.update(zip(missing, await self._state.seen(missing), strict=True))
        for item in items:
            for forward in item.observables:
                seen = known.get(forward.draft.stix_id) if self.config.deduplication else None
                if item.full and forward.stale(seen, now):
                    item.counts["dropped_stale"] += 1
                    continue
                draft, lineage, generation = in_generation(
                    forward.draft, forward.mati_id, forward.hash_type, seen
                )
                reason = decide(
                    seen, draft.fingerprint, now, forward.valid_until, forward.refresh_after
                )
                if item.full and reason is ForwardReason.REFRESH:
                    reason = None  # a full sync re-judges; only MATI's report extends validity
                if reason is None:
                    item.counts["dropped_unchanged"] += 1
                    continue
                item.decided.append(
                    UploadRequest(
                        draft,
                        reason,
                        source_tag=forward.source,
                        indicator_type=forward.indicator_type,
                        lineage=lineage,
                        generation=generation,
                    )
                )
            # Without the seen cache nothing is known to be held, so nothing is revoked.
            for candidate in item.revocable if self.config.deduplication else ():
                entry = known.get(candidate.lineage)
                request = revocation(candidate, entry, now, self.config.stix_policy)
                if request is None:
                    unheld.append((item, candidate))
                    continue
                item.decided.append(request)
                item.revoke_reasons[request.stix_id] = candidate.reason
        await self._revoke_queued(unheld, known)

    async def _revoke_queued(
        self, unheld: Sequence[tuple[Item, Revocable]], known: dict[str, SeenEntry | None]
    ) -> None:
        """Revoke what fails and is not held live but whose upload is queued or in flight:
        judged passing under earlier settings before ``sync --once --full`` re-judged it, or
        an earlier version. Left alone, that upload would put live what the filters refuse
        (or already did, if its uploader died before committing: the seen cache cannot
        know). The revocation takes the upload's claim (``_claim``), so a queued upload is
        skipped as superseded. Not for a suppression: ``suppress add`` takes the claims of
        what is queued itself, and a batch judged before ``suppress remove`` must not revoke
        the upload the removal queued."""
        unheld = [(item, c) for item, c in unheld if c.reason != SUPPRESSED]
        if not unheld:
            return
        lineages = list(dict.fromkeys(candidate.lineage for _, candidate in unheld))
        held = dict(zip(lineages, await self._state.claims(lineages), strict=True))
        for item, candidate in unheld:
            if held[candidate.lineage] is None:
                continue
            entry = known.get(candidate.lineage)
            request = queued_revocation(candidate, entry, self.config.stix_policy)
            item.decided.append(request)
            item.revoke_reasons[request.stix_id] = candidate.reason

    async def _claim(self, items: Sequence[Item]) -> None:
        """Claim every observable to forward: one script for first deliveries, one for
        redeliveries (which take over the claim their earlier delivery may have left). An
        upload (not a revocation) whose MATI id was suppressed since the batch began is not
        claimed, and its record counts as suppressed (``services.filter.suppressing``)."""
        for redelivery in (False, True):
            group = [
                (item, request)
                for item in items
                if (item.delivery.delivery_count > 1) == redelivery
                for request in item.decided
            ]
            if not group:
                continue
            answers = await self._state.claim_unless_suppressed(
                [
                    (r.stix_id, r.fingerprint, "" if r.revoked else item.indicator_id)
                    for item, r in group
                ],
                ttl_s=self.config.claim_ttl_s,
                redelivery=redelivery,
            )
            for (item, request), answer in zip(group, answers, strict=True):
                if answer is Claimed.GRANTED:
                    item.claimed.append(request)
                elif answer is Claimed.SUPPRESSED:
                    item.counts[f"dropped_{SUPPRESSED}"] = 1
                else:
                    item.counts["dropped_in_flight"] += 1

    async def _forward(self, items: Sequence[Item]) -> Exception | None:
        """Publish every claimed observable in one call. On failure, release the claims and
        mark their raw messages abandoned; the error is returned for ``handle`` to raise once
        the rest of the batch is settled."""
        forwarding = [item for item in items if item.claimed]
        if not forwarding:
            return None
        messages: dict[bool, list[Message]] = {False: [], True: []}
        for item in forwarding:
            for request, message in zip(item.claimed, item.upload_messages(), strict=True):
                messages[request.revoked].append(message)
        try:
            # Revocations first: were the second publish to fail, the batch comes back and
            # forwards both again (the bus drops what it already holds, by message id).
            for revoked, target in ((True, self.urgent), (False, self.target)):
                if messages[revoked]:
                    with tracing.producer_span(self._system, target.name, len(messages[revoked])):
                        await self._bus.publish(target, messages[revoked])
        except Exception as exc:
            log.warning(
                "filter.forward_failed",
                messages=sum(map(len, messages.values())),
                error=f"{type(exc).__name__}: {str(exc)[:_MAX_ERROR_CHARS]}",
            )
            await self._undo(forwarding)
            return exc
        for item in forwarding:
            item.count_forwarded()
        return None

    async def _undo(self, forwarding: Sequence[Item]) -> None:
        """Best effort after a failed publish: release our claims so the next delivery is not
        held up, and abandon the raw messages so they come back now. Whatever fails here is
        covered anyway: a redelivery takes its claim over, an expired lock redelivers."""
        claims = [(r.stix_id, r.fingerprint) for item in forwarding for r in item.claimed]
        try:
            await self._state.release(claims)
        except TransientError as exc:
            log.warning("filter.release_failed", error=str(exc)[:_MAX_ERROR_CHARS])
        for item in forwarding:
            item.abandoned = True
            item.counts = Counter({"abandoned": 1})
        try:
            await self._bus.abandon(self.source, [item.delivery for item in forwarding])
        except TransientError as exc:
            log.warning("filter.abandon_failed", error=str(exc)[:_MAX_ERROR_CHARS])

    async def _settle(self, items: Sequence[Item], recognised: Sequence[Delivery]) -> int:
        """Dead-letter the bad records and complete the rest (not the abandoned); returns how
        many locks were lost (another filter received those messages after our lock expired;
        it owns them now, and what we forwarded is deduplicated by message id)."""
        lost = 0
        for item in items:
            if item.dead_letter is None:
                continue
            reason, description = item.dead_letter
            span = (
                item.span if item.span.is_recording() else tracing.remote(item.delivery.properties)
            )
            with tracing.within(span):
                log.warning(
                    "filter.dead_lettered",
                    indicator_id=item.indicator_id,
                    message_id=item.delivery.message_id,
                    reason=reason,
                    description=description,
                )
            try:
                await self._bus.dead_letter(
                    self.source, item.delivery, reason=reason, description=description
                )
            except LockLost as exc:
                lost += len(exc.message_ids)
        done = [item.delivery for item in items if item.dead_letter is None and not item.abandoned]
        done += recognised
        try:
            await self._bus.complete(self.source, done)
        except LockLost as exc:
            lost += len(exc.message_ids)
        if lost:
            log.warning("filter.lock_lost", messages=lost)
        return lost
