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
- **One client per process**, its senders and receivers cached per entity (each link costs a
  round trip to open). Receivers are peek-lock with prefetch 0, so nothing is locked that a
  ``receive`` call did not ask for.
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
- **Errors**: every SDK call is bounded by ``operation_timeout_s`` (the SDK can hang on a peer
  that stops answering). A timeout, a connection or server-busy error is ``BusUnavailable``
  (retry later); missing or disabled entities and refused credentials are ``BusEntityMissing`` /
  ``BusAccessDenied`` (fatal: an operator must act). A receiver or sender that failed is closed
  and opened afresh on next use.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)

from shared.contract.bus import (
    Bus,
    DeadLetter,
    Delivery,
    EntityCounts,
    Message,
    Peeked,
    Queue,
    Source,
    Subscription,
    Target,
    Topic,
)
from shared.core.errors import BusAccessDenied, BusEntityMissing, BusUnavailable, LockLost

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: What the SDK accepts as an application property value.
_Primitive: TypeAlias = int | float | bytes | bool | str | uuid.UUID

#: Application property naming the one subscription a replayed message is for.
REPLAY_TO: Final = "m2s_replay_to"
#: Application property keeping a replayed message's original ``message_id``.
ORIGINAL_MESSAGE_ID: Final = "m2s_original_message_id"
#: Application properties Service Bus adds to dead letters; not the sender's properties.
DEAD_LETTER_PROPERTIES: Final = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})
_RESERVED: Final = frozenset({REPLAY_TO, ORIGINAL_MESSAGE_ID}) | DEAD_LETTER_PROPERTIES

#: The SDK refuses a zero wait; a receive asked not to wait polls this long.
MIN_WAIT_S: Final = 0.05
#: Messages per peek request (counts, dead_letters).
PEEK_PAGE: Final = 250
#: Settlements and renewals in flight at once on one receiver.
SETTLE_CONCURRENCY: Final = 32
#: Received messages whose lock expired this long ago are forgotten (they can never settle).
FORGET_AFTER: Final = timedelta(minutes=5)


