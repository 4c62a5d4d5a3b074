"""The message bus the services speak, whatever carries it (DESIGN.md §3).

Two backends implement ``Bus``: Redis Streams (the embedded default, one machine) and Azure
Service Bus (production). Both follow Service Bus semantics, because that is what production
runs on and the contract tests hold both to it:

- a ``Topic`` fans each message out to every ``Subscription`` that exists when it is published;
  a ``Queue`` delivers each message to one receiver;
- ``receive`` hands out messages under a *lock* (peek-lock): nobody else gets them until the
  lock expires (then they are delivered again with ``delivery_count`` + 1), or the holder
  settles them with ``complete`` (done), ``abandon`` (give back now) or ``dead_letter``;
- a message delivered more than ``max_delivery_count`` times is dead-lettered by the bus with
  the reason ``MaxDeliveryCountExceeded``: a poison message never loops forever;
- ``publish`` drops a message whose ``message_id`` was published to the same entity within the
  duplicate-detection window, so a page re-published after a crash is not queued twice.

Settling a message whose lock was lost (it expired and someone else received it) raises
``LockLost``: the other holder owns it now, and the caller must not act as if it settled it.
``LockLost`` and ``BusUnavailable`` live in ``shared.core.errors`` with the rest of the tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

#: Reason the bus gives a message it dead-letters itself (Service Bus spells it this way).
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


@dataclass(frozen=True, slots=True)
class Topic:
    name: str


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str
    name: str


@dataclass(frozen=True, slots=True)
class Queue:
    name: str


#: Where messages are published, and where they are received from.
Target = Topic | Queue
Source = Subscription | Queue


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish. ``properties`` are application properties (schema, ids, trace)."""

    body: bytes
    message_id: str
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Stored:
    """A published message as the bus gives it back, whichever way it is read: every backend
    returns what was published to the letter, and only what the bus adds differs."""

    body: bytes
    message_id: str
    properties: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Delivery(_Stored):
    """A message received under a lock. ``lock_token`` is the backend's handle for settling."""

    delivery_count: int
    enqueued_at: datetime
    lock_token: str


@dataclass(frozen=True, slots=True)
class DeadLetter(_Stored):
    """A dead-lettered message with the reason it was set aside."""

    reason: str
    description: str
    delivery_count: int
    dead_lettered_at: datetime
    lock_token: str


@dataclass(frozen=True, slots=True)
class Peeked(_Stored):
    """A message seen where it waits, without taking it: no lock, no delivery counted.
    ``locked`` says a receiver holds it right now (it is being worked on)."""

    enqueued_at: datetime
    locked: bool


@dataclass(frozen=True, slots=True)
class EntityCounts:
    """What ``status`` shows for one entity: waiting, locked by a receiver, set aside."""

    depth: int
    in_flight: int
    dead_letter: int
    oldest_age_s: float | None = None


class Bus(Protocol):
    """The operations every backend provides; see the module docstring for their semantics."""

    async def ensure(self, source: Source) -> None:
        """Create the queue or subscription if it does not exist (idempotent)."""

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        """Publish all of ``messages``; returns only once the bus has them durably."""

    async def receive(
        self, source: Source, *, max_messages: int, max_wait_s: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` under lock, waiting at most ``max_wait_s`` for the first."""

    async def complete(self, source: Source, deliveries: Sequence[Delivery]) -> None: ...

    async def abandon(self, source: Source, deliveries: Sequence[Delivery]) -> None: ...

    async def dead_letter(
        self, source: Source, delivery: Delivery, *, reason: str, description: str
    ) -> None: ...

    async def renew_locks(self, source: Source, deliveries: Sequence[Delivery]) -> None: ...

    async def counts(self, source: Source) -> EntityCounts: ...

    async def dead_letters(self, source: Source, *, limit: int = 100) -> list[DeadLetter]: ...

    async def peek(self, source: Source, *, limit: int = 100) -> list[Peeked]:
        """The oldest ``limit`` messages of ``source`` (locked ones included), oldest first,
        without locking, settling or counting a delivery: for operators asking what waits
        where. Bounded by ``limit``: a longer backlog is cut, never read whole."""

    async def replay(self, source: Source, dead_letters: Sequence[DeadLetter]) -> int:
        """Send dead letters back to ``source`` (as new deliveries) and drop them from the
        dead-letter queue; returns how many were replayed."""

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...
