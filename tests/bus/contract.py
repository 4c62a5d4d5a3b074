"""The bus contract: what every backend must do, whatever carries the messages (DESIGN.md §3).

A backend's test module subclasses ``BusContract`` as ``Test<Backend>Contract`` and provides one
fixture, ``bus_factory``: ``await bus_factory(consumer, settings)`` returns a ``Bus`` on one
shared broker, as the process named ``consumer`` would see it, with ``settings`` (lock duration,
maximum delivery count, duplicate-detection window) applied to every entity it creates or uses.
For Service Bus those are entity properties: the factory applies them when ``ensure`` creates
the entity. The factory closes what it made when the test ends.

Every test uses entity names of its own (``name``), so the suite can run against a broker
that outlives one test. Every awaited bus call is bounded (``BoundedBus``): a hung backend
fails the test that hung, naming the call, instead of stalling the run. No test asserts on
speed; the short waits below only let locks and windows expire.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from shared.core.errors import LockLost

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


class BusContract:
    """Service Bus peek-lock semantics (``shared.contract.bus``), held against one backend."""

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

    # -- round trip -------------------------------------------------------------------------

    async def test_round_trip_preserves_body_id_and_properties(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        sent = message(1, run_id="r-1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        before = datetime.now(UTC) - timedelta(seconds=5)
        await bus.publish(entity.target, [sent])

        [got] = await bus.receive(entity.source, max_wait_s=2.0)

        assert got.body == sent.body
        assert got.message_id == sent.message_id
        assert dict(got.properties) == dict(sent.properties)
        assert got.delivery_count == 1
        assert got.enqueued_at.tzinfo is not None
        assert got.enqueued_at >= before
        assert got.lock_token
        await bus.complete(entity.source, [got])
        assert await bus.receive(entity.source, max_wait_s=0.1) == []

    async def test_binary_body_and_empty_properties_round_trip(
        self, bus: BoundedBus, name: str
    ) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        body = bytes(range(256)) + "é\u2028".encode()
        await bus.publish(queue, [Message(body=body, message_id="bin", properties={})])

        [got] = await bus.receive(queue, max_wait_s=2.0)

        assert got.body == body
        assert dict(got.properties) == {}
        await bus.complete(queue, [got])

    async def test_ensure_is_idempotent(self, bus: BoundedBus, name: str) -> None:
        queue, subscription = Queue(f"{name}.q"), Subscription(name, "sub")
        for _ in range(2):
            await bus.ensure(queue)
            await bus.ensure(subscription)
        await bus.publish(queue, [message(1)])
        await bus.publish(Topic(name), [message(2)])

        assert ids(await bus.receive(queue, max_wait_s=2.0)) == ["m1"]
        assert ids(await bus.receive(subscription, max_wait_s=2.0)) == ["m2"]

    async def test_empty_batches_are_no_ops(self, bus: BoundedBus, name: str) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [])
        await bus.complete(queue, [])
        await bus.abandon(queue, [])
        await bus.renew_locks(queue, [])
        assert await bus.replay(queue, []) == 0
        assert await bus.counts(queue) == EntityCounts(0, 0, 0, None)

    # -- who gets what ----------------------------------------------------------------------

    async def test_queue_delivers_each_message_to_one_receiver(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        a, b = await two_consumers(make_bus, queue)
        await a.publish(queue, [message(n) for n in range(20)])

        got: dict[str, list[Delivery]] = {"a": [], "b": []}
        while True:
            batch_a = await a.receive(queue, max_messages=3, max_wait_s=0.1)
            batch_b = await b.receive(queue, max_messages=3, max_wait_s=0.1)
            got["a"] += batch_a
            got["b"] += batch_b
            if not batch_a and not batch_b:
                break

        assert got["a"]
        assert got["b"]
        assert not set(ids(got["a"])) & set(ids(got["b"]))
        assert sorted(ids(got["a"]) + ids(got["b"])) == sorted(f"m{n}" for n in range(20))
        await a.complete(queue, got["a"])
        await b.complete(queue, got["b"])

    async def test_topic_fans_out_to_every_subscription(self, bus: BoundedBus, name: str) -> None:
        first, second = Subscription(name, "prod"), Subscription(name, "test")
        await bus.ensure(first)
        await bus.ensure(second)

        await bus.publish(Topic(name), [message(n) for n in range(5)])

        for subscription in (first, second):
            got = await drain(bus, subscription, want=5)
            assert ids(got) == [f"m{n}" for n in range(5)]
            await bus.complete(subscription, got)
        # Completing in one subscription took nothing from the other.
        assert await bus.receive(first, max_wait_s=0.1) == []

    async def test_subscription_misses_what_was_published_before_it_existed(
        self, bus: BoundedBus, name: str
    ) -> None:
        early, late = Subscription(name, "early"), Subscription(name, "late")
        await bus.ensure(early)
        await bus.publish(Topic(name), [message(1)])
        await bus.ensure(late)
        await bus.publish(Topic(name), [message(2)])

        assert ids(await drain(bus, early, want=2)) == ["m1", "m2"]
        assert ids(await drain(bus, late, want=2, max_wait_s=0.3)) == ["m2"]

    # -- duplicate detection ----------------------------------------------------------------

    async def test_duplicate_message_id_within_window_is_dropped(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        original = message(1)
        again = Message(body=b"changed", message_id="m1", properties={"schema": "other"})

        await bus.publish(entity.target, [original, again])  # within one batch
        await bus.publish(entity.target, [again, message(2)])  # and in a later one

        got = await drain(bus, entity.source, want=3, max_wait_s=0.2)
        assert ids(got) == ["m1", "m2"]
        assert got[0].body == original.body

    async def test_duplicate_message_id_after_window_is_kept(
        self, make_bus: MakeBus, name: str
    ) -> None:
        bus = await make_bus(duplicate_window_s=self.SHORT_WINDOW_S)
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(1)])
        await asyncio.sleep(self.SHORT_WINDOW_S + 0.2)
        await bus.publish(queue, [message(1)])

        assert ids(await drain(bus, queue, want=3, max_wait_s=0.2)) == ["m1", "m1"]

    # -- locks ------------------------------------------------------------------------------

    async def test_locked_message_is_invisible_until_lock_expires(
        self, make_bus: MakeBus, entity: Entity
    ) -> None:
        _, b, first = await held_by_a(make_bus, self.TAKEOVER_LOCK_S, entity.source, entity.target)

        assert await b.receive(entity.source, max_wait_s=0.1) == []
        [again] = await b.receive(entity.source, max_wait_s=self.TAKEOVER_LOCK_S + 3.0)

        assert again.message_id == first.message_id
        assert again.body == first.body
        assert again.delivery_count == 2
        await b.complete(entity.source, [again])

    @pytest.mark.parametrize("action", ["complete", "abandon", "dead_letter", "renew_locks"])
    async def test_settling_after_lock_lost_raises_lock_lost(
        self, make_bus: MakeBus, name: str, action: str
    ) -> None:
        queue = Queue(name)
        a, b, stale = await held_by_a(make_bus, self.SHORT_LOCK_S, queue, queue)
        [taken] = await b.receive(queue, max_wait_s=self.SHORT_LOCK_S + 3.0)

        settle: Callable[[], Awaitable[None]] = {
            "complete": lambda: a.complete(queue, [stale]),
            "abandon": lambda: a.abandon(queue, [stale]),
            "dead_letter": lambda: a.dead_letter(queue, stale, reason="r", description="d"),
            "renew_locks": lambda: a.renew_locks(queue, [stale]),
        }[action]

        with pytest.raises(LockLost) as lost:
            await settle()

        assert lost.value.message_ids == ("m1",)
        # The new holder is untouched: it still settles, and nothing went to the DLQ.
        await b.complete(queue, [taken])
        assert await a.counts(queue) == EntityCounts(0, 0, 0, None)

    async def test_complete_settles_the_rest_and_names_only_lost_messages(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        a, b, stale = await held_by_a(make_bus, self.TAKEOVER_LOCK_S, queue, queue)
        await a.publish(queue, [message(2)])
        await asyncio.sleep(self.TAKEOVER_LOCK_S * 1.5)  # m1's lock has run out
        [taken] = await b.receive(queue, max_messages=1, max_wait_s=2.0)
        assert taken.message_id == "m1"  # expired locks are taken over before new messages
        [fresh] = await a.receive(queue, max_wait_s=2.0)

        with pytest.raises(LockLost) as lost:
            await a.complete(queue, [stale, fresh])

        assert lost.value.message_ids == ("m1",)
        assert await b.receive(queue, max_wait_s=0.1) == []  # m2 was completed
        await b.complete(queue, [taken])
        assert await a.counts(queue) == EntityCounts(0, 0, 0, None)

    async def test_abandon_redelivers_at_once_with_count_incremented(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        await bus.publish(entity.target, [message(1)])
        [first] = await bus.receive(entity.source, max_wait_s=2.0)

        await bus.abandon(entity.source, [first])
        [again] = await bus.receive(entity.source, max_wait_s=2.0)

        assert again.message_id == "m1"
        assert again.delivery_count == 2
        await bus.complete(entity.source, [again])

    async def test_renew_locks_keeps_message_invisible_past_the_lock(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        a, b, held = await held_by_a(make_bus, self.SHORT_LOCK_S, queue, queue)

        for _ in range(3):  # 3 × 0.6 of the lock: well past the original lock's end
            await asyncio.sleep(self.SHORT_LOCK_S * 0.6)
            await a.renew_locks(queue, [held])
            assert await b.receive(queue, max_wait_s=0.0) == []

        await a.complete(queue, [held])
        await asyncio.sleep(self.SHORT_LOCK_S * 0.6)
        assert await b.receive(queue, max_wait_s=0.0) == []

    # -- dead letters -----------------------------------------------------------------------

    async def test_dead_letter_keeps_reason_and_description(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        sent = message(1, run_id="r-9")
        await bus.publish(entity.target, [sent])
        [got] = await bus.receive(entity.source, max_wait_s=2.0)

        await bus.dead_letter(
            entity.source, got, reason="Unparseable", description="missing 'value' field"
        )

        [letter] = await bus.dead_letters(entity.source)
        assert letter.reason == "Unparseable"
        assert letter.description == "missing 'value' field"
        assert letter.body == sent.body
        assert letter.message_id == sent.message_id
        assert dict(letter.properties) == dict(sent.properties)
        assert letter.delivery_count == 1
        assert letter.dead_lettered_at.tzinfo is not None
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 1, None)
        assert await bus.receive(entity.source, max_wait_s=0.1) == []

    async def test_max_delivery_count_exceeded_is_dead_lettered(
        self, make_bus: MakeBus, entity: Entity
    ) -> None:
        bus = await make_bus(max_delivery_count=2)
        await bus.ensure(entity.source)
        await bus.publish(entity.target, [message(1)])

        for expected_count in (1, 2):
            [got] = await bus.receive(entity.source, max_wait_s=2.0)
            assert got.delivery_count == expected_count
            await bus.abandon(entity.source, [got])

        assert await bus.receive(entity.source, max_wait_s=0.3) == []
        [letter] = await bus.dead_letters(entity.source)
        assert letter.reason == contract.MAX_DELIVERY_REASON
        assert letter.message_id == "m1"
        assert letter.delivery_count >= 2
        assert (await bus.counts(entity.source)).dead_letter == 1

    async def test_expired_locks_count_toward_max_delivery(
        self, make_bus: MakeBus, name: str
    ) -> None:
        bus = await make_bus(lock_duration_s=self.SHORT_LOCK_S, max_delivery_count=1)
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(1)])
        [_] = await bus.receive(queue, max_wait_s=2.0)  # never settled: the lock runs out
        await asyncio.sleep(self.SHORT_LOCK_S * 1.2)

        assert await bus.receive(queue, max_wait_s=0.2) == []
        [letter] = await bus.dead_letters(queue)
        assert letter.reason == contract.MAX_DELIVERY_REASON

    async def test_replay_puts_dead_letters_back_and_empties_the_dlq(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        sent = [message(1), message(2)]
        await bus.publish(entity.target, sent)
        for got in await drain(bus, entity.source, want=2):
            await bus.dead_letter(entity.source, got, reason="Rejected", description="400")
        letters = await bus.dead_letters(entity.source)
        assert ids_of(letters) == ["m1", "m2"]

        assert await bus.replay(entity.source, letters) == 2

        assert await bus.dead_letters(entity.source) == []
        # Fresh deliveries, even though the ids are inside the duplicate-detection window.
        back = await drain(bus, entity.source, want=2)
        assert ids(back) == ["m1", "m2"]
        assert [d.delivery_count for d in back] == [1, 1]
        assert [d.body for d in back] == [m.body for m in sent]
        assert [dict(d.properties) for d in back] == [dict(m.properties) for m in sent]
        await bus.complete(entity.source, back)
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 0, None)

    async def test_dead_letters_honours_limit(self, bus: BoundedBus, name: str) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(n) for n in range(5)])
        for got in await drain(bus, queue, want=5):
            await bus.dead_letter(queue, got, reason="r", description="d")

        assert ids_of(await bus.dead_letters(queue, limit=3)) == ["m0", "m1", "m2"]

    # -- counts -----------------------------------------------------------------------------

    async def test_counts_follow_a_message_through_its_life(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 0, None)

        await bus.publish(entity.target, [message(n) for n in range(3)])
        counts = await bus.counts(entity.source)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (3, 0, 0)
        assert counts.oldest_age_s is not None
        assert counts.oldest_age_s >= 0

        first, second = await bus.receive(entity.source, max_messages=2, max_wait_s=2.0)
        counts = await bus.counts(entity.source)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (1, 2, 0)

        await bus.complete(entity.source, [first])
        await bus.dead_letter(entity.source, second, reason="r", description="d")
        counts = await bus.counts(entity.source)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (1, 0, 1)

        [third] = await bus.receive(entity.source, max_wait_s=2.0)
        await bus.complete(entity.source, [third])
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 1, None)

    async def test_peek_shows_what_waits_without_taking_it(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        assert await bus.peek(entity.source) == []
        sent = [message(n) for n in range(3)]
        await bus.publish(entity.target, sent)
        [held] = await bus.receive(entity.source, max_messages=1, max_wait_s=2.0)

        peeked = await bus.peek(entity.source, limit=10)
        assert [p.message_id for p in peeked] == ["m0", "m1", "m2"]
        assert [p.body for p in peeked] == [m.body for m in sent]
        assert [dict(p.properties) for p in peeked] == [dict(m.properties) for m in sent]
        assert [p.locked for p in peeked] == [True, False, False]
        assert all(p.enqueued_at.tzinfo is not None for p in peeked)
        assert [p.message_id for p in await bus.peek(entity.source, limit=2)] == ["m0", "m1"]

        # Peeking took nothing: the rest comes as first deliveries, the held lock still settles.
        rest = await drain(bus, entity.source, want=2)
        assert ids(rest) == ["m1", "m2"]
        assert [d.delivery_count for d in rest] == [1, 1]
        await bus.complete(entity.source, [held, *rest])
        assert await bus.peek(entity.source) == []

    # -- receive ----------------------------------------------------------------------------

    async def test_receive_with_nothing_waiting_returns_empty(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        assert await bus.receive(entity.source, max_wait_s=0.3) == []
        assert await bus.receive(entity.source, max_wait_s=0.0) == []

    async def test_receive_wakes_for_a_message_published_while_waiting(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        receiver, publisher = await two_consumers(make_bus, queue)

        async def publish_soon() -> None:
            await asyncio.sleep(0.2)
            await publisher.publish(queue, [message(1)])

        waiting = asyncio.ensure_future(receiver.receive(queue, max_wait_s=5.0))
        await publish_soon()
        assert ids(await waiting) == ["m1"]

    async def test_receive_honours_max_messages(self, bus: BoundedBus, name: str) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(n) for n in range(7)])

        sizes = []
        for _ in range(3):
            sizes.append(len(await bus.receive(queue, max_messages=3, max_wait_s=1.0)))

        assert sizes == [3, 3, 1]

    async def test_single_receiver_gets_messages_in_order(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        for start in range(0, 60, 20):
            await bus.publish(entity.target, [message(n) for n in range(start, start + 20)])

        got = await drain(bus, entity.source, want=60)

        assert ids(got) == [f"m{n}" for n in range(60)]
        await bus.complete(entity.source, got)


def ids_of(letters: Sequence[DeadLetter]) -> list[str]:
    return [letter.message_id for letter in letters]
