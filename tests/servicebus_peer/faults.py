"""Faults the fake Service Bus injects: the ways a real namespace lets a client down.

Three kinds, each as Service Bus shows it on the wire:

- ``drop``: the gateway closes the client's TCP connection without an AMQP ``close`` (a
  gateway restart, a load balancer's idle cut). With ``applied`` the operation took effect
  first and only its answer is lost: a send that was stored, a settlement that was done, a
  receive whose messages were locked to the dying link. Locks held by the connection stay
  until they expire, then the messages come back with the delivery count raised.
- ``server_busy``: the condition ``com.microsoft:server-busy`` (the SDK's
  ``ServiceBusServerBusyError``, retryable): a send or a settlement is rejected with it, a
  management request answered 503 with it, a receive link detached with it.
- ``lock_lost``: the lock of a message being settled or renewed ran out just before: the
  message is available again (its delivery counted, so it comes back with the count raised,
  or dead-lettered past ``MaxDeliveryCount``) and the settlement or renewal is refused with
  ``com.microsoft:message-lock-lost``.

Faults are queued (``inject``: deterministic, for tests, in the style of
``simulators.faults.FaultPlan``) or drawn at random (``chaos``: each eligible event fires a
fault with probability ``rate``, the kind drawn among those the event allows). Tests and the
chaos harness call these from their own thread while the AMQP thread takes faults: everything
here is under one lock.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class FaultKind(StrEnum):
    DROP = "drop"
    SERVER_BUSY = "server_busy"
    LOCK_LOST = "lock_lost"


class Operation(StrEnum):
    """The events a fault can strike: what the client asked the namespace to do."""

    SEND = "send"  # a transfer on a send link (one message or a batch)
    RECEIVE = "receive"  # a receive link granting credit: a receive call asking for messages
    SETTLE = "settle"  # a disposition on a receive link, or a management update-disposition
    RENEW = "renew"  # a management renew-lock
    PEEK = "peek"  # a management peek-message (ensure, counts, dead letters)


#: The kinds each operation can meet: a lock is lost only where one is named.
APPLICABLE: Final[dict[Operation, tuple[FaultKind, ...]]] = {
    Operation.SEND: (FaultKind.DROP, FaultKind.SERVER_BUSY),
    Operation.RECEIVE: (FaultKind.DROP, FaultKind.SERVER_BUSY),
    Operation.SETTLE: (FaultKind.DROP, FaultKind.SERVER_BUSY, FaultKind.LOCK_LOST),
    Operation.RENEW: (FaultKind.DROP, FaultKind.SERVER_BUSY, FaultKind.LOCK_LOST),
    Operation.PEEK: (FaultKind.DROP, FaultKind.SERVER_BUSY),
}


@dataclass
class Fault:
    """One fault to fire. ``on`` limits it to one operation (``None``: the first eligible
    event whose operation allows ``kind``); ``times`` is how many events it strikes; ``after``
    lets that many matching events pass first; ``applied`` (drops only) lets the operation
    take effect before the connection dies."""

    kind: FaultKind
    on: Operation | None = None
    times: int = 1
    after: int = 0
    applied: bool = False

    def matches(self, operation: Operation) -> bool:
        return self.on in (None, operation) and self.kind in APPLICABLE[operation]


class FaultPlan:
    """The queued faults and the chaos rate of one fake namespace, and what fired."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._rate = 0.0
        self._rng = random.Random(0)
        self._fired: Counter[str] = Counter()

    def inject(
        self,
        kind: FaultKind | str,
        *,
        on: Operation | str | None = None,
        times: int = 1,
        after: int = 0,
        applied: bool = False,
    ) -> Fault:
        fault = Fault(FaultKind(kind), None if on is None else Operation(on), times, after, applied)
        if fault.on is not None and fault.kind not in APPLICABLE[fault.on]:
            raise ValueError(f"a {fault.kind} fault cannot strike a {fault.on}")
        with self._lock:
            self._queue.append(fault)
        return fault

    def chaos(self, rate: float, rng: random.Random) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}")
        with self._lock:
            self._rate = rate
            self._rng = rng

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rate = 0.0

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._queue)

    def counts(self) -> dict[str, int]:
        """How many faults of each kind fired, every kind named (0 when none did)."""
        with self._lock:
            return {kind.value: self._fired[kind.value] for kind in FaultKind}

    def take(self, operation: Operation) -> Fault | None:
        """The fault this event meets, if any: a queued one first, else one drawn by chaos."""
        with self._lock:
            fault = self._queued(operation) or self._drawn(operation)
            if fault is not None:
                self._fired[fault.kind.value] += 1
            return fault

    def _queued(self, operation: Operation) -> Fault | None:
        for fault in self._queue:
            if not fault.matches(operation):
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._queue.remove(fault)
            return fault
        return None

    def _drawn(self, operation: Operation) -> Fault | None:
        if self._rate <= 0.0 or self._rng.random() >= self._rate:
            return None
        kind = self._rng.choice(APPLICABLE[operation])
        applied = kind is FaultKind.DROP and self._rng.random() < 0.5
        return Fault(kind, operation, applied=applied)


__all__ = ["APPLICABLE", "Fault", "FaultKind", "FaultPlan", "Operation"]
