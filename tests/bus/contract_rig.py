"""What the bus contract's tests run on, shared by its parts (contract_*.py): the entity
settings a test asks for, the bounded bus that fails a hung call by name, the small helpers the
tests speak in, and ``ContractBase``, with the contract's timings and fixtures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import pytest

from shared.contract import bus as contract
from shared.contract.bus import (
    Bus,
    DeadLetter,
    Delivery,
    EntityCounts,
    Message,
    Queue,
    Source,
    Subscription,
    Target,
    Topic,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BusSettings:
    """Entity properties a test asks for (Service Bus names them the same way)."""

    lock_duration_s: float = 30.0
    max_delivery_count: int = 10
    duplicate_window_s: float = 600.0


#: ``await bus_factory(consumer, settings)``: a backend's ``Bus`` for one process.
BusFactory = Callable[[str, BusSettings], Awaitable[Bus]]


@dataclass(frozen=True, slots=True)
class Entity:
    """Where a test publishes and where it receives: a queue, or a topic and a subscription."""

    target: Target
    source: Source


class BoundedBus:
    """A ``Bus`` whose every call must return within ``timeout_s`` (plus a receive's own wait),
    or the test fails naming the call."""

    def __init__(self, bus: Bus, timeout_s: float) -> None:
        self.inner = bus
        self.timeout_s = timeout_s

    async def _bounded(self, call: Awaitable[T], what: str, extra_s: float = 0.0) -> T:
        limit = self.timeout_s + extra_s
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError:
            pytest.fail(f"bus.{what} did not return within {limit:.1f} s")

    async def ensure(self, source: Source) -> None:
        await self._bounded(self.inner.ensure(source), "ensure")

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        await self._bounded(self.inner.publish(target, messages), "publish")

    async def receive(
        self, source: Source, *, max_messages: int = 10, max_wait_s: float = 0.2
    ) -> list[Delivery]:
        call = self.inner.receive(source, max_messages=max_messages, max_wait_s=max_wait_s)
        return await self._bounded(call, "receive", max_wait_s)

    async def complete(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        await self._bounded(self.inner.complete(source, deliveries), "complete")

    async def abandon(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        await self._bounded(self.inner.abandon(source, deliveries), "abandon")

    async def dead_letter(
        self, source: Source, delivery: Delivery, *, reason: str, description: str
    ) -> None:
        call = self.inner.dead_letter(source, delivery, reason=reason, description=description)
        await self._bounded(call, "dead_letter")

    async def renew_locks(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        await self._bounded(self.inner.renew_locks(source, deliveries), "renew_locks")

    async def counts(self, source: Source) -> EntityCounts:
        return await self._bounded(self.inner.counts(source), "counts")

    async def dead_letters(self, source: Source, *, limit: int = 100) -> list[DeadLetter]:
        return await self._bounded(self.inner.dead_letters(source, limit=limit), "dead_letters")

    async def replay(self, source: Source, dead_letters: Sequence[DeadLetter]) -> int:
        return await self._bounded(self.inner.replay(source, dead_letters), "replay")

    async def peek(self, source: Source, *, limit: int = 100) -> list[contract.Peeked]:
        return await self._bounded(self.inner.peek(source, limit=limit), "peek")

    async def ping(self) -> None:
        await self._bounded(self.inner.ping(), "ping")

    async def aclose(self) -> None:
        await self._bounded(self.inner.aclose(), "aclose")


MakeBus = Callable[..., Awaitable[BoundedBus]]


def message(n: int, **properties: str) -> Message:
    """Message ``n``: a JSON body, id ``m<n>``, and the properties the pipeline sets."""
    props = {"schema": "mati.indicator.v1", "indicator_id": f"ipv4--{n}", **properties}
    return Message(body=b'{"n": %d}' % n, message_id=f"m{n}", properties=props)


async def two_consumers(
    make_bus: MakeBus, source: Source, **settings: float
) -> tuple[BoundedBus, BoundedBus]:
    """Consumers ``a`` and ``b``, with the same ``settings``, of ``source``, which now exists."""
    a, b = await make_bus("a", **settings), await make_bus("b", **settings)
    await a.ensure(source)
    return a, b


async def held_by_a(
    make_bus: MakeBus, lock_s: float, source: Source, target: Target
) -> tuple[BoundedBus, BoundedBus, Delivery]:
    """Consumers ``a`` and ``b`` with locks of ``lock_s``, and m1 published and now held by
    ``a``: where every test of whose lock wins starts."""
    a, b = await two_consumers(make_bus, source, lock_duration_s=lock_s)
    await a.publish(target, [message(1)])
    [held] = await a.receive(source, max_wait_s=2.0)
    return a, b, held


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.message_id for d in deliveries]


async def drain(
    bus: BoundedBus, source: Source, *, want: int, max_wait_s: float = 2.0
) -> list[Delivery]:
    """Receive until ``want`` messages arrived or a receive came back empty."""
    received: list[Delivery] = []
    while len(received) < want:
        batch = await bus.receive(source, max_messages=want - len(received), max_wait_s=max_wait_s)
        if not batch:
            break
        received += batch
    return received


class ContractBase:
    """The timings and the fixtures of every part of the contract; a backend's test class
    provides ``bus_factory`` and may lengthen the timings its broker needs."""

    #: A lock short enough to watch expire in a test.
    SHORT_LOCK_S: ClassVar[float] = 0.5
    #: The lock of the tests where another receiver takes an expired message over and the
    #: delivery count is checked.
    TAKEOVER_LOCK_S: ClassVar[float] = SHORT_LOCK_S
    #: A duplicate-detection window short enough to outlive in a test.
    SHORT_WINDOW_S: ClassVar[float] = 0.3
    #: The most one bus call may take before the test fails.
    CALL_TIMEOUT_S: ClassVar[float] = 10.0

    # -- fixtures ---------------------------------------------------------------------------

    @pytest.fixture
    def bus_factory(self) -> BusFactory:
        raise NotImplementedError("a backend's Test…Contract class provides bus_factory")

    @pytest.fixture
    def make_bus(self, bus_factory: BusFactory) -> MakeBus:
        async def make(
            consumer: str = "a",
            *,
            lock_duration_s: float = 30.0,
            max_delivery_count: int = 10,
            duplicate_window_s: float = 600.0,
        ) -> BoundedBus:
            settings = BusSettings(lock_duration_s, max_delivery_count, duplicate_window_s)
            try:
                async with asyncio.timeout(self.CALL_TIMEOUT_S):
                    bus = await bus_factory(consumer, settings)
            except TimeoutError:
                pytest.fail(f"bus_factory did not return within {self.CALL_TIMEOUT_S} s")
            return BoundedBus(bus, self.CALL_TIMEOUT_S)

        return make

    @pytest.fixture
    async def bus(self, make_bus: MakeBus) -> BoundedBus:
        return await make_bus("a")

    @pytest.fixture
    def name(self) -> str:
        """A name no other test uses."""
        return f"t{uuid.uuid4().hex[:12]}"

    @pytest.fixture(params=["queue", "subscription"])
    def entity(self, request: pytest.FixtureRequest, name: str) -> Entity:
        if request.param == "queue":
            return Entity(Queue(f"{name}.q"), Queue(f"{name}.q"))
        return Entity(Topic(name), Subscription(name, "sub"))