def replay_rule(subscription: str) -> str:
    """The SQL filter every subscription carries, so replays reach only their subscription."""
    if "'" in subscription:
        raise ValueError(f"subscription name must not contain a quote: {subscription!r}")
    return f"NOT EXISTS({REPLAY_TO}) OR {REPLAY_TO} = '{subscription}'"


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
        if not consumer:
            raise ValueError("consumer must not be empty")
        if not operation_timeout_s > 0:
            raise ValueError(f"operation_timeout_s must be > 0, got {operation_timeout_s}")
        if count_limit < 1:
            raise ValueError(f"count_limit must be ≥ 1, got {count_limit}")
        self.consumer = consumer
        self.operation_timeout_s = operation_timeout_s
        self.count_limit = count_limit
        self._client = client
        self._owns_client = False
        self._credential: AsyncTokenCredential | None = None
        self._closed = False
        self._senders: dict[Target, ServiceBusSender] = {}
        self._receivers: dict[tuple[Source, bool], ServiceBusReceiver] = {}
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
        await self._call(source, "ensure", receiver.peek_messages(1, sequence_number=1))

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` in order, in as few batches as the SDK allows."""
        if not messages:
            return
        outgoing = [_outgoing(message) for message in messages]
        await self._send(target, outgoing)

    async def receive(
        self, source: Source, *, max_messages: int, max_wait_s: float
    ) -> list[Delivery]:
        if max_messages < 1:
            raise ValueError(f"max_messages must be ≥ 1, got {max_messages}")
        self._forget_expired()
        receiver = await self._receiver(source)
        wait = max(MIN_WAIT_S, max_wait_s)
        received = await self._call(
            source,
            "receive",
            receiver.receive_messages(max_message_count=max_messages, max_wait_time=wait),
            extra_s=wait,
        )
        deliveries: list[Delivery] = []
        for message in received:
            delivery = _delivery(message)
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
            logger.warning("counts of %s stop at %d messages", _name(source), self.count_limit)
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
        return [_dead_letter(message) for message in peeked]

    async def peek(self, source: Source, *, limit: int = 100) -> list[Peeked]:
        """Peeked (``$management`` peek, the Data Receiver role allows it): nothing is locked
        and no delivery counted. ``locked`` = ``locked_until`` lies ahead, as in ``counts``."""
        if limit < 1:
            return []
        peeked = await self._peek_all(source, dead_letter=False, limit=limit)
        now = datetime.now(UTC)
        return [
            Peeked(
                body=_body(message),
                message_id=_original_id(message),
                properties=_properties(message.application_properties),
                enqueued_at=message.enqueued_time_utc or now,
                locked=bool(message.locked_until_utc and message.locked_until_utc > now),
            )
            for message in peeked
        ]

    async def replay(self, source: Source, dead_letters: Sequence[DeadLetter]) -> int:
        """Re-send each letter to ``source`` only (module docstring), then remove it from the
        dead-letter queue; letters no longer there are skipped, not counted."""
        if not dead_letters:
            return 0
        wanted = {_sequence_number(letter.lock_token) for letter in dead_letters}
        receiver = await self._receiver(source, dead_letter=True)
        skipped: list[ServiceBusReceivedMessage] = []
        replayed = 0
        try:
            while wanted:
                batch = await self._call(
                    source,
                    "replay",
                    receiver.receive_messages(
                        max_message_count=min(len(wanted), 100), max_wait_time=1.0
                    ),
                    extra_s=1.0,
                )
                if not batch:
                    break
                for message in batch:
                    number = message.sequence_number
                    if number not in wanted:
                        skipped.append(message)
                        continue
                    wanted.discard(number)
                    await self._send(_target_of(source), [_replayed(message, source)])
                    await self._call(source, "replay", receiver.complete_message(message))
                    replayed += 1
        finally:
            for message in skipped:  # not asked for: back into the dead-letter queue
                try:
                    await self._call(source, "replay", receiver.abandon_message(message))
                except (BusUnavailable, LockLost, ServiceBusError, MessageAlreadySettled):
                    logger.warning("could not give back a dead letter of %s", _name(source))
        return replayed

    async def ping(self) -> None:
        """Peek the entity used last (nothing before the first use): proves the connection,
        the credentials and the entity in one round trip."""
        if self._last_source is not None:
            await self.ensure(self._last_source)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._held.clear()
        handlers: list[ServiceBusSender | ServiceBusReceiver] = [
            *self._senders.values(),
            *self._receivers.values(),
        ]
        self._senders.clear()
        self._receivers.clear()
        await asyncio.gather(*(self._close_quietly(handler) for handler in handlers))
        if self._owns_client:
            await self._bounded(self._client.close(), "close")
            if self._credential is not None:
                await self._credential.close()

    # ----------------------------------------------------------------------------------------
    # Links

    async def _receiver(self, source: Source, *, dead_letter: bool = False) -> ServiceBusReceiver:
        """The cached receiver of ``source``, opened: the SDK would otherwise open the link
        inside the first ``receive`` and count the ~0.5 s that takes against its wait."""
        if self._closed:
            raise RuntimeError("the bus is closed")
        key = (source, dead_letter)
        receiver = self._receivers.get(key)
        if receiver is None:
            options: dict[str, Any] = {
                "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
                "prefetch_count": 0,
                "client_identifier": f"{self.consumer}-{uuid.uuid4().hex[:8]}",
            }
            if dead_letter:
                options["sub_queue"] = ServiceBusSubQueue.DEAD_LETTER
            if isinstance(source, Queue):
                receiver = self._client.get_queue_receiver(source.name, **options)
            else:
                receiver = self._client.get_subscription_receiver(
                    source.topic, source.name, **options
                )
            await self._call(source, "open", receiver.__aenter__())
            self._receivers[key] = receiver
        if not dead_letter:
            self._last_source = source
        return receiver

    def _sender(self, target: Target) -> ServiceBusSender:
        if self._closed:
            raise RuntimeError("the bus is closed")
        sender = self._senders.get(target)
        if sender is None:
            identifier = f"{self.consumer}-{uuid.uuid4().hex[:8]}"
            if isinstance(target, Queue):
                sender = self._client.get_queue_sender(target.name, client_identifier=identifier)
            else:
                sender = self._client.get_topic_sender(target.name, client_identifier=identifier)
            self._senders[target] = sender
        return sender

    async def _send(self, target: Target, outgoing: Sequence[ServiceBusMessage]) -> None:
        sender = self._sender(target)
        batch = await self._call(target, "publish", sender.create_message_batch())
        for message in outgoing:
            try:
                batch.add_message(message)
                continue
            except MessageSizeExceededError:
                if len(batch) == 0:
                    raise ValueError(
                        f"message {message.message_id} exceeds the namespace's maximum size"
                    ) from None
            await self._call(target, "publish", sender.send_messages(batch))
            batch = await self._call(target, "publish", sender.create_message_batch())
            batch.add_message(message)
        if len(batch):
            await self._call(target, "publish", sender.send_messages(batch))

    async def _peek_all(
        self, source: Source, *, dead_letter: bool, limit: int
    ) -> list[ServiceBusReceivedMessage]:
        receiver = await self._receiver(source, dead_letter=dead_letter)
        peeked: list[ServiceBusReceivedMessage] = []
        sequence = 1
        while len(peeked) < limit:
            page = min(PEEK_PAGE, limit - len(peeked))
            got = await self._call(
                source,
                "peek",
                receiver.peek_messages(
                    page, sequence_number=sequence, timeout=self.operation_timeout_s
                ),
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
            _check_token(delivery.lock_token)
            held = self._held.get(delivery.lock_token)
            if held is None or held.source != source:
                lost.append(delivery.message_id)
                return
            async with semaphore:
                try:
                    await self._call(source, action, operation(held.receiver, held.message))
                except (MessageLockLostError, MessageAlreadySettled):
                    lost.append(delivery.message_id)
                    self._held.pop(delivery.lock_token, None)
                    return
                except Exception as exc:
                    failures.append(exc)
                    return
            if forget:
                self._held.pop(delivery.lock_token, None)

        for delivery in deliveries:
            _check_token(delivery.lock_token)
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

    # ----------------------------------------------------------------------------------------
    # Errors and time limits

    async def _call(
        self, entity: Source | Target, operation: str, call: Awaitable[T], *, extra_s: float = 0.0
    ) -> T:
        """Run one SDK call within the time limit, translating what it raises."""
        try:
            return await self._bounded(call, operation, extra_s)
        except (MessageLockLostError, MessageAlreadySettled):
            raise  # the settling code decides what a lost lock means
        except (MessagingEntityNotFoundError, MessagingEntityDisabledError) as exc:
            raise BusEntityMissing(
                f"service bus {operation}: {_name(entity)} does not exist or is disabled "
                "(create it as docs/servicebus.md says)"
            ) from exc
        except (ServiceBusAuthenticationError, ServiceBusAuthorizationError) as exc:
            raise BusAccessDenied(
                f"service bus {operation} on {_name(entity)} refused: {type(exc).__name__}"
            ) from exc
        except ServiceBusError as exc:
            await self._reset(entity)
            raise BusUnavailable(
                f"service bus {operation} on {_name(entity)} failed: {type(exc).__name__}: "
                f"{_short(exc)}"
            ) from exc
        except BusUnavailable:
            await self._reset(entity)
            raise

    async def _bounded(self, call: Awaitable[T], operation: str, extra_s: float = 0.0) -> T:
        limit = self.operation_timeout_s + extra_s
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError as exc:
            raise BusUnavailable(
                f"service bus {operation} did not answer within {limit:.0f} s"
            ) from exc

    async def _reset(self, entity: Source | Target) -> None:
        """Drop the links of ``entity`` after a failure: the next call opens fresh ones. The
        messages they held can no longer be settled (their locks run out, as on a crash)."""
        handlers: list[ServiceBusSender | ServiceBusReceiver] = []
        if isinstance(entity, Topic):
            sender = self._senders.pop(entity, None)
            handlers += [sender] if sender else []
        else:
            if isinstance(entity, Queue):
                sender = self._senders.pop(entity, None)
                handlers += [sender] if sender else []
            for dead in (False, True):
                receiver = self._receivers.pop((entity, dead), None)
                if receiver is not None:
                    handlers.append(receiver)
                    for token, held in list(self._held.items()):
                        if held.receiver is receiver:
                            del self._held[token]
        for handler in handlers:
            await self._close_quietly(handler)

    async def _close_quietly(self, handler: ServiceBusSender | ServiceBusReceiver) -> None:
        try:
            await self._bounded(handler.close(), "close")
        except (BusUnavailable, ServiceBusError) as exc:
            logger.warning("closing a service bus link failed: %s", type(exc).__name__)


if TYPE_CHECKING:
    _IS_A_BUS: type[Bus] = ServiceBusBus


# --------------------------------------------------------------------------------------------
# Helpers


def _name(entity: Source | Target) -> str:
    if isinstance(entity, Subscription):
        return f"subscription {entity.topic}/{entity.name}"
    if isinstance(entity, Queue):
        return f"queue {entity.name}"
    return f"topic {entity.name}"


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


def _target_of(source: Source) -> Target:
    return source if isinstance(source, Queue) else Topic(source.topic)


def _outgoing(message: Message) -> ServiceBusMessage:
    if not message.message_id:
        raise ValueError("message_id must not be empty (duplicate detection keys on it)")
    if not isinstance(message.body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(message.body).__name__}")
    reserved = _RESERVED.intersection(message.properties)
    if reserved:
        raise ValueError(f"application properties {sorted(reserved)} are reserved by the bus")
    return ServiceBusMessage(
        bytes(message.body),
        message_id=message.message_id,
        application_properties=_wire_properties(message.properties),
    )


def _replayed(message: ServiceBusReceivedMessage, source: Source) -> ServiceBusMessage:
    """A dead letter as a new message: fresh id (the old one is inside the duplicate-detection
    window), the original id kept in a property, addressed to ``source`` alone."""
    properties = _properties(message.application_properties)
    properties[ORIGINAL_MESSAGE_ID] = _original_id(message)
    if isinstance(source, Subscription):
        properties[REPLAY_TO] = source.name
    return ServiceBusMessage(
        _body(message),
        message_id=uuid.uuid4().hex,
        application_properties=_wire_properties(properties),
    )


def _wire_properties(properties: Mapping[str, str]) -> dict[str | bytes, _Primitive]:
    # Keys as bytes, the SDK's own spelling: with Azure SDK tracing on, the SDK adds its
    # ``traceparent`` only if absent (``setdefault`` on bytes keys), so the trace context the
    # message carries (shared.telemetry.tracing) is kept. A str key would not match, and the SDK's
    # value, encoded after ours under the same AMQP string key, would win on receive.
    return {key.encode(): value for key, value in properties.items()}


def _delivery(message: ServiceBusReceivedMessage) -> Delivery:
    return Delivery(
        body=_body(message),
        message_id=_original_id(message),
        properties=_properties(message.application_properties),
        delivery_count=(message.delivery_count or 0) + 1,
        enqueued_at=message.enqueued_time_utc or datetime.now(UTC),
        lock_token=str(message.lock_token),
    )


def _dead_letter(message: ServiceBusReceivedMessage) -> DeadLetter:
    return DeadLetter(
        body=_body(message),
        message_id=_original_id(message),
        properties=_properties(message.application_properties),
        reason=message.dead_letter_reason or "",
        description=message.dead_letter_error_description or "",
        delivery_count=(message.delivery_count or 0) + 1,
        dead_lettered_at=message.enqueued_time_utc or datetime.now(UTC),
        lock_token=str(message.sequence_number),
    )


def _body(message: ServiceBusReceivedMessage) -> bytes:
    body: Any = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(bytes(section) for section in body)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _properties(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """The sender's application properties as text (the SDK hands them back as bytes)."""
    properties = {_text(k): _text(v) for k, v in (raw or {}).items()}
    for name in _RESERVED:
        properties.pop(name, None)
    return properties


def _original_id(message: ServiceBusReceivedMessage) -> str:
    for key, value in (message.application_properties or {}).items():
        if _text(key) == ORIGINAL_MESSAGE_ID:
            return _text(value)
    return str(message.message_id or "")


def _check_token(token: str) -> None:
    try:
        uuid.UUID(token)
    except ValueError:
        raise ValueError(f"not a lock token of this bus: {token!r}") from None


def _sequence_number(token: str) -> int:
    if not token.isdigit():
        raise ValueError(f"not a dead letter of this bus (lock_token {token!r})")
    return int(token)
