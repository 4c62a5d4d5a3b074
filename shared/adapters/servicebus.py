"""The production bus: Azure Service Bus on the async ``azure-servicebus`` client (DESIGN.md §3).

Why it looks like this
======================

Service Bus *is* the contract (``shared.contract.bus``): peek-lock, ``MaxDeliveryCount``, duplicate
detection and dead-letter sub-queues are entity features, so this module mostly maps the
``Bus`` calls onto SDK calls, and the entity properties onto what an operator creates ahead
(docs/servicebus.md lists the entities and the ``az`` commands).

- **Entities are created by the operator**, not by the services: their identity needs only the
  *Azure Service Bus Data Sender* and *Data Receiver* roles. ``ensure`` therefore checks that the
  queue or subscription exists (a one-message peek) and raises ``BusEntityMissing`` (fatal) when
  it does not. Lock duration, maximum delivery count and the duplicate-detection window are the
  entities' properties, not this class's.
- **Settling needs the very message object on the very receiver link**, so every received
  ``ServiceBusReceivedMessage`` is kept, keyed by its lock token, until it is settled, its lock is
  lost, or it expired long ago. A ``Delivery`` whose token is not in that map (another process
  received it, or the link was re-opened) cannot be settled: ``LockLost``.
- **Delivery count**: the AMQP header counts *earlier* deliveries, and the SDK reports it as is
  (0 the first time); ``Delivery.delivery_count`` adds one, so it is 1 on the first delivery as
  the contract (and .NET's ``DeliveryCount``) says.
- **Publishing** fills the SDK's batch object (``create_message_batch``: the namespace's maximum
  message size decides) and starts a new batch when one is full. ``publish`` returns once
  Service Bus accepted every batch. Duplicate detection is the entity's, on ``message_id``.
- **Replay** re-sends a dead letter with a fresh ``message_id`` (the original is inside the
  duplicate-detection window and would be dropped) and keeps the original id in the application
  property ``m2s_original_message_id``, which ``receive`` turns back into ``message_id``.
  Service Bus cannot send to one subscription, so a subscription's letters are re-published to
  the topic with ``m2s_replay_to=<subscription>``; every subscription carries the SQL rule
  ``NOT EXISTS(m2s_replay_to) OR m2s_replay_to = '<its name>'`` so only that one takes them.
  The letter is completed in the dead-letter queue only after the re-send was accepted: a crash
  in between leaves it in both places (at-least-once, like everything else here).
- **Counts** come from peeking (``$management`` peek), which the Data Receiver role allows:
  ``depth`` = messages without a live lock, ``in_flight`` = messages whose ``locked_until`` lies
  ahead, ``dead_letter`` = the dead-letter sub-queue. Service Bus publishes no locked count; a
  namespace that does not report lock times on peeked messages shows everything as ``depth``.
  Peeking stops at ``count_limit`` messages per entity; beyond it the numbers are lower bounds
  (``status`` says so). The management API (``active_message_count``) would need the Manage
  right, which the services do not get.
- **Links and errors** (``servicebus_links``): one client per process, a cached sender or
  receiver per entity, every SDK call bounded in time and translated into the error tree.
- **Messages** (``servicebus_messages``): the translation between the contract's messages and
  the SDK's, and the application properties a replay uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    ServiceBusError,
)

from shared.adapters import servicebus_messages as wire
from shared.adapters import servicebus_sdk
from shared.adapters.servicebus_links import Links, describe
from shared.contract.bus import (
    Bus,
    DeadLetter,
    Delivery,
    EntityCounts,
    Message,
    Peeked,
    Queue,
    Source,
    Target,
    Topic,
)
from shared.core import checks
from shared.core.errors import BusUnavailable, LockLost
from shared.core.events import get_logger

log = get_logger(__name__)

servicebus_sdk.apply()

#: The SDK refuses a zero wait; a receive asked not to wait polls this long.
MIN_WAIT_S: Final = 0.05
#: Messages per peek request (counts, dead_letters).
PEEK_PAGE: Final = 250
#: Settlements and renewals in flight at once on one receiver.
SETTLE_CONCURRENCY: Final = 32
#: Received messages whose lock expired this long ago are forgotten (they can never settle).
FORGET_AFTER: Final = timedelta(minutes=5)


@dataclass(slots=True)
class _Held:
    """A received message this process still holds, with the receiver that must settle it."""

    source: Source
    receiver: ServiceBusReceiver
    message: ServiceBusReceivedMessage


class ServiceBusBus:
    """The ``Bus`` on Azure Service Bus; see the module docstring for how and why.

    ``consumer`` names this process on its links (``client_identifier``), as the Redis backend's
    consumer names it in a group. The client belongs to the caller unless a ``from_…``
    constructor made it; ``aclose`` closes the links either way.
    """

    def __init__(
        self,
        client: ServiceBusClient,
        *,
        consumer: str,
        operation_timeout_s: float = 30.0,
        count_limit: int = 10_000,
    ) -> None:
        checks.named("consumer", consumer)
        checks.above("operation_timeout_s", operation_timeout_s, 0)
        checks.at_least("count_limit", count_limit, 1)
        self.consumer = consumer
        self.operation_timeout_s = operation_timeout_s
        self.count_limit = count_limit
        self._client = client
        self._owns_client = False
        self._credential: AsyncTokenCredential | None = None
        self._links = Links(
            client,
            consumer=consumer,
            operation_timeout_s=operation_timeout_s,
            dropped=self._forget_receiver,
        )
        self._held: dict[str, _Held] = {}
        self._last_source: Source | None = None

    # ----------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, consumer: str, retry_total: int = 3, **options: Any
    ) -> Self:
        """A bus on a client it owns, authenticated by a SAS connection string."""
        client = ServiceBusClient.from_connection_string(
            connection_string, retry_total=retry_total, retry_backoff_factor=0.5
        )
        bus = cls(client, consumer=consumer, **options)
        bus._owns_client = True
        return bus

    @classmethod
    def from_namespace(
        cls,
        fully_qualified_namespace: str,
        *,
        consumer: str,
        credential: AsyncTokenCredential | None = None,
        retry_total: int = 3,
        **options: Any,
    ) -> Self:
        """A bus on a client it owns, authenticated by ``credential`` (by default
        ``DefaultAzureCredential``: workload identity in a pod, the developer's login locally)."""
        owned: AsyncTokenCredential | None = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        client = ServiceBusClient(
            fully_qualified_namespace,
            credential,
            retry_total=retry_total,
            retry_backoff_factor=0.5,
        )
        bus = cls(client, consumer=consumer, **options)
        bus._owns_client = True
        bus._credential = owned
        return bus

    # ----------------------------------------------------------------------------------------
    # Bus

    async def ensure(self, source: Source) -> None:
        """Check that ``source`` exists (entities are created by the operator, not here)."""
        receiver = await self._receiver(source)
        await self._links.call(
            source, "ensure", receiver.peek_messages(1, sequence_number=1), handler=receiver
        )

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` in order, in as few batches as the SDK allows."""
        if not messages:
            return
        outgoing = [wire.outgoing(message) for message in messages]
        await self._links.send(target, outgoing)

    async def receive(
        self, source: Source, *, max_messages: int, max_wait_s: float
    ) -> list[Delivery]:
        checks.at_least("max_messages", max_messages, 1)
        self._forget_expired()
        receiver = await self._receiver(source)
        wait = max(MIN_WAIT_S, max_wait_s)
        received = await self._links.call(
            source,
            "receive",
            receiver.receive_messages(max_message_count=max_messages, max_wait_time=wait),
            extra_s=wait,
            handler=receiver,
        )
        deliveries: list[Delivery] = []
        for message in received:
            delivery = wire.delivery(message)
            self._held[delivery.lock_token] = _Held(source, receiver, message)
            deliveries.append(delivery)
        return deliveries

    async def complete(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        await self._settle_all(
            "complete", source, deliveries, lambda r, m: r.complete_message(m), forget=True
        )

    async def abandon(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        """Give back now; Service Bus counts the delivery and dead-letters past the maximum."""
        await self._settle_all(
            "abandon", source, deliveries, lambda r, m: r.abandon_message(m), forget=True
        )

    async def dead_letter(
        self, source: Source, delivery: Delivery, *, reason: str, description: str
    ) -> None:
        await self._settle_all(
            "dead letter",
            source,
            [delivery],
            lambda r, m: r.dead_letter_message(m, reason=reason, error_description=description),
            forget=True,
        )

    async def renew_locks(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        """One renewal at a time: renewals go over the receiver's ``$management`` link, and the
        SDK opens that link inside the first call; concurrent first calls race to open it and
        leave the receiver broken ("'NoneType' object has no attribute
        'create_receiver_link'"). A lock lasts a minute and is renewed every third of it, so
        a hundred sequential round trips fit easily."""
        await self._settle_all(
            "renew lock",
            source,
            deliveries,
            lambda r, m: r.renew_message_lock(m, timeout=self.operation_timeout_s),
            forget=False,
            concurrency=1,
        )

    async def counts(self, source: Source) -> EntityCounts:
        """From peeking the entity and its dead-letter queue (module docstring)."""
        active = await self._peek_all(source, dead_letter=False, limit=self.count_limit)
        dead = await self._peek_all(source, dead_letter=True, limit=self.count_limit)
        now = datetime.now(UTC)
        in_flight = sum(1 for m in active if m.locked_until_utc and m.locked_until_utc > now)
        enqueued = [m.enqueued_time_utc for m in active if m.enqueued_time_utc]
        oldest = (now - min(enqueued)).total_seconds() if enqueued else None
        if len(active) >= self.count_limit or len(dead) >= self.count_limit:
            log.warning("bus.counts_capped", entity=describe(source), limit=self.count_limit)
        return EntityCounts(
            depth=len(active) - in_flight,
            in_flight=in_flight,
            dead_letter=len(dead),
            oldest_age_s=None if oldest is None else max(0.0, oldest),
        )

    async def dead_letters(self, source: Source, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, peeked (nothing is locked or removed)."""
        if limit < 1:
            return []
        peeked = await self._peek_all(source, dead_letter=True, limit=limit)
        return [wire.dead_letter(message) for message in peeked]

    async def peek(self, source: Source, *, limit: int = 100) -> list[Peeked]:
        """Peeked (``$management`` peek, the Data Receiver role allows it): nothing is locked
        and no delivery counted. ``locked`` = ``locked_until`` lies ahead, as in ``counts``."""
        if limit < 1:
            return []
        peeked = await self._peek_all(source, dead_letter=False, limit=limit)
        now = datetime.now(UTC)
        return [wire.peeked(message, now) for message in peeked]

    async def replay(self, source: Source, dead_letters: Sequence[DeadLetter]) -> int:
        """Re-send each letter to ``source`` only (module docstring), then remove it from the
        dead-letter queue; letters no longer there are skipped, not counted."""
        if not dead_letters:
            return 0
        wanted = {wire.sequence_number(letter.lock_token) for letter in dead_letters}
        receiver = await self._receiver(source, dead_letter=True)
        skipped: list[ServiceBusReceivedMessage] = []
        replayed = 0
        try:
            while wanted:
                batch = await self._links.call(
                    source,
                    "replay",
                    receiver.receive_messages(
                        max_message_count=min(len(wanted), 100), max_wait_time=1.0
                    ),
                    extra_s=1.0,
                    handler=receiver,
                )
                if not batch:
                    break
                for message in batch:
                    number = message.sequence_number
                    if number not in wanted:
                        skipped.append(message)
                        continue
                    wanted.discard(number)
                    await self._links.send(_target_of(source), [wire.replayed(message, source)])
                    await self._links.call(
                        source, "replay", receiver.complete_message(message), handler=receiver
                    )
                    replayed += 1
        finally:
            for message in skipped:  # not asked for: back into the dead-letter queue
                try:
                    await self._links.call(
                        source, "replay", receiver.abandon_message(message), handler=receiver
                    )
                except (BusUnavailable, LockLost, ServiceBusError, MessageAlreadySettled):
                    log.warning("bus.dead_letter_not_returned", entity=describe(source))
        return replayed

    async def ping(self) -> None:
        """Peek the entity used last (nothing before the first use): proves the connection,
        the credentials and the entity in one round trip."""
        if self._last_source is not None:
            await self.ensure(self._last_source)

    async def aclose(self) -> None:
        if self._links.closed:
            return
        self._held.clear()
        await self._links.close()
        if self._owns_client:
            await self._links.bounded(self._client.close(), "close")
            if self._credential is not None:
                await self._credential.close()

    # ----------------------------------------------------------------------------------------
    # Links

    async def _receiver(self, source: Source, *, dead_letter: bool = False) -> ServiceBusReceiver:
        receiver = await self._links.receiver(source, dead_letter=dead_letter)
        if not dead_letter:
            self._last_source = source
        return receiver

    async def _peek_all(
        self, source: Source, *, dead_letter: bool, limit: int
    ) -> list[ServiceBusReceivedMessage]:
        receiver = await self._receiver(source, dead_letter=dead_letter)
        peeked: list[ServiceBusReceivedMessage] = []
        sequence = 1
        while len(peeked) < limit:
            page = min(PEEK_PAGE, limit - len(peeked))
            got = await self._links.call(
                source,
                "peek",
                receiver.peek_messages(
                    page, sequence_number=sequence, timeout=self.operation_timeout_s
                ),
                handler=receiver,
            )
            peeked += got
            if len(got) < page:
                break
            sequence = max(m.sequence_number or 0 for m in got) + 1
        return peeked[:limit]

    # ----------------------------------------------------------------------------------------
    # Settling

    async def _settle_all(
        self,
        action: str,
        source: Source,
        deliveries: Sequence[Delivery],
        operation: Callable[[ServiceBusReceiver, ServiceBusReceivedMessage], Awaitable[Any]],
        *,
        forget: bool,
        concurrency: int = SETTLE_CONCURRENCY,
    ) -> None:
        if not deliveries:
            return
        lost: list[str] = []
        failures: list[BaseException] = []
        semaphore = asyncio.Semaphore(concurrency)

        async def one(delivery: Delivery) -> None:
            wire.check_token(delivery.lock_token)
            held = self._held.get(delivery.lock_token)
            if held is None or held.source != source:
                lost.append(delivery.message_id)
                return
            async with semaphore:
                try:
                    await self._links.call(
                        source,
                        action,
                        operation(held.receiver, held.message),
                        handler=held.receiver,
                    )
                except (MessageLockLostError, MessageAlreadySettled):
                    lost.append(delivery.message_id)
                    self._held.pop(delivery.lock_token, None)
                    return
                except BusUnavailable as exc:
                    if self._links.holds(held.receiver):
                        failures.append(exc)
                    else:  # its link was dropped: no one can settle it, its lock runs out
                        lost.append(delivery.message_id)
                    return
                except Exception as exc:
                    failures.append(exc)
                    return
            if forget:
                self._held.pop(delivery.lock_token, None)

        for delivery in deliveries:
            wire.check_token(delivery.lock_token)
        await asyncio.gather(*(one(delivery) for delivery in deliveries))
        if failures:
            raise failures[0]
        if lost:
            raise LockLost(
                f"{action}: lock lost on {len(lost)} of {len(deliveries)} messages "
                "(expired, or received by another process)",
                message_ids=lost,
            )

    def _forget_expired(self) -> None:
        horizon = datetime.now(UTC) - FORGET_AFTER
        for token, held in list(self._held.items()):
            until = held.message.locked_until_utc
            if until is not None and until < horizon:
                del self._held[token]

    def _forget_receiver(self, receiver: ServiceBusReceiver) -> None:
        for token, held in list(self._held.items()):
            if held.receiver is receiver:
                del self._held[token]


if TYPE_CHECKING:
    _IS_A_BUS: type[Bus] = ServiceBusBus


def _target_of(source: Source) -> Target:
    return source if isinstance(source, Queue) else Topic(source.topic)
