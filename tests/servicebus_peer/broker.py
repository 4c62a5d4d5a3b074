"""The fake Service Bus's broker logic: entities, messages, locks, dead letters. No I/O.

Everything here is what Azure Service Bus does on the service side and the SDK never sees
directly, so the fake has to do it itself (DESIGN.md §3, docs/servicebus.md):

- **Entities** exist only once created (``create_queue`` / ``create_topic`` /
  ``create_subscription``, standing in for ``az servicebus … create``); a link to a missing
  one is refused with ``amqp:not-found``. Names are case-insensitive, as on Service Bus.
- **Topics** copy each accepted message into every subscription whose rule accepts it; a
  subscription gets only what is published after it was created.
- **Rules**: a subscription is created with the TrueFilter, or with the replay rule the bus
  backend documents (``NOT EXISTS(<property>) OR <property> = '<subscription>'``), evaluated
  here in Python (no SQL engine).
- **Duplicate detection** per queue/topic on ``message-id`` within ``duplicate_window_s``
  (0 = off), counted from the first message with that id: a duplicate is accepted and dropped.
- **Peek-lock**: each delivery locks the message under a fresh 16-byte lock token (the AMQP
  delivery tag) for ``lock_duration_s``; the AMQP header's ``delivery-count`` is the number of
  *earlier* deliveries (0 the first time), as on Service Bus.
- **Lock expiry**: an expired lock makes the message available again; settling or renewing it
  afterwards is refused with ``com.microsoft:message-lock-lost``.
- **Settlement**: complete removes, abandon returns (the delivery stays counted), release
  returns uncounted (the SDK releases what it received outside a receive call), dead-letter
  moves to the ``$deadletterqueue`` sub-queue with ``DeadLetterReason`` and
  ``DeadLetterErrorDescription`` application properties.
- **MaxDeliveryCount**: a message abandoned or expired after ``max_delivery_count`` deliveries
  is dead-lettered with reason ``MaxDeliveryCountExceeded``.
- **Peek** (``$management`` ``com.microsoft:peek-message``) sees locked and unlocked messages
  by sequence number, with ``x-opt-locked-until`` on locked ones.

Not implemented (nothing here uses them): sessions, scheduling, deferral by sequence number,
TTL and dead-lettering on expiry, auto-forwarding, partitioning, quotas, SQL filters beyond the
replay rule. Times are wall-clock (the SDK compares lock expiry with its own wall clock).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from tests.servicebus_peer.codec import BareMessage, ms_timestamp

MAX_DELIVERY_REASON: Final = "MaxDeliveryCountExceeded"
DEAD_LETTER_REASON: Final = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION: Final = "DeadLetterErrorDescription"


class LockLostError(Exception):
    """The lock token is not (or no longer) held: expired, settled, or never issued."""


class NotFoundError(Exception):
    """No such entity."""


@dataclass(frozen=True, slots=True)
class EntityProperties:
    """The Service Bus entity properties the fake honours (names as in ARM/az CLI)."""

    lock_duration_s: float = 60.0
    max_delivery_count: int = 10
    duplicate_window_s: float = 600.0


@dataclass(frozen=True, slots=True)
class ReplayRule:
    """``NOT EXISTS(property) OR property = 'value'`` (a Service Bus SQL filter)."""

    property: str
    value: str

    def accepts(self, message: BareMessage) -> bool:
        found = message.application_properties.get(self.property)
        return found is None or str(found) == self.value


@dataclass(slots=True)
class Stored:
    seq: int
    message: BareMessage
    enqueued_at: float
    deliveries: int = 0
    lock_token: bytes | None = None
    locked_until: float = 0.0

    def locked(self, now: float) -> bool:
        return self.lock_token is not None and self.locked_until > now

    def annotations(self) -> dict[str, object]:
        notes: dict[str, object] = {
            "x-opt-sequence-number": self.seq,
            "x-opt-enqueued-time": ms_timestamp(self.enqueued_at),
        }
        if self.lock_token is not None:
            notes["x-opt-locked-until"] = ms_timestamp(self.locked_until)
        return notes


class Store:
    """Messages of one receivable path: a queue, a subscription, or a dead-letter sub-queue."""

    def __init__(
        self,
        path: str,
        properties: EntityProperties,
        sequence: Callable[[], int],
        *,
        dead_letter: Store | None = None,
    ) -> None:
        self.path = path
        self.properties = properties
        self.dead_letter = dead_letter
        self._sequence = sequence
        self.messages: dict[int, Stored] = {}

    def enqueue(self, message: BareMessage, now: float) -> Stored:
        stored = Stored(self._sequence(), message, now)
        self.messages[stored.seq] = stored
        return stored

    def expire(self, now: float) -> None:
        """Locks past due make their message available again, or dead-letter it."""
        for stored in list(self.messages.values()):
            if stored.lock_token is not None and stored.locked_until <= now:
                stored.lock_token = None
                self._after_return(stored, now)

    def take(self, now: float) -> Stored | None:
        """Lock and return the first available message (lowest sequence number)."""
        self.expire(now)
        for stored in self.messages.values():
            if stored.lock_token is None:
                stored.lock_token = uuid.uuid4().bytes
                stored.locked_until = now + self.properties.lock_duration_s
                stored.deliveries += 1
                return stored
        return None

    def held(self, token: bytes, now: float) -> Stored:
        for stored in self.messages.values():
            if stored.lock_token == token:
                if stored.locked_until <= now:
                    self.expire(now)
                    break
                return stored
        raise LockLostError(f"lock {uuid.UUID(bytes_le=token)} on {self.path} is not held")

    def lose(self, token: bytes, now: float) -> None:
        """The lock on ``token`` runs out now, as if it had expired: a fault's lock lost
        mid-processing. Nothing happens when the token holds no lock."""
        for stored in self.messages.values():
            if stored.lock_token == token:
                stored.lock_token = None
                self._after_return(stored, now)
                return

    def complete(self, token: bytes, now: float) -> None:
        del self.messages[self.held(token, now).seq]

    def abandon(self, token: bytes, now: float, *, counted: bool = True) -> None:
        stored = self.held(token, now)
        stored.lock_token = None
        if not counted:
            stored.deliveries -= 1
        self._after_return(stored, now)

    def dead_letter_locked(self, token: bytes, now: float, reason: str, description: str) -> None:
        self._move_to_dead_letter(self.held(token, now), now, reason, description)

    def renew(self, token: bytes, now: float) -> float:
        stored = self.held(token, now)
        stored.locked_until = now + self.properties.lock_duration_s
        return stored.locked_until

    def peek(self, from_seq: int, count: int, now: float) -> list[Stored]:
        self.expire(now)
        return [s for s in self.messages.values() if s.seq >= from_seq][:count]

    def _after_return(self, stored: Stored, now: float) -> None:
        limit = self.properties.max_delivery_count
        if self.dead_letter is not None and stored.deliveries >= limit:
            description = f"Message could not be consumed after {limit} delivery attempts."
            self._move_to_dead_letter(stored, now, MAX_DELIVERY_REASON, description)

    def _move_to_dead_letter(
        self, stored: Stored, now: float, reason: str, description: str
    ) -> None:
        del self.messages[stored.seq]
        if self.dead_letter is None:  # settling inside a DLQ: nowhere further to go
            return
        marked = stored.message.with_properties(
            {DEAD_LETTER_REASON: reason, DEAD_LETTER_DESCRIPTION: description}
        )
        letter = self.dead_letter.enqueue(marked, now)
        letter.deliveries = stored.deliveries


class _Deduplicator:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def first_time(self, message_id: str | None, now: float) -> bool:
        if self.window_s <= 0 or message_id is None:
            return True
        if len(self._seen) > 10_000:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        expires = self._seen.get(message_id)
        if expires is not None and expires > now:
            return False
        self._seen[message_id] = now + self.window_s
        return True


@dataclass
class Queue:
    name: str
    properties: EntityProperties
    store: Store
    dedup: _Deduplicator


@dataclass
class Subscription:
    name: str
    store: Store
    rule: ReplayRule | None


@dataclass
class Topic:
    name: str
    properties: EntityProperties
    dedup: _Deduplicator
    subscriptions: dict[str, Subscription] = field(default_factory=dict)


class Broker:
    """All entities of one fake namespace. Thread-safe: tests create entities from their own
    thread while the AMQP thread serves links."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._counter = itertools.count(1)
        self.queues: dict[str, Queue] = {}
        self.topics: dict[str, Topic] = {}

    def _sequence(self) -> int:
        return next(self._counter)

    def _stores(self, path: str, properties: EntityProperties) -> Store:
        dlq = Store(f"{path}/$deadletterqueue", properties, self._sequence)
        return Store(path, properties, self._sequence, dead_letter=dlq)

    # -- administration (az servicebus … create) -------------------------------------------

    def create_queue(self, name: str, properties: EntityProperties) -> None:
        with self.lock:
            if name.lower() not in self.queues:
                self.queues[name.lower()] = Queue(
                    name,
                    properties,
                    self._stores(name, properties),
                    _Deduplicator(properties.duplicate_window_s),
                )

    def create_topic(self, name: str, properties: EntityProperties) -> None:
        with self.lock:
            if name.lower() not in self.topics:
                self.topics[name.lower()] = Topic(
                    name, properties, _Deduplicator(properties.duplicate_window_s)
                )

    def create_subscription(
        self,
        topic: str,
        name: str,
        properties: EntityProperties,
        *,
        rule: ReplayRule | None = None,
    ) -> None:
        with self.lock:
            entity = self.topics[topic.lower()]
            if name.lower() not in entity.subscriptions:
                path = f"{topic}/Subscriptions/{name}"
                entity.subscriptions[name.lower()] = Subscription(
                    name, self._stores(path, properties), rule
                )

    # -- data plane ------------------------------------------------------------------------

    def resolve(self, path: str) -> Store:
        """The store behind a link address path: ``q``, ``t/Subscriptions/s``, either with
        ``/$deadletterqueue``. ``NotFoundError`` when it does not exist."""
        parts = [p for p in path.strip("/").split("/") if p]
        dead = bool(parts) and parts[-1].lower() == "$deadletterqueue"
        if dead:
            parts = parts[:-1]
        with self.lock:
            store: Store | None = None
            if len(parts) == 1 and parts[0].lower() in self.queues:
                store = self.queues[parts[0].lower()].store
            elif len(parts) == 3 and parts[1].lower() == "subscriptions":
                topic = self.topics.get(parts[0].lower())
                sub = topic.subscriptions.get(parts[2].lower()) if topic else None
                store = sub.store if sub else None
        if store is None:
            raise NotFoundError(f"the messaging entity {path!r} could not be found")
        if dead:
            assert store.dead_letter is not None
            return store.dead_letter
        return store

    def is_sendable(self, path: str) -> bool:
        name = path.strip("/").lower()
        with self.lock:
            return name in self.queues or name in self.topics

    def publish(self, path: str, message: BareMessage, now: float) -> int:
        """Accept one message sent to a queue or topic; returns how many stores took it."""
        name = path.strip("/").lower()
        with self.lock:
            if name in self.queues:
                queue = self.queues[name]
                if not queue.dedup.first_time(message.message_id, now):
                    return 0
                queue.store.enqueue(message, now)
                return 1
            topic = self.topics.get(name)
            if topic is None:
                raise NotFoundError(f"the messaging entity {path!r} could not be found")
            if not topic.dedup.first_time(message.message_id, now):
                return 0
            taken = 0
            for sub in topic.subscriptions.values():
                if sub.rule is None or sub.rule.accepts(message):
                    sub.store.enqueue(message, now)
                    taken += 1
            return taken

    def all_stores(self) -> list[Store]:
        with self.lock:
            stores: list[Store] = []
            for queue in self.queues.values():
                stores.append(queue.store)
            for topic in self.topics.values():
                stores += [sub.store for sub in topic.subscriptions.values()]
            return stores


def now() -> float:
    return time.time()
